"""Benchmark: a hot alert while a large cold SMS job goes out, through the whole gateway.

A cold job of `--cold` members at bind `rate = 50` fills the SMS channel; then `--hot`
one-recipient hot alerts, one after another. Prints publish -> submit_sm at the SMSC (p50,
p90, max) and the cold submits that reached the SMSC in between; the reference is the same
hot alerts with no cold work. Targets: p50 <= 50 ms, p90 <= 100 ms.
Run: .venv/bin/python -m bench.bench_hot_overtakes [--cold 20000] [--hot 20] [--rate 50]
     [--plot DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from bench.bench_sms_daemon import stack  # noqa: E402
from tests.fixtures import Mosquitto, members  # noqa: E402
from tests.sms_fixtures import SmscProcess, sms_job  # noqa: E402


async def hot_alerts(
    broker: Mosquitto, sim: SmscProcess, n: int, tag: str
) -> list[tuple[float, int]]:
    """(publish -> submit_sm seconds, cold submits in between) for `n` hot alerts."""
    out: list[tuple[float, int]] = []
    async with aiomqtt.Client(broker.host, broker.port) as dispatch:
        for i in range(n):
            phone = f"+32499{i:06d}"
            since = int((await sim.ctl("stats"))["counters"].get("accepted", 0))
            job = sms_job(f"hot-{tag}-{i}", [{"ref": "h", "phone": phone, "lang": "fr"}])
            t0 = time.monotonic()
            await dispatch.publish("plp/jobs", json.dumps(job), qos=1)
            deadline = t0 + 60
            while True:
                order = (await sim.ctl("order", since=since))["order"]
                found = [k for k, (dest, _) in enumerate(order) if dest == phone[1:]]
                if found:
                    k = found[0]
                    out.append((order[k][1] - t0, k))  # both CLOCK_MONOTONIC, one machine
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"hot alert {i} never reached the SMSC")
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.2)  # spread the alerts over the cold job's pacing
    return out


def report(label: str, results: list[tuple[float, int]]) -> None:
    ms = sorted(r[0] * 1000 for r in results)
    ahead = sorted(r[1] for r in results)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    print(f"{label:<34} p50 {statistics.median(ms):6.1f} ms, p90 {p90:6.1f} ms, "
          f"max {ms[-1]:6.1f} ms; cold submits between publish and hot: "
          f"median {statistics.median(ahead):.0f}, max {ahead[-1]}")  # fmt: skip


async def main_async(args: argparse.Namespace) -> None:
    sms = {"window": args.window, "rate": args.rate}
    async with stack((), sms, "each") as (broker, sim, obs):
        reference = await hot_alerts(broker, sim, args.hot, "ref")
        report("no cold work (reference)", reference)
        await sim.ctl("reset")
        cold = sms_job("cold", members(args.cold), priority="cold")
        await obs.publish("plp/jobs", json.dumps(cold))
        await sim.wait(lambda s: s["counters"].get("accepted", 0) >= 3 * args.window, 120)
        results = await hot_alerts(broker, sim, args.hot, "busy")
        stats = await sim.ctl("stats")
        report(f"during a {args.cold:,}-member cold job", results)
        first, last = stats["first_accepted_at"], stats["last_accepted_at"]
        accepted = int(stats["counters"].get("accepted", 0))
        print(f"{'cold job meanwhile':<34} {(accepted - 1) / (last - first):.1f} submit_sm/s "
              f"(bind rate {args.rate:g}, window {args.window})")  # fmt: skip
        await obs.publish("plp/jobs/cold/cancel", json.dumps({"reason": "bench over"}))
        await obs.wait_job("cold", "cancelled", timeout=120)
    if args.plot is not None:
        from bench import plots

        plots.distributions(
            args.plot / "hot_overtakes.png",
            "Hot SMS alerts: MQTT publish -> submit_sm, alone and during a cold job",
            {
                "no cold work (reference)": [r[0] * 1000 for r in reference],
                f"during a {args.cold:,}-member cold job at {args.rate:g}/s": [
                    r[0] * 1000 for r in results
                ],
            },
            "ms",
            plots.machine_note(
                f"bench_hot_overtakes --cold {args.cold} --hot {args.hot} --rate {args.rate:g}"
            ),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold", type=int, default=20_000)
    parser.add_argument("--hot", type=int, default=20)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots there")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
