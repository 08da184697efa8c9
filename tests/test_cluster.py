"""Several gateway nodes on one PostgreSQL store and one broker (`[mqtt] shared_group`):
every member gets one message per channel, a job reaches one node and runs once, work is
shared, a killed node's work is taken over once its lease runs out."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.cluster_fixtures import NodeFactory, claimed
from tests.fixtures import (
    ROOT,
    Observer,
    SmtpServer,
    email_job,
    members,
)
from tests.pg_fixtures import PostgresServer
from tests.sms_fixtures import SmscProcess
from tests.voice_fixtures import AsteriskProcess, member, voice_job

# Members of the big cluster jobs: enough that every node claims several batches and the kill
# lands mid-job. The load itself (6,000 members, 1-3 nodes, takeover) is bench/bench_cluster.py;
# PLP_TEST_CLUSTER_N=3000 runs these tests at their former size.
N = int(os.environ.get("PLP_TEST_CLUSTER_N", "1000"))


def per_address(smtp: SmtpServer) -> Counter[str]:
    return Counter(rcpt for mail in smtp.mailbox for rcpt in mail.rcpts)


async def test_the_same_job_id_published_twice_to_two_nodes_runs_once(
    node: NodeFactory, observer: Observer, smtp: SmtpServer
) -> None:
    a, b = node("a"), node("b")
    job = email_job("twice-1", members(40))
    await observer.publish_job(job)
    await observer.publish_job(job)
    status = await observer.wait_job("twice-1", "done")
    assert status["totals"] == {"delivered": 40}
    await observer.wait(lambda: len(smtp.mailbox) >= 40)
    assert all(n == 1 for n in per_address(smtp).values()) and len(per_address(smtp)) == 40
    # Both copies were handled (one node each, or both by one node): one was a duplicate.
    assert "job twice-1 received again: already known" in a.log() + b.log()
    # `plp-gateway status` without a job shows the cluster: both nodes live, with leases.
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "status", "--config", str(a.config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "cluster (shared group plp-nodes): 2 live of 2 nodes" in shown.stdout
    assert re.search(r"node a: live, boot \w+, lease \d", shown.stdout), shown.stdout


async def test_three_nodes_share_a_large_job_over_email_and_sms(
    node: NodeFactory, observer: Observer, smtp: SmtpServer, smsc: SmscProcess
) -> None:
    nodes = [node(name, smsc.config(window=50)) for name in ("n1", "n2", "n3")]
    job = email_job("big-1", members(N), channels=["email", "sms"], ttl=900)
    await observer.publish_job(job)
    try:
        status = await observer.wait_job("big-1", "done", timeout=120)
    except TimeoutError:
        print("STATUS", observer.status("big-1"))
        raise
    assert status["totals"].get("failed", 0) == 0, status
    await observer.wait(lambda: len(smtp.mailbox) >= N)
    mails = per_address(smtp)
    assert len(mails) == N and set(mails.values()) == {1}
    submits = await smsc.counts()
    assert len(submits) == N and set(submits.values()) == {1}
    assert all(claimed(p) > 0 for p in nodes), [claimed(p) for p in nodes]
    assert_status_moves_forward(observer, "big-1")


def assert_status_moves_forward(observer: Observer, job_id: str) -> None:
    """One truth on MQTT: the job's status messages, in arrival order, never go back to
    fewer delivered members or from `done` to another state, whichever node did the work."""
    statuses = [s.json() for s in observer.on(f"/jobs/{job_id}/status") if s.payload]
    delivered = [st["totals"].get("delivered", 0) for st in statuses]
    assert delivered == sorted(delivered), delivered
    states = [st["state"] for st in statuses]
    assert "done" not in states or set(states[states.index("done") :]) == {"done"}


async def test_the_others_finish_the_job_of_a_node_killed_in_the_middle(
    node: NodeFactory, observer: Observer, smtp: SmtpServer, smsc: SmscProcess
) -> None:
    window = 20
    nodes = {name: node(name, smsc.config(window=window)) for name in ("k1", "k2", "k3")}
    await observer.publish_job(email_job("kill-1", members(N), channels=["email", "sms"], ttl=900))
    await observer.wait(lambda: len(smtp.mailbox) >= N // 6, timeout=60)
    busiest = max(nodes, key=lambda name: claimed(nodes[name]))
    nodes[busiest].kill()
    survivors = [p for name, p in nodes.items() if name != busiest]
    # Its lease runs out and another node takes over what it held.
    await observer.wait(
        lambda: any(f"took over from {busiest}" in p.log() for p in survivors), timeout=60
    )
    try:
        status = await observer.wait_job("kill-1", "done", timeout=120)
    except TimeoutError:
        print("STATUS", observer.status("kill-1"))
        raise
    assert status["totals"].get("failed", 0) == 0, status
    # Nothing lost: every member got the alert on both channels.
    await observer.wait(lambda: len(per_address(smtp)) >= N)
    mails = per_address(smtp)
    submits = await smsc.counts()
    assert len(mails) == N and len(submits) == N
    # Doubles only within the killed node's in-flight window: the attempts it had started
    # (its lanes' slots, hot and cold: e-mail concurrency 4, SMS window) are retried.
    assert sum(n - 1 for n in mails.values()) <= 2 * 4
    assert sum(n - 1 for n in submits.values()) <= 2 * window


def most_in_any_second(times: list[float]) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_two_nodes_on_one_smsc_account_stay_within_its_rate(
    node: NodeFactory, observer: Observer, smsc: SmscProcess
) -> None:
    # The account's rate is for both nodes together: each takes its share of the live nodes.
    sms = smsc.config(window=20, rate=50)
    first = node("r1", sms)
    second = node("r2", sms)
    for proc in (first, second):
        proc.wait_log("cluster: 2 live nodes share the provider limits")
    job = email_job("rate-1", members(400), channels=["sms"], ttl=900)
    await observer.publish_job(job)
    await observer.wait_job("rate-1", "done", timeout=120)
    order = (await smsc.ctl("order", since=0))["order"]
    assert len(order) == 400
    assert claimed(first) > 0 and claimed(second) > 0
    assert most_in_any_second([at for _, at in order]) <= 50


async def test_a_receipt_for_a_message_a_dead_node_sent_is_applied_by_another(
    node: NodeFactory, observer: Observer, tmp_path: Path
) -> None:
    sim = SmscProcess(tmp_path, "--no-receipts")
    sim.start()
    try:
        sender = node("s1", sim.config())
        await observer.publish_job(email_job("dlr-1", members(1), channels=["sms"]))
        await observer.wait(lambda: (observer.status("dlr-1") or {}).get("totals") == {"sent": 1})
        sender.kill()
        other = node("s2", sim.config())
        other.wait_log("smsc sim: bound")
        # The SMSC's receipt for s1's message (id 1) reaches s2's bind.
        await sim.ctl("receipt", id="1", dest=members(1)[0]["phone"])
        status = await observer.wait_job("dlr-1", "done")
        assert status["totals"] == {"delivered": 1}
        assert await sim.counts() == {members(1)[0]["phone"].removeprefix("+"): 1}
    finally:
        sim.stop()


async def test_a_job_published_while_every_node_is_down_runs_when_one_starts(
    node: NodeFactory, observer: Observer, smtp: SmtpServer
) -> None:
    first, second = node("d1"), node("d2")
    assert first.terminate() == 0 and second.terminate() == 0
    await observer.publish_job(email_job("down-1", members(5)))
    node("d2")
    status = await observer.wait_job("down-1", "done")
    assert status["totals"] == {"delivered": 5}
    assert len(per_address(smtp)) == 5


async def test_jobs_published_after_a_node_was_killed_all_run(
    node: NodeFactory, observer: Observer, smtp: SmtpServer
) -> None:
    dead, live = node("x1"), node("x2")
    dead.kill()
    for i in range(4):
        await observer.publish_job(email_job(f"after-{i}", members(2)))
    for i in range(4):
        await observer.wait_job(f"after-{i}", "done", timeout=60)
    assert live.proc is not None and live.proc.poll() is None


async def test_a_postgresql_restart_in_the_middle_of_a_job_of_two_nodes_loses_nothing(
    node: NodeFactory, observer: Observer, smtp: SmtpServer, postgres_server: PostgresServer
) -> None:
    smtp.script.delay = 0.01
    nodes = [node("p1"), node("p2")]
    await observer.publish_job(email_job("pg-restart-1", members(300)))
    await smtp.await_for(lambda box: len(box) >= 40)
    assert len(smtp.mailbox) < 300, "the job must still be running when PostgreSQL goes"
    postgres_server.restart(crash=True)
    for proc in nodes:
        proc.wait_log("store reconnected")
    status = await observer.wait_job("pg-restart-1", "done", timeout=90)
    assert status["totals"] == {"delivered": 300}
    mails = per_address(smtp)
    # Nothing lost; a double only for an attempt in flight when the store went (a claim or
    # a record of it that could not be stored is tried again, flagged possibly_sent).
    assert len(mails) == 300 and sum(mails.values()) - 300 <= 2 * 4 * len(nodes)


async def test_calls_of_a_dead_node_that_ended_after_it_died_are_settled_from_astdb(
    node: NodeFactory, observer: Observer, tmp_path: Path
) -> None:
    workdir = tmp_path / "astdb-ami"
    workdir.mkdir()
    sim = AsteriskProcess(workdir, "--playback", "8", speed=8.0)
    sim.start()
    try:
        voice = sim.config(
            tmp_path / "sounds", max_channels=3, retry="recall_unacknowledged = false"
        )
        placer = node("v1", voice)
        # Even members press 1 (acknowledged), odd ones listen to the end (delivered).
        recipients = [member(i, 1 if i % 2 == 0 else 6) for i in range(6)]
        await observer.publish_job(voice_job("v-cluster", recipients))
        await sim.wait(lambda s: s["originates"] >= 6 and s["live"] == 3, timeout=60)
        placer.kill()
        # Its calls go on and end while it is dead; the dialplan records each result.
        await sim.wait(lambda s: s["live"] == 0, timeout=30)
        assert len((await sim.ctl("astdb"))["plp"]) == 3
        other = node("v2", voice)
        status = await observer.wait_job("v-cluster", "done", timeout=60)
        assert status["totals"] == {"acknowledged": 3, "delivered": 3}
        assert await sim.calls() == {r["phone"][1:]: 1 for r in recipients}, "nobody twice"
        assert "ended while the gateway was down" in other.log()
    finally:
        sim.stop()
