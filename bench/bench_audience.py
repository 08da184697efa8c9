"""Benchmark: a job addressed to a 10,000-member PLP of the directory, through the gateway.

The directory is seeded in the gateway's store (as `plp-gateway directory import` would), then
hot SMS jobs with `"audience": {"plps": [...]}` are published one after another; each is
resolved at acceptance (10,000 members frozen into the job) and sent. Prints publish -> first
submit_sm accepted by the SMSC simulator (each run, median); target <= 100 ms. For reference,
the same 10,000 members given inline as `recipients`.
Run: .venv/bin/python -m bench.bench_audience [--members 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_sms_daemon import stack  # noqa: E402
from gateway.directory import Member, Plp  # noqa: E402
from gateway.store import SqliteStore  # noqa: E402
from tests.fixtures import Observer, members  # noqa: E402
from tests.sms_fixtures import SmscProcess, sms_job  # noqa: E402

LANGS = ("fr", "nl", "de", "en")


def seed(store_path: Path, n: int) -> None:
    store = SqliteStore(store_path)
    try:
        store.import_members(
            "bench-plp",
            [
                Member(
                    "bench-plp",
                    f"m-{i:05d}",
                    LANGS[i % 4],
                    phone=f"+3247{i:07d}",
                    phone_kind="BE/mobile",
                    groups=("all",),
                )
                for i in range(n)
            ],
            plp=Plp("bench-plp", code_word="Tilleul"),
        )
    finally:
        store.close()


async def first_submit(sim: SmscProcess, obs: Observer, job: dict[str, Any]) -> float:
    """Seconds from the publish call until the SMSC accepts the job's first submit_sm; then
    waits for the whole job (the next run starts on an idle gateway)."""
    await sim.ctl("reset")
    payload = json.dumps(job)
    t0 = time.monotonic()
    await obs.publish("plp/jobs", payload)
    stats = await sim.wait(lambda s: s["counters"].get("accepted", 0) >= 1, 60)
    first = float(stats["first_accepted_at"]) - t0  # both CLOCK_MONOTONIC, one machine
    await obs.wait_job(job["id"], "done", timeout=600)
    return first


async def run(n: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BENCH_DIR"] = tmp
        async with stack((), {"window": 50}) as (_broker, sim, obs):
            seed(Path(tmp) / "gateway.sqlite3", n)
            audience: list[float] = []
            inline: list[float] = []
            for i in range(runs):
                job = sms_job(f"aud-{i}", [])
                del job["recipients"]
                job["audience"] = {"plps": ["bench-plp"]}
                audience.append(await first_submit(sim, obs, job))
                inline.append(await first_submit(sim, obs, sms_job(f"inline-{i}", members(n))))
    print(f"# a {n:,}-member PLP: publish -> first submit_sm accepted ({runs} runs)")
    for label, values in (("audience", audience), ("inline recipients", inline)):
        ms = [v * 1000 for v in values]
        print(
            f"{label:<18} median {statistics.median(ms):6.1f} ms   runs "
            + " ".join(f"{v:.0f}" for v in ms)
        )
    target = statistics.median(audience) * 1000
    print(f"target <= 100 ms: {'met' if target <= 100 else 'NOT met'} ({target:.1f} ms)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    asyncio.run(run(args.members, args.runs))


if __name__ == "__main__":
    main()
