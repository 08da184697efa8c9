"""Benchmark: the intake's steps up to a 10,000-member audience job's first chunk, in-process.

What `bench_audience` measures end to end (publish -> first SMS), split into the intake's own
steps on the same SQLite store: the audience resolved, the job validated, its header stored
with its members frozen, the first 256 recipients made, stored, their members' choices
applied. CPU time of the one thread doing them (`time.thread_time`), so that a loaded machine
inflates it less than the wall clock; the minimum and the median over the runs.
Run: .venv/bin/python -m bench.bench_audience_intake [--members 10000] [--runs 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_audience import seed  # noqa: E402
from gateway import frozen  # noqa: E402
from gateway.choices import DirectoryConfig, apply_choices  # noqa: E402
from gateway.config import JobsConfig  # noqa: E402
from gateway.jobs import (  # noqa: E402
    Resolved,
    job_header,
    members,
    read_job,
    validate_and_hash,
    wants_store,
)
from gateway.store import SqliteStore  # noqa: E402
from tests.sms_fixtures import sms_job  # noqa: E402

SMS = frozenset({"sms"})
FIRST_CHUNK = 256


def run(n: int, runs: int) -> dict[str, list[float]]:
    steps: dict[str, list[float]] = {}

    def tick(name: str, since: float) -> float:
        now = time.thread_time()
        steps.setdefault(name, []).append((now - since) * 1000)
        return now

    with tempfile.TemporaryDirectory() as tmp:
        seed(Path(tmp) / "gateway.sqlite3", n)
        store = SqliteStore(Path(tmp) / "gateway.sqlite3")
        limits = JobsConfig()
        try:
            for i in range(runs):
                job = sms_job(f"aud-{i}", [])
                del job["recipients"]
                job["audience"] = {"plps": ["bench-plp"]}
                payload = json.dumps(job).encode()
                t = time.thread_time()
                asked, _ = wants_store(read_job(payload, limits))
                assert asked is not None
                resolved = Resolved(store.resolve_audience(*asked))
                t = tick("resolve_audience", t)
                now = datetime.now(UTC)
                spec, digest = validate_and_hash(payload, limits, SMS, now, resolved)
                t = tick("validate+hash", t)
                header = job_header(spec, limits, now, resolved)
                frozen.begin_job(store, header, digest, spec, resolved)
                t = tick("begin_job+frozen", t)
                chunk = members(spec, 0, FIRST_CHUNK, "BE", {}, resolved)
                t = tick("recipients", t)
                rows = store.add_members(header.id, chunk, SMS)
                t = tick("add_members", t)
                assert resolved.audience is not None
                apply_choices(
                    store, header, rows, resolved.audience.members, DirectoryConfig(), now
                )
                tick("choices", t)
        finally:
            store.close()
    return steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=12)
    args = p.parse_args()
    steps = run(args.members, args.runs)
    print(f"# a {args.members:,}-member audience, up to its first {FIRST_CHUNK} members stored")
    print(f"# CPU ms per step, min / median of {args.runs} runs")
    for name, values in steps.items():
        print(f"{name:<18} {min(values):6.1f} / {statistics.median(values):6.1f}")
    total_min = sum(min(v) for v in steps.values())
    total_med = sum(statistics.median(v) for v in steps.values())
    print(f"{'total':<18} {total_min:6.1f} / {total_med:6.1f}")


if __name__ == "__main__":
    main()
