"""Pictures of the benchmarks' figures for docs/benchmarks.md (`--plot DIR` of the scripts).

matplotlib is the `bench` extra (`pip install -e '.[bench]'`), imported only when a script
is asked to plot; the test suite never needs it. Every picture says under its title where it
was measured: a shared, loaded 2-core VM, with the load average and the date of the run.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DPI = 100
SIZE = (7.0, 3.6)  # inches: 700 x 360 pixels at DPI


def machine_note(command: str) -> str:
    """Where and when: the figures move with the machine's load, so every picture says it."""
    try:
        load = f"load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = "load n/a"
    cores = os.cpu_count() or 0
    return f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, shared {cores}-core VM, {load}; {command}"


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI)
    return fig, ax


def _save(fig: Any, path: Path, title: str, note: str) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    fig.text(0.01, 0.01, note, fontsize=7, color="0.35", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    # A small palette-friendly PNG: a few tens of KB in the repository.
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    print(f"plot: {path}")
    return path


def bars(
    path: Path,
    title: str,
    values: Mapping[str, float],
    unit: str,
    note: str,
    *,
    log: bool = False,
    highlight: Sequence[str] = (),
) -> Path:
    """Horizontal bars, one per label, each with its value written at its end."""
    fig, ax = _figure()
    labels = list(values)
    numbers = [values[k] for k in labels]
    colours = ["tab:blue" if k in highlight else "0.6" for k in labels]
    ax.barh(labels, numbers, color=colours)
    ax.invert_yaxis()  # first label on top
    if log:
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f}")
    for y, v in enumerate(numbers):
        ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    ax.set_xlabel(f"{unit}{' (log scale)' if log else ''}")
    ax.set_xlim(right=max(numbers) * (4 if log else 1.15))
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="y", labelsize=8)
    return _save(fig, path, title, note)


def distributions(
    path: Path, title: str, series: Mapping[str, Sequence[float]], unit: str, note: str
) -> Path:
    """Empirical distribution (share of samples at or below x) of each series; the legend
    gives p50, p99 and the number of samples."""
    fig, ax = _figure()
    for label, values in series.items():
        ordered = sorted(values)
        if not ordered:
            continue
        n = len(ordered)
        shares = [(i + 1) / n for i in range(n)]
        p50 = statistics.median(ordered)  # as the scripts print it
        p99 = ordered[min(n - 1, int(n * 0.99))]
        ax.step(
            ordered,
            shares,
            where="post",
            label=f"{label}: p50 {p50:.1f}, p99 {p99:.1f} {unit} (n={n})",
        )
    ax.set_xlabel(unit)
    ax.set_ylabel("share of samples ≤ x")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path, title, note)


def progress(
    path: Path, title: str, series: Mapping[str, Sequence[float]], unit: str, note: str
) -> Path:
    """Cumulative count over time: `series` maps a label to event times (seconds from the
    start); the slope is the throughput."""
    fig, ax = _figure()
    for label, times in series.items():
        ordered = sorted(times)
        if ordered:
            ax.plot(ordered, range(1, len(ordered) + 1), label=label)
    ax.set_xlabel("seconds after publish")
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path, title, note)


def in_progress(
    path: Path,
    title: str,
    intervals: Sequence[tuple[float, float]],
    limit: int,
    note: str,
) -> Path:
    """How many (start, end) intervals overlap over time, against `limit` (e.g. calls in
    progress against the channels allowed); times in seconds, from the first start."""
    fig, ax = _figure()
    if intervals:
        origin = min(start for start, _ in intervals)
        changes = sorted(
            [(start - origin, 1) for start, _ in intervals]
            + [(end - origin, -1) for _, end in intervals]
        )
        times, counts, current = [0.0], [0], 0
        for t, step in changes:
            current += step
            times.append(t)
            counts.append(current)
        ax.step(times, counts, where="post", label="in progress")
    ax.axhline(limit, color="tab:red", linestyle="--", linewidth=1, label=f"limit {limit}")
    ax.set_xlabel("seconds after the first call")
    ax.set_ylabel("calls")
    ax.set_ylim(0, limit * 1.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower center")
    return _save(fig, path, title, note)
