"""Benchmark: one job for a whole municipality (100,000 SMS members) through the daemon.

The reference first, in the same run: the SMSC simulator's own ceiling (a pipelined raw
client). Then the daemon as a process: MQTT publish -> first submit_sm at the SMSC, submit_sm/s
over the job, and the daemon's peak RSS (VmHWM from /proc), with the ratio to each target.
Run: .venv/bin/python -m bench.bench_big_job [--recipients 100000] [--window 50] [--profile F]
`--profile F` runs the daemon under cProfile (its event loop's thread; slower) and prints
where that thread's time went, its stats in F.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import procstat  # noqa: E402
from bench.procstat import children, cpu_seconds, peak_rss_mb, rss_mb  # noqa: E402
from tests.fixtures import GatewayProcess, Mosquitto, Observer, gateway_config, members  # noqa: E402
from tests.sms_fixtures import SmscProcess, sms_job  # noqa: E402

TARGET_FIRST_S = 0.5
TARGET_RSS_MB = 150.0
TARGET_RATE = 2500.0


class ProfiledGateway(GatewayProcess):
    """The daemon under cProfile: the stats are written when it stops (SIGTERM)."""

    def __init__(self, config: Path, workdir: Path, stats: Path) -> None:
        super().__init__(config, workdir)
        self.stats = stats

    def start(self, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        argv = ["-m", "cProfile", "-o", str(self.stats), "-m", "gateway", "run"]
        self.proc = subprocess.Popen(
            [sys.executable, *argv, "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "ab"),  # noqa: SIM115
            env=env,
            cwd=ROOT,
        )


async def sample_rss(pid: int, t0: float, out: list[tuple[float, float]]) -> None:
    """(seconds after publish, RSS MB) every 0.25 s: when the peak comes tells what holds it."""
    while True:
        out.append((time.monotonic() - t0, rss_mb(pid)))
        await asyncio.sleep(0.25)


async def run(n: int, window: int, profile: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(os.environ.get("BENCH_DIR", tmp))
        (work / "broker").mkdir()
        broker = Mosquitto(work / "broker")
        broker.start()
        sim = SmscProcess(work, "--receipt-delay", "0")
        gw: GatewayProcess | None = None
        try:
            sim.start()
            config = gateway_config(work, broker, None, sim.config(window=window))
            level = os.environ.get("BENCH_LOG", "WARNING")
            config.write_text(config.read_text().replace('level = "DEBUG"', f'level = "{level}"'))
            gw = GatewayProcess(config, work)
            if profile is not None:
                gw = ProfiledGateway(config, work, profile)
            gw.start()
            assert gw.proc is not None
            async with Observer(broker, topics=("jobs/+/status", "gateway/#")) as obs:
                await obs.wait(lambda: obs.on("/gateway/test/availability"), 30)
                await sim.wait(lambda s: s["bound"] >= 1, 30)
                idle_mb = peak_rss_mb(gw.proc.pid)
                cpu0, load0 = cpu_seconds(gw.proc.pid), os.getloadavg()[0]
                kid_cpu0 = sum(cpu_seconds(k) for k in children(gw.proc.pid))
                payload = json.dumps(sms_job("big-job", members(n)))
                t0 = time.monotonic()
                samples: list[tuple[float, float]] = []
                sampler = asyncio.create_task(sample_rss(gw.proc.pid, t0, samples))
                await obs.publish("plp/jobs", payload)
                first = await sim.wait(lambda s: s["counters"].get("accepted", 0) >= 1, 600)
                stats = await sim.wait(lambda s: s["counters"].get("accepted", 0) >= n, 900)
                t_all = time.monotonic()
                await obs.wait_job("big-job", "done", timeout=900)
                t_done = time.monotonic()
                rss = peak_rss_mb(gw.proc.pid)
                cpu = cpu_seconds(gw.proc.pid) - cpu0
                # The status child (gateway.status_child): its own figures, beside the daemon's.
                kids = children(gw.proc.pid)
                kid_cpu = sum(cpu_seconds(k) for k in kids) - kid_cpu0
                kid_rss = sum(peak_rss_mb(k) for k in kids)
                pss = procstat.pss_mb(gw.proc.pid), sum(procstat.pss_mb(k) for k in kids)
                load1 = os.getloadavg()[0]
                sampler.cancel()
            if profile is not None:
                gw.terminate(300)
        finally:
            if gw is not None:
                gw.stop()
            sim.stop()
            broker.stop()
    first_s = first["first_accepted_at"] - t0
    over_job = n / (stats["last_accepted_at"] - t0)
    sustained = (n - 1) / (stats["last_accepted_at"] - stats["first_accepted_at"])
    print(f"recipients                   {n}")
    print(f"payload                      {len(payload) / 1e6:.2f} MB")
    print(f"publish -> 1st submit_sm     {first_s * 1000:.0f} ms"
          f"  (target {TARGET_FIRST_S * 1000:.0f} ms: {first_s / TARGET_FIRST_S:.2f}x)")  # fmt: skip
    print(f"all submits accepted         {t_all - t0:.2f} s after publish")
    print(f"submits/s over the job       {over_job:.0f}"
          f"  (target {TARGET_RATE:.0f}: {over_job / TARGET_RATE:.2f}x)")  # fmt: skip
    print(f"submits/s first..last        {sustained:.0f}")
    print(f"job 'done' (all receipts)    {t_done - t0:.2f} s after publish")
    print(f"duplicates at the SMSC       {stats['duplicates']}")
    print(f"daemon CPU over the job      {cpu:.1f} s ({n / cpu:.0f} members per CPU second)")
    print(f"load average before / after  {load0:.1f} / {load1:.1f} (2 cores: above 2, shared)")
    at, top = max(samples, key=lambda x: x[1])
    marks = "  ".join(f"{t:.0f}s:{m:.0f}" for t, m in samples[:: max(1, len(samples) // 12)])
    print(f"daemon RSS over time (MB)    {marks}")
    print(f"daemon RSS sampled peak      {top:.0f} MB at {at:.1f} s after publish")
    if profile is not None:
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(25)
    print(f"daemon RSS idle / peak       {idle_mb:.0f} MB / {rss:.0f} MB"
          f"  (target {TARGET_RSS_MB:.0f} MB: {rss / TARGET_RSS_MB:.2f}x)")  # fmt: skip
    print(f"status child CPU / peak RSS  {kid_cpu:.1f} s / {kid_rss:.0f} MB")
    print(f"PSS at the end               daemon {pss[0]:.0f} MB, status child {pss[1]:.0f} MB"
          "  (shared pages divided between them)")  # fmt: skip


async def main_async(args: argparse.Namespace) -> None:
    from bench.bench_sms import raw_ceiling, simulator

    async with simulator() as raw:  # first: the simulator is not what is measured
        ceiling = await raw_ceiling(raw, min(3 * args.recipients, 300_000))
    print(f"# simulator ceiling, pipelined raw client, receipts on: {ceiling:,.0f} submit_sm/s")
    print(f"# gateway daemon, one {args.recipients:,}-member SMS job, window {args.window}")
    await run(args.recipients, args.window, args.profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--profile", type=Path, help="cProfile the daemon, stats to this file")
    args = parser.parse_args()
    args.profile = args.profile.resolve() if args.profile else None  # the daemon runs elsewhere
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
