"""Benchmark: a hot alert through a stock broker — publish -> submit_sm at the SMSC.

One-recipient hot SMS jobs, published one after another by a connected dispatch client (as in
bench/bench_sms_daemon.py), through mosquitto with `set_tcp_nodelay true` (the reference,
first) and then with its default settings (Nagle on its sockets), interleaved over several
rounds; the gateway at the shipped log level (INFO) and its shipped [status] settings.
Prints p50/p90/p99 per configuration and round, over all rounds, and stock / reference; then,
per run, a --bulk-recipient job (the status connection at full rate through that broker).
Run: .venv/bin/python -m bench.bench_broker_latency [--singles 200] [--rounds 3] [--bulk 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from bench.bench_sms_daemon import cpu_report, cpu_times  # noqa: E402
from tests.fixtures import GatewayProcess, Mosquitto, Observer, members  # noqa: E402
from tests.sms_fixtures import SmscProcess, sms_job  # noqa: E402

CONFIGS = {
    "reference": "set_tcp_nodelay true",  # the broker we would configure ourselves
    "stock": "",  # mosquitto 2.0's defaults: the police's broker is not ours to configure
}


def broker(workdir: Path, settings: str) -> Mosquitto:
    """A private mosquitto with nothing but a listener and `settings` (the test fixture's
    own configuration turns set_tcp_nodelay on, which is what this bench compares)."""
    b = Mosquitto(workdir)
    b.conf.write_text(f"listener {b.port} 127.0.0.1\nallow_anonymous true\n{settings}\n")
    return b


@contextlib.asynccontextmanager
async def stack(settings: str) -> AsyncIterator[tuple[Mosquitto, SmscProcess, Observer]]:
    """mosquitto, the SMSC simulator and the gateway, each its own process (in a directory of
    BENCH_DIR, kept, or a temporary one); the gateway is online and bound when this yields."""
    with tempfile.TemporaryDirectory() as tmp:
        keep = os.environ.get("BENCH_DIR")  # to read the gateway's log afterwards
        work = Path(tempfile.mkdtemp(dir=keep)) if keep else Path(tmp)
        (work / "broker").mkdir()
        mq = broker(work / "broker", settings)
        mq.start()
        sim = SmscProcess(work, "--receipt-delay", "0")
        gw: GatewayProcess | None = None
        try:
            sim.start()
            config = work / "gateway.toml"
            level = os.environ.get("BENCH_LOG", "INFO")  # INFO: the shipped level
            config.write_text(
                'node = "test"\n'
                f'[mqtt]\nhost = "127.0.0.1"\nport = {mq.port}\ntopic_prefix = "plp"\n'
                f'[store]\npath = "{work}/gateway.sqlite3"\n'
                f'[log]\nlevel = "{level}"\n' + sim.config(50)
            )
            gw = GatewayProcess(config, work)
            gw.start()
            # Not the delivery events: a subscriber to those would be one more Python process
            # on the gateway's two cores.
            async with Observer(mq, topics=("gateway/#", "jobs/+/status")) as obs:
                await obs.wait(lambda: obs.on("/gateway/test/availability"), 30)
                await sim.wait(lambda s: s["bound"] >= 1, 30)
                yield mq, sim, obs
        finally:
            if gw is not None:
                gw.stop()
            sim.stop()
            mq.stop()


async def latencies(mq: Mosquitto, sim: SmscProcess, label: str, n: int) -> list[float]:
    """Publish `n` one-recipient hot jobs one after another from a connected dispatch client,
    each once the SMSC has accepted the previous one; ms from the publish call until the SMSC
    accepts its submit_sm (both CLOCK_MONOTONIC, same machine)."""
    out: list[float] = []
    async with aiomqtt.Client(mq.host, mq.port) as dispatch:
        for i in range(n):
            before = int((await sim.ctl("stats"))["counters"].get("accepted", 0))
            job = sms_job(f"{label}-{i}", [{"ref": "m", "phone": "+32470999000", "lang": "fr"}])
            payload = json.dumps(job)
            t0 = time.monotonic()
            await dispatch.publish("plp/jobs", payload, qos=1)
            stats = await sim.wait(partial(_accepted_more, before), 30)
            out.append((float(stats["last_accepted_at"]) - t0) * 1000)
    return out


async def bulk(sim: SmscProcess, obs: Observer, n: int) -> str:
    """One `n`-recipient SMS job: what the status connection carries at full rate (every
    delivery event; `done` is published after them, on the same connection)."""
    await sim.ctl("reset")
    t0 = time.monotonic()
    await obs.publish("plp/jobs", json.dumps(sms_job("bulk", members(n))))
    stats = await sim.wait(lambda s: s["counters"].get("accepted", 0) >= n, 600)
    await obs.wait_job("bulk", "done", timeout=600)
    t_done = time.monotonic()
    first, last = stats["first_accepted_at"], stats["last_accepted_at"]
    return f"{(n - 1) / (last - first):,.0f} submit_sm/s, `done` {t_done - t0:.2f} s after publish"


def _accepted_more(before: int, stats: dict[str, Any]) -> bool:
    return int(stats["counters"].get("accepted", 0)) > before


def pct(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p))]


def summary(lat_ms: list[float]) -> str:
    s = sorted(lat_ms)
    return (
        f"p50 {statistics.median(s):5.1f} ms, p90 {pct(s, 0.90):5.1f} ms, "
        f"p99 {pct(s, 0.99):5.1f} ms, max {s[-1]:5.1f} ms"
    )


async def main_async(singles: int, rounds: int, warmup: int, n_bulk: int) -> None:
    print(f"# publish -> submit_sm, {singles} one-recipient hot SMS jobs per run, "
          f"{rounds} rounds, reference first")  # fmt: skip
    all_ms: dict[str, list[float]] = {name: [] for name in CONFIGS}
    medians: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for r in range(1, rounds + 1):
        for name, settings in CONFIGS.items():
            async with stack(settings) as (mq, sim, obs):
                await latencies(mq, sim, "warmup", warmup)  # first connections, caches
                cpu0 = cpu_times()
                lat = await latencies(mq, sim, "single", singles)
                cpu1 = cpu_times()
                big = await bulk(sim, obs, n_bulk) if n_bulk else ""
            all_ms[name] += lat
            medians[name].append(statistics.median(lat))
            print(f"round {r} {name:<9} {summary(lat)}  (CPU {cpu_report(cpu0, cpu1)})")
            if big:
                print(f"round {r} {name:<9} {n_bulk:,}-recipient job: {big}")
    print("# all rounds")
    for name, settings in CONFIGS.items():
        spread = ", ".join(f"{m:.1f}" for m in medians[name])
        print(f"{name:<9} ({settings or 'defaults'}): {summary(all_ms[name])}; "
              f"p50 per round {spread}")  # fmt: skip
    ref, stock = sorted(all_ms["reference"]), sorted(all_ms["stock"])
    print(f"stock / reference: p50 {statistics.median(stock) / statistics.median(ref):.2f}, "
          f"p90 {pct(stock, 0.9) / pct(ref, 0.9):.2f}, "
          f"p99 {pct(stock, 0.99) / pct(ref, 0.99):.2f}")  # fmt: skip
    print("target: p50 <= 3 ms, p99 <= 5 ms with both brokers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5, help="jobs not counted, per run")
    parser.add_argument("--bulk", type=int, default=2000, help="recipients of a job; 0 = skip")
    args = parser.parse_args()
    asyncio.run(main_async(args.singles, args.rounds, args.warmup, args.bulk))


if __name__ == "__main__":
    main()
