"""Benchmark: voice through the whole daemon (real mosquitto, the gateway as a process, the
AMI simulator as a process, real espeak-ng audio).

1. A 1,000-member voice job, 30 channels, 3 s calls (ring 1 s + dialplan wait 0.5 s + 1.5 s
   message, no acknowledgement asked): job duration (publish -> status `done`) against the
   ideal (members x call time / channels).
2. MQTT publish -> first Originate at the simulator, p50/p99 over repeated single-recipient
   jobs (each a new text, so each includes its synthesis) and (`--cached`) with the same text.

Run: .venv/bin/python -m bench.bench_voice_daemon [--members 1000 --channels 30 --jobs 50]
     [--plot DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures import GatewayProcess, Mosquitto, Observer, gateway_config  # noqa: E402
from tests.voice_fixtures import AsteriskProcess, member, voice_job  # noqa: E402

RING_S, SETTLE_S = 1.0, 0.5


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def latency_runs(
    obs: Observer, sim: AsteriskProcess, jobs: int, same_text: bool
) -> list[float]:
    out: list[float] = []
    for i in range(jobs):
        job = voice_job(f"lat-{same_text}-{i}", [member(90000 + i, 6)], voice={"ack": False})
        if not same_text:
            job["message"] = {"fr": f"Alerte PLP numéro {i}: cambriolage rue des Tilleuls."}
        await sim.ctl("reset")  # keeps the record (and each poll) small
        t0 = time.time()
        await obs.publish("plp/jobs", json.dumps(job))
        await sim.wait(lambda s: s["originates"] >= 1, timeout=30)
        record = await sim.record()
        out.append((float(record[0]["start"]) - t0) * 1000)
    return out


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "broker").mkdir()
        broker = Mosquitto(work / "broker")
        broker.start()
        playback = args.call_seconds - RING_S - SETTLE_S
        sim = AsteriskProcess(
            work,
            *("--playback", str(playback), "--max-channels", str(args.channels * 2)),
            speed=1.0,
        )
        sim.start()
        voice = sim.config(work / "sounds", max_channels=args.channels, ring_timeout=30)
        config = gateway_config(work, broker, None, voice)
        config.write_text(config.read_text().replace('level = "DEBUG"', 'level = "WARNING"'))
        gw = GatewayProcess(config, work)
        gw.start()
        try:
            async with Observer(broker) as obs:
                await obs.wait(lambda: obs.on("/gateway/test/availability"), 30)
                recipients = [member(i, 6) for i in range(args.members)]
                job = voice_job("bench-voice", recipients, voice={"ack": False})
                t0 = time.time()
                await obs.publish("plp/jobs", json.dumps(job))
                status = await obs.wait_job("bench-voice", "done", timeout=3600)
                t_done = time.time()
                stats = await sim.ctl("stats")
                record = await sim.record()
                first = min(float(e["start"]) for e in record)
                last = max(float(e["end"]) for e in record)
                busy = sum(float(e["end"]) - float(e["start"]) for e in record)
                ideal = args.members * args.call_seconds / args.channels
                cold = await latency_runs(obs, sim, args.jobs, same_text=False)
                warm = await latency_runs(obs, sim, args.jobs, same_text=True)
            print(f"members                    {args.members}")
            print(f"channels                   {args.channels}")
            print(f"call time                  {args.call_seconds:.1f} s")
            print(f"totals                     {status['totals']}")
            print(f"ideal                      {ideal:.1f} s")
            print(f"publish -> done            {t_done - t0:.1f} s  (ideal/actual "
                  f"{ideal / (t_done - t0):.3f})")  # fmt: skip
            print(f"first -> last call         {last - first:.1f} s  (ideal/actual "
                  f"{ideal / (last - first):.3f})")  # fmt: skip
            print(f"channel utilisation        {busy / (args.channels * (last - first)):.3f}")
            print(f"peak concurrent calls      {stats['peak']}")
            print(f"publish -> first Originate {(first - t0) * 1000:.0f} ms (1,000-member job)")
            for name, values in (("new text", cold), ("same text", warm)):
                print(
                    f"single-recipient jobs, {name:9s}: publish -> Originate "
                    f"p50 {statistics.median(values):.0f} ms, p99 {percentile(values, 0.99):.0f}"
                    f" ms, max {max(values):.0f} ms (n={len(values)})"
                )
            if args.plot is not None:
                plot(args, record, {"new text": cold, "same text": warm})
        finally:
            gw.stop()
            sim.stop()
            broker.stop()


def plot(
    args: argparse.Namespace, record: list[dict[str, Any]], latencies: dict[str, list[float]]
) -> None:
    from bench import plots

    note = plots.machine_note(
        f"bench_voice_daemon --members {args.members} --channels {args.channels} --jobs {args.jobs}"
    )
    plots.in_progress(
        args.plot / "voice_calls.png",
        f"Voice: a {args.members:,}-member job, {args.call_seconds:g} s calls, calls in progress",
        [(float(e["start"]), float(e["end"])) for e in record],
        args.channels,
        note,
    )
    plots.distributions(
        args.plot / "voice_latency.png",
        "Voice: MQTT publish -> Originate, one-member jobs (new text: with its synthesis)",
        latencies,
        "ms",
        note,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=30)
    parser.add_argument("--call-seconds", type=float, default=3.0)
    parser.add_argument("--jobs", type=int, default=50, help="single-recipient jobs per series")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots there")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
