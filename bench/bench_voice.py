"""Benchmark: a 1,000-member voice job through VoiceChannel against the AMI simulator.

Prints the job duration against the ideal (members x call time / channels) and the latency
from the first send() to the first Originate the simulator receives. The simulator runs in
its own process; `--speed` scales its clock (1 = real time, the default).

    .venv/bin/python bench/bench_voice.py [--members 1000 --channels 30 --speed 1]

The same job through the whole daemon (MQTT, store, scheduler): bench/bench_voice_daemon.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.channel import Attempt, Report
from gateway.domain import Priority
from gateway.errors import ChannelError
from tests.voice_fixtures import FakeAudio
from voice.call_channel import VoiceChannel
from voice.config import AmiConfig, VoiceConfig

ROOT = Path(__file__).resolve().parent.parent
USER, SECRET = "bench", "bench-secret"
RING_S, SETTLE_S = 1.0, 0.5  # the simulated member answers after 1 s; dialplan waits 0.5 s


def make_attempt(i: int) -> Attempt:
    return Attempt(
        delivery_id=i,
        job_id="bench-job",
        channel="voice",
        ref=f"r{i}",
        address=f"+3247{i:06d}6",  # last digit 6: answers and listens
        lang="fr",
        text="bench",
        subject="",
        priority=Priority.HOT,
        number=1,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        test=False,
        options={"voice": {"ack": False}},
    )


async def run(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="bench-voice-"))
    stats_file = work / "sim.json"
    playback = args.call_seconds - RING_S - SETTLE_S
    audio = FakeAudio(work, playback)  # one real 8 kHz WAV per language, as synthesized once
    port = args.port
    sim = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voice.simulator",
        *("--port", str(port), "--speed", str(args.speed), "--stats-file", str(stats_file)),
        *("--max-channels", str(args.channels), "--username", USER, "--secret", SECRET),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert sim.stdout is not None
    await asyncio.wait_for(sim.stdout.readline(), 15)  # "AMI simulator on ..."
    cfg = VoiceConfig(
        enabled=True,
        channel="Local/{number}@plp-phones",
        max_channels=args.channels,
        calls_per_second=args.cps,
        ring_timeout=30,
        ami=AmiConfig(host="127.0.0.1", port=port, username=USER, secret=SECRET),
    )
    reports: asyncio.Queue[Report] = asyncio.Queue()
    channel = VoiceChannel(cfg, reports, audio)
    await channel.start()
    try:
        if not await channel._ami.wait_up(10):
            raise SystemExit("AMI simulator not reachable")
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.members):
            queue.put_nowait(i)
        outcomes: Counter[str] = Counter()
        interval = 1.0 / args.cps if args.cps > 0 else 0.0
        next_slot = [time.monotonic()]

        async def worker() -> None:  # the scheduler's part: concurrency and calls/s
            while not queue.empty():
                i = queue.get_nowait()
                now = time.monotonic()
                wait = next_slot[0] - now
                next_slot[0] = max(now, next_slot[0]) + interval
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    out = await channel.send(make_attempt(i))
                    outcomes[out.detail or out.state.value] += 1
                except ChannelError as exc:
                    outcomes[exc.reason] += 1

        started_wall, started = time.time(), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(args.channels)))
        elapsed = time.monotonic() - started
    finally:
        await channel.stop()
        sim.terminate()
        await sim.wait()
    stats = json.loads(stats_file.read_text(encoding="utf-8"))
    first = float(stats["first_originate_at"]) - started_wall
    ideal = args.members * args.call_seconds / args.channels / args.speed
    return {
        "members": args.members,
        "channels": args.channels,
        "call_seconds": args.call_seconds,
        "speed": args.speed,
        "calls_per_second": args.cps,
        "duration_s": round(elapsed, 2),
        "ideal_s": round(ideal, 2),
        "efficiency": round(ideal / elapsed, 3),
        "first_originate_ms": round(first * 1000, 1),
        "peak_channels": stats["peak"],
        "rejected_over_limit": stats["rejected_over_limit"],
        "originates": stats["originates"],
        "outcomes": dict(outcomes),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=30)
    parser.add_argument("--call-seconds", type=float, default=3.0)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--cps", type=float, default=0.0, help="calls per second, 0 = unlimited")
    parser.add_argument("--port", type=int, default=15038)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    for key, value in result.items():
        print(f"{key:>20}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
