"""CPU time and memory of a process and its children, from /proc (Linux): the gateway and its
status child (gateway.status_child) are counted together, and each shown."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> list[str]:
    # Fields after the command's closing parenthesis: state is [0], ppid [1], utime [11].
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads; 0 once it is gone."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of `pid` and of each of its children, by process id."""
    return {p: cpu_seconds(p) for p in [pid, *children(pid)]}


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """(the process's own, its children's) CPU seconds between two `tree_cpu`; a child started
    in between counts from zero."""
    pid = next(iter(after))
    own = after[pid] - before.get(pid, 0.0)
    kids = sum(v - before.get(p, 0.0) for p, v in after.items() if p != pid)
    return own, kids


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pss_mb(pid: int) -> float:
    """The process's proportional set size now (smaps_rollup): its resident pages, those it
    shares with others (the interpreter's code, with its parent) divided among them; 0 once
    it is gone or where the kernel has no smaps_rollup."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
