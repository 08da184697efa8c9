"""Benchmark: one job against an SMSC that ends every session after N submit_sm (issue 12,
finding 20), with the production reconnect and retry settings.

Prints how the members ended (delivered / failed / still open), how many binds it took,
the retries and waits for a link, duplicates at the SMSC and how long the job took.
Bounded by `--timeout` (the job's state is printed as it is then).
Run: .venv/bin/python -m bench.bench_sms_flapping [--recipients 3000] [--close-every 400]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_sms_daemon import stack  # noqa: E402
from tests.fixtures import members  # noqa: E402
from tests.sms_fixtures import sms_job  # noqa: E402

# What a production configuration says (sms/config.py defaults), not the tests' short timers.
PRODUCTION_LINK = {
    "response_timeout": 10,
    "reconnect_initial_delay": 1.0,
    "reconnect_max_delay": 60.0,
    "enquire_link_interval": 30,
}
PRODUCTION_RETRY = {"max_attempts": 6, "initial_delay": 5.0, "max_delay": 300.0}


async def run(n: int, every: int, window: int, timeout: float) -> None:
    sms = {
        "window": window,
        "sms": {"link_wait": 2.0},
        "retry": PRODUCTION_RETRY,
        **PRODUCTION_LINK,
    }
    sim_args = ("--close-every", str(every))
    async with stack(sim_args, sms) as (_, sim, obs):
        await sim.ctl("reset")
        t0 = time.monotonic()
        await obs.publish("plp/jobs", json.dumps(sms_job("flapping", members(n), ttl=3600)))
        with contextlib.suppress(TimeoutError):  # report the job as it is then
            await obs.wait_job("flapping", "done", timeout=timeout)
        took = time.monotonic() - t0
        status = obs.status("flapping") or {}
        stats = await sim.ctl("stats")
        topic = "/gateway/test/health"
        seen = len(obs.on(topic))  # the counters of a health message published after the end
        await obs.wait(lambda: len(obs.on(topic)) > seen, 30)
        counters = obs.on(topic)[-1].json().get("counters", {})
    c = stats["counters"]
    print(f"# {n} recipients, SMSC ends every session after {every} submit_sm, window {window}")
    print(f"job state                   {status.get('state')} after {took:.1f} s")
    print(f"members                     {status.get('totals')}")
    print(f"binds / sessions ended      {c.get('binds', 0)} / {c.get('sessions_ended', 0)}")
    print(f"submit_sm / accepted        {c.get('submit_sm', 0)} / {c.get('accepted', 0)}")
    print(f"duplicates at the SMSC      {stats['duplicates']}")
    print(f"retries, waits for a link   {counters.get('retries')}, {counters.get('not_sent')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=3000)
    parser.add_argument("--close-every", type=int, default=400)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds, then report")
    args = parser.parse_args()
    asyncio.run(run(args.recipients, args.close_every, args.window, args.timeout))


if __name__ == "__main__":
    main()
