"""Benchmark: SMS through the whole gateway — MQTT job -> daemon -> SMPP -> SMSC simulator.

Prints MQTT publish -> first submit_sm latency (p50, p99 over repeated single-recipient jobs),
the sustained submit_sm/s of a 10,000-recipient job as the SMSC sees it, and the gateway's CPU
time per SMS over that job (what a shared machine moves least). BENCH_PYSPY=FILE samples the
gateway's threads with py-spy during the job (raw format; BENCH_PYSPY_ARGS adds options, e.g.
"--gil -r 200" for where the Python time goes).
Run: .venv/bin/python -m bench.bench_sms_daemon [--recipients 10000] [--window 50] [--singles 200]
     [--kannel] [--plot DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from bench.procstat import cpu_delta, tree_cpu  # noqa: E402
from tests.fixtures import GatewayProcess, Mosquitto, Observer, gateway_config, members  # noqa: E402
from tests.sms_fixtures import SmscProcess, sms_job  # noqa: E402


async def single_latencies(broker: Mosquitto, sim: SmscProcess, n: int) -> list[float]:
    """Publish one-recipient jobs one after another from a connected dispatch client; time
    from the publish call until the SMSC accepts the submit_sm."""
    out: list[float] = []
    async with aiomqtt.Client(broker.host, broker.port) as dispatch:
        for i in range(n):
            out.append(await _single(dispatch, sim, i))
    return out


async def _single(dispatch: aiomqtt.Client, sim: SmscProcess, i: int) -> float:
    before = int((await sim.ctl("stats"))["counters"].get("accepted", 0))
    job = sms_job(f"single-{i}", [{"ref": "m", "phone": "+32470999000", "lang": "fr"}])
    payload = json.dumps(job)

    def accepted(stats: dict[str, Any]) -> bool:
        return int(stats["counters"].get("accepted", 0)) > before

    t0 = time.monotonic()
    await dispatch.publish("plp/jobs", payload, qos=1)
    stats = await sim.wait(accepted, 30)
    return float(stats["last_accepted_at"] - t0)  # both CLOCK_MONOTONIC, same machine


@contextlib.asynccontextmanager
async def stack(
    sim_args: tuple[str, ...],
    sms: dict[str, Any],
    events: str = "each",
    started: list[GatewayProcess] | None = None,
) -> AsyncIterator[tuple[Mosquitto, SmscProcess, Observer]]:
    """mosquitto, the SMSC simulator and the gateway (log level BENCH_LOG, default WARNING),
    each its own process, in BENCH_DIR or a temporary directory; the gateway is online and
    bound when this yields (and appended to `started`, if given)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(os.environ.get("BENCH_DIR", tmp))
        (work / "broker").mkdir()
        broker = Mosquitto(work / "broker")
        broker.start()
        sim = SmscProcess(work, "--receipt-delay", "0", *sim_args)
        gw: GatewayProcess | None = None
        try:
            sim.start()
            config = gateway_config(work, broker, None, sim.config(**sms))
            level = os.environ.get("BENCH_LOG", "WARNING")
            text = config.read_text().replace('level = "DEBUG"', f'level = "{level}"')
            text = text.replace("[status]\n", f'[status]\ndelivery_events = "{events}"\n')
            config.write_text(text)
            gw = GatewayProcess(config, work)
            gw.start()
            if started is not None:
                started.append(gw)
            # Only what the bench reads: a subscriber to every delivery event would be a second
            # Python MQTT client on the gateway's two cores (dispatch's consumer runs elsewhere).
            async with Observer(broker, topics=("jobs/+/status", "gateway/#")) as obs:
                await obs.wait(lambda: obs.on("/gateway/test/availability"), 30)
                await sim.wait(lambda s: s["bound"] >= 1, 30)
                yield broker, sim, obs
        finally:
            if gw is not None:
                gw.stop()
            sim.stop()
            broker.stop()


def cpu_times() -> list[int]:
    """The machine's CPU time counters (user, nice, system, idle, iowait, irq, softirq,
    steal), from /proc/stat; empty where there is none."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return []


def cpu_report(before: list[int], after: list[int]) -> str:
    """Share of CPU time the hypervisor took (steal) and the machine was busy, between two
    `cpu_times()`: a VM's neighbours move these figures by tens of percent."""
    if len(before) < 8 or len(after) < 8:
        return "n/a"
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    idle = delta[3] + delta[4]
    return f"busy {(total - idle - delta[7]) / total:.0%}, steal {delta[7] / total:.0%}"


def gateway_cpu(gw: GatewayProcess) -> dict[int, float]:
    """CPU seconds (user + system, all threads) the gateway process and its status child have
    used so far: unlike submit_sm/s, hardly moved by what else runs on the machine."""
    assert gw.proc is not None
    return tree_cpu(gw.proc.pid)


def py_spy(gw: GatewayProcess) -> subprocess.Popen[bytes] | None:
    """With BENCH_PYSPY=FILE, sample the gateway's threads during the big job (raw format:
    one collapsed stack and its count per line) until it is stopped with SIGINT."""
    out = os.environ.get("BENCH_PYSPY")
    if not out or gw.proc is None:
        return None
    binary = str(Path(sys.executable).parent / "py-spy")
    cmd = [binary, "record", "-p", str(gw.proc.pid), "-f", "raw", "-o", out, "--threads"]
    cmd += os.environ.get("BENCH_PYSPY_ARGS", "").split()
    return subprocess.Popen([*cmd, "--nonblocking"], stdout=subprocess.DEVNULL)


async def run(n: int, window: int, singles: int, events: str) -> tuple[float, list[float]]:
    """The sustained submit_sm/s of the big job, and the single jobs' latencies (ms)."""
    started: list[GatewayProcess] = []
    async with stack((), {"window": window}, events, started) as (broker, sim, obs):
        gw = started[0]
        cpu0 = cpu_times()
        lat = await single_latencies(broker, sim, singles)
        cpu1 = cpu_times()
        await sim.ctl("reset")
        job = sms_job("bench-sms", members(n))
        payload = json.dumps(job)
        spy = py_spy(gw)
        gw_cpu0 = gateway_cpu(gw)
        t0 = time.monotonic()
        await obs.publish("plp/jobs", payload)
        stats = await sim.wait(lambda s: s["counters"].get("accepted", 0) >= n, 600)
        t_all = time.monotonic()
        await obs.wait_job("bench-sms", "done", timeout=600)
        t_done = time.monotonic()
        own, child = cpu_delta(gw_cpu0, gateway_cpu(gw))
        cpu2 = cpu_times()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
    first, last = stats["first_accepted_at"], stats["last_accepted_at"]
    lat_ms = sorted(x * 1000 for x in lat)
    p99 = lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.99))]
    print(f"window                      {window} (one bind), delivery_events={events}")
    print(f"single jobs                 {len(lat_ms)}")
    print(f"publish -> 1st submit_sm    p50 {statistics.median(lat_ms):.1f} ms, "
          f"p99 {p99:.1f} ms, max {lat_ms[-1]:.1f} ms")  # fmt: skip
    print(f"CPU during the single jobs  {cpu_report(cpu0, cpu1)}")
    print(f"recipients                  {n}")
    print(f"payload                     {len(payload) / 1e6:.2f} MB")
    print(f"publish -> 1st submit (job) {(first - t0) * 1000:.0f} ms")
    print(f"all submits accepted        {t_all - t0:.2f} s after publish")
    print(f"sustained (seen by SMSC)    {(n - 1) / (last - first):.0f} submit_sm/s")
    print(f"job 'done' (all receipts)   {t_done - t0:.2f} s after publish")
    print(f"duplicates at the SMSC      {stats['duplicates']}")
    print(f"gateway CPU per SMS         {(own + child) * 1e6 / n:.0f} µs (publish to done): "
          f"daemon {own * 1e6 / n:.0f}, status child {child * 1e6 / n:.0f}")  # fmt: skip
    print(f"CPU during the job          {cpu_report(cpu1, cpu2)}")
    return float((n - 1) / (last - first)), lat_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--events", choices=["each", "batch", "both"], default="both")
    parser.add_argument("--kannel", action="store_true", help="also run Kannel, same simulator")
    parser.add_argument("--throttle-seconds", type=float, default=20.0, help="0 = skip")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots there")
    args = parser.parse_args()
    asyncio.run(main_async(args))


async def throttled(seconds: float) -> None:
    """A job through the daemon against an SMSC throttling at 50/s, bind `rate = 50`."""
    n = int(50 * seconds)
    async with stack(("--throttle", "50"), {"window": 10, "rate": 50}) as (_, sim, obs):
        await obs.publish("plp/jobs", json.dumps(sms_job("throttled", members(n))))
        stats = await sim.wait(lambda s: s["counters"].get("accepted", 0) >= n, 600)
    first, last = stats["first_accepted_at"], stats["last_accepted_at"]
    counters = stats["counters"]
    share = counters.get("throttled", 0) / max(1, counters["submit_sm"])
    print(f"# throttling SMSC (50 submit_sm/s), bind rate = 50, {n} recipients")
    print(f"sustained (seen by SMSC)    {(n - 1) / (last - first):.1f} msg/s")
    print(f"throttled responses         {counters.get('throttled', 0)} of "
          f"{counters['submit_sm']} submits ({share:.2%})")  # fmt: skip


async def main_async(args: argparse.Namespace) -> None:
    from bench.bench_sms import raw_ceiling, simulator

    async with simulator() as raw:  # first: the simulator is not what is measured
        ceiling = await raw_ceiling(raw, 3 * args.recipients)
    print(f"# simulator ceiling, pipelined raw client (1,000 outstanding), receipts on: "
          f"{ceiling:,.0f} submit_sm/s")  # fmt: skip
    if args.throttle_seconds > 0:
        await throttled(args.throttle_seconds)
    ours: dict[str, float] = {}
    latencies: dict[str, list[float]] = {}
    for events in ("each", "batch") if args.events == "both" else (args.events,):
        print(f"# gateway daemon, delivery_events = {events}")
        ours[events], latencies[events] = await run(
            args.recipients, args.window, args.singles, events
        )
    kannel: dict[str, float] = {}
    if args.kannel:
        kannel = await kannel_runs(args, ours)
    if args.plot is not None:
        plot(args, ceiling, ours, latencies, kannel)


def plot(
    args: argparse.Namespace,
    ceiling: float,
    ours: dict[str, float],
    latencies: dict[str, list[float]],
    kannel: dict[str, float],
) -> None:
    from bench import plots

    command = "bench_sms_daemon " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (
            ("recipients", args.recipients), ("window", args.window), ("singles", args.singles)
        )
    ) + (" --kannel" if args.kannel else "")  # fmt: skip
    note = plots.machine_note(command)
    values = {f"gateway, events {e}": v for e, v in ours.items()}
    values |= {f"Kannel 1.4.5, {label.split(' (')[0]}": v for label, v in kannel.items()}
    values["simulator ceiling (raw client)"] = ceiling
    plots.bars(
        args.plot / "sms_throughput.png",
        f"SMS: a {args.recipients:,}-recipient job, submit_sm/s seen by the SMSC simulator",
        values,
        "submit_sm/s",
        note,
        highlight=[k for k in values if k.startswith("gateway")],
    )
    plots.distributions(
        args.plot / "sms_latency.png",
        "SMS: MQTT publish -> first submit_sm, one-recipient hot jobs",
        {f"events {e}": v for e, v in latencies.items()},
        "ms",
        note,
    )


async def kannel_runs(args: argparse.Namespace, ours: dict[str, float]) -> dict[str, float]:
    """Kannel against the same simulator, in three set-ups: submit_sm/s per set-up."""
    from bench.bench_sms_kannel import run_kannel

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sim = SmscProcess(Path(tmp), "--receipt-delay", "0")
        sim.start()
        try:
            print(f"# Kannel 1.4.5 against the same simulator, max-pending-submits {args.window}")
            setups: list[tuple[bool, str | None, str]] = [
                (True, None, "receipts (dlr-mask 3)"),
                (False, None, "no receipts"),
                (False, "file", "no receipts, message store (store-type file)"),
            ]
            for dlr, store, label in setups:
                k = await run_kannel(
                    sim.port, sim.control_port, args.recipients, args.window, dlr=dlr,
                    prequeue=False, store=store,
                )  # fmt: skip
                ratios = ", ".join(f"{e}: {v / k:.2f}" for e, v in ours.items())
                print(f"Kannel sendsms, {label}: {k:,.0f} submit_sm/s; gateway / Kannel = {ratios}")
                out[label] = k
        finally:
            sim.stop()
    return out


if __name__ == "__main__":
    main()
