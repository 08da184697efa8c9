"""Benchmark: one alert through 1, 2 and 3 gateway nodes on one PostgreSQL store, and the
time the others take to take over after a kill -9.

Everything runs on this machine: the nodes, PostgreSQL, mosquitto, the SMTP sink and the
SMSC simulator share its cores, so more nodes measure what the nodes cost here, not a
scale-out. Prints, per node count, publish -> job `done` for a job of N members over e-mail
and SMS; then, with 3 nodes and the given lease, kill -9 of the busiest node mid-job: kill ->
the takeover logged by another node, and kill -> job `done`.
The nodes speak MQTT 5 (the default with a shared group); `--protocol 3.1.1` for comparison.
Run: .venv/bin/python -m bench.bench_cluster [--recipients 3000] [--lease 15] [--runs 1]
     [--protocol 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster_fixtures import claimed, node_config, start_node  # noqa: E402
from tests.fixtures import (  # noqa: E402
    GatewayProcess,
    Mosquitto,
    Observer,
    SmtpServer,
    email_job,
    members,
)
from tests.pg_fixtures import PostgresServer  # noqa: E402
from tests.sms_fixtures import SmscProcess  # noqa: E402


async def one_job(
    workdir: Path, pg: PostgresServer, nodes: int, recipients: int, lease: float, protocol: str
) -> float:
    (workdir / "broker").mkdir(parents=True)
    broker = Mosquitto(workdir / "broker")
    broker.start()
    smtp = SmtpServer()
    smtp.start()
    sim = SmscProcess(workdir)
    sim.start()
    procs: list[GatewayProcess] = []
    try:
        url = pg.new_database()
        sms = sim.config(window=50)
        for i in range(nodes):
            name = f"n{i + 1}"
            config = node_config(
                workdir / name, broker, smtp, url, name, sms, lease=lease, protocol=protocol
            )
            procs.append(start_node(config))
        if nodes > 1:
            procs[-1].wait_log(f"cluster: {nodes} live nodes share the provider limits", 30)
            await asyncio.sleep(lease / 3 * 1.3)  # the last one's join wait
        async with Observer(broker) as obs:
            job = email_job("bench-1", members(recipients), channels=["email", "sms"], ttl=900)
            t0 = time.monotonic()
            await obs.publish_job(job)
            await obs.wait_job("bench-1", "done", timeout=600)
            elapsed = time.monotonic() - t0
        shares = [claimed(p) for p in procs]
        print(f"  {nodes} node(s): {elapsed:.1f} s; deliveries claimed per node {shares}")
        return elapsed
    finally:
        for p in procs:
            p.stop()
        sim.stop()
        smtp.stop()
        broker.stop()


async def takeover(
    workdir: Path, pg: PostgresServer, recipients: int, lease: float, protocol: str
) -> tuple[float, float]:
    (workdir / "broker").mkdir(parents=True)
    broker = Mosquitto(workdir / "broker")
    broker.start()
    smtp = SmtpServer()
    smtp.start()
    sim = SmscProcess(workdir)
    sim.start()
    procs: dict[str, GatewayProcess] = {}
    try:
        url = pg.new_database()
        sms = sim.config(window=50)
        for name in ("k1", "k2", "k3"):
            config = node_config(
                workdir / name, broker, smtp, url, name, sms, lease=lease, protocol=protocol
            )
            procs[name] = start_node(config)
        procs["k3"].wait_log("cluster: 3 live nodes share the provider limits", 30)
        await asyncio.sleep(lease / 3 * 1.3)
        async with Observer(broker) as obs:
            job = email_job("kill-1", members(recipients), channels=["email", "sms"], ttl=900)
            await obs.publish_job(job)
            await obs.wait(lambda: len(smtp.mailbox) >= recipients // 6, timeout=120)
            busiest = max(procs, key=lambda name: claimed(procs[name]))
            t0 = time.monotonic()
            procs[busiest].kill()
            others = [p for name, p in procs.items() if name != busiest]
            marker = f"took over from {busiest}"
            await obs.wait(lambda: any(marker in p.log() for p in others), timeout=lease + 60)
            taken = time.monotonic() - t0
            await obs.wait_job("kill-1", "done", timeout=600)
            done = time.monotonic() - t0
        print(f"  kill -9 {busiest}: taken over after {taken:.1f} s, job done after {done:.1f} s")
        return taken, done
    finally:
        for p in procs.values():
            p.stop()
        sim.stop()
        smtp.stop()
        broker.stop()


async def main_async(args: argparse.Namespace) -> None:
    pg = PostgresServer()
    pg.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
            print(
                f"{args.recipients} members x (e-mail + SMS), lease {args.lease} s,"
                f" MQTT {args.protocol}"
            )
            for nodes in (1, 2, 3):
                times = [
                    await one_job(
                        Path(tmp) / f"n{nodes}-{run}",
                        pg,
                        nodes,
                        args.recipients,
                        args.lease,
                        args.protocol,
                    )
                    for run in range(args.runs)
                ]
                rate = 2 * args.recipients / statistics.median(times)
                print(f"{nodes} node(s): median {statistics.median(times):.1f} s, {rate:.0f} msg/s")
            taken, done = await takeover(
                Path(tmp) / "kill", pg, args.recipients, args.lease, args.protocol
            )
            print(
                f"takeover after kill -9: {taken:.1f} s (lease {args.lease} s + at most one"
                f" heartbeat, {args.lease / 3:.1f} s); job done {done:.1f} s after the kill"
            )
    finally:
        pg.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=3000)
    parser.add_argument("--lease", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
