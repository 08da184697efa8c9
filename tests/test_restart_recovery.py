"""Nothing lost, nothing doubled: real processes killed and restarted, a broker restarted,
PostgreSQL restarted. Every test runs the daemon on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import random
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.directory import Member, Plp
from gateway.intake import CHUNK_MEMBERS, FIRST_CHUNK, SECOND_CHUNK
from gateway.store import SqliteStore, SqlStore
from gateway.store_pg import PostgresStore
from tests.conftest import GatewayFactory
from tests.fixtures import Mosquitto, Observer, SmtpServer, email_job, members
from tests.pg_fixtures import PostgresServer


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """The daemon's store: the SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def gateway_store_toml(store_url: str | None) -> str:
    return "" if store_url is None else f'url = "{store_url}"\n'


def stored_jobs(tmp_path: Path, store_url: str | None, job_id: str) -> int:
    if store_url is None:
        db = sqlite3.connect(tmp_path / "gateway.sqlite3")
        try:
            count: int = db.execute("SELECT count(*) FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
        finally:
            db.close()
        return count
    with psycopg.connect(store_url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs WHERE id=%s", (job_id,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_kill_9_mid_job_then_restart_sends_each_email_once(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    smtp.script.delay = 0.005
    proc = gateway()
    recipients = members(500)
    await observer.publish_job(email_job("big-1", recipients))
    await smtp.await_for(lambda box: len(box) >= 120)
    proc.kill()
    sent_before = len(smtp.mailbox)
    assert sent_before < 500, "the job must still be running when it is killed"
    smtp.script.delay = 0  # slow mail kept the kill mid-job; the rest may go at full speed

    gateway()
    await observer.wait_job("big-1", "done", timeout=120)
    counts = Counter(m.rcpts[0] for m in smtp.mailbox)
    assert set(counts) == {r["email"] for r in recipients}, "no recipient skipped"
    doubled = [addr for addr, n in counts.items() if n > 1]
    # Only attempts in flight at the kill may be resent (at most the e-mail lane's attempts,
    # twice the SMTP concurrency of 4); the gateway flags them as possibly sent.
    assert len(doubled) <= 2 * 4
    assert all(n <= 2 for n in counts.values())
    status = observer.status("big-1")
    assert status is not None and status["totals"] == {"delivered": 500}


async def test_job_published_while_gateway_is_down_runs_when_it_starts(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    proc = gateway()  # first start creates the persistent session
    assert proc.terminate() == 0
    await observer.publish_job(email_job("offline-1", members(3)))
    gateway()
    await observer.wait_job("offline-1", "done")
    assert len(await smtp.await_for(lambda box: len(box) == 3)) == 3


async def test_broker_restart_during_a_job_loses_nothing(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer, broker: Mosquitto
) -> None:
    smtp.script.delay = 0.01
    proc = gateway()
    await observer.publish_job(email_job("outage-1", members(200)))
    await smtp.await_for(lambda box: len(box) >= 30)
    broker.restart()
    proc.wait_log("connected to MQTT broker", after=proc.wait_log("MQTT link down"))
    # A job published right after the outage is taken too.
    await observer.publish_job(email_job("outage-2", members(5, domain="other.be")))
    await observer.wait_job("outage-1", "done", timeout=90)
    await observer.wait_job("outage-2", "done", timeout=90)
    counts = Counter(m.rcpts[0] for m in smtp.mailbox)
    assert len(counts) == 205 and max(counts.values()) == 1


async def test_killed_between_receipt_and_commit_the_job_is_delivered_again(
    gateway: GatewayFactory, observer: Observer, tmp_path: Path, store_url: str | None
) -> None:
    proc = gateway()
    job = email_job("crash-1", members(15_000), priority="cold")
    await observer.publish_job(job)
    proc.wait_log("job payload received")
    proc.kill()
    stored = stored_jobs(tmp_path, store_url, "crash-1")
    assert stored == 0, "killed before the commit: the job is not in the store"

    gateway()  # the broker re-delivers the unacknowledged job to the persistent session
    await observer.wait(
        lambda: (observer.status("crash-1") or {}).get("state") in ("accepted", "running"),
        timeout=60,
    )
    await observer.publish("plp/jobs/crash-1/cancel", json.dumps({"reason": "test over"}))
    status = await observer.wait_job("crash-1", "cancelled", timeout=60)
    assert status["deliveries"] == 15_000


def query(tmp_path: Path, store_url: str | None, sql: str, *params: object) -> tuple[Any, ...]:
    """One row of `sql` (`?` placeholders) from the daemon's store, on either engine."""
    if store_url is None:
        db = sqlite3.connect(tmp_path / "gateway.sqlite3")
        try:
            row: tuple[Any, ...] = db.execute(sql, params).fetchone()
        finally:
            db.close()
        return row
    with psycopg.connect(store_url) as conn:
        found = conn.execute(sql.replace("?", "%s"), params).fetchone()
    assert found is not None
    return tuple(found)


def chunk_ends(full: int) -> list[int]:
    """Where the intake's chunks end, with `full` chunks of CHUNK_MEMBERS after the small ones."""
    ends = [FIRST_CHUNK, FIRST_CHUNK + SECOND_CHUNK]
    for _ in range(full):
        ends.append(ends[-1] + CHUNK_MEMBERS)
    return ends


def stored_so_far(tmp_path: Path, store_url: str | None, job_id: str) -> tuple[int, int]:
    """A chunked job's deliveries stored and whether it is complete, read while the daemon
    is down."""
    stored, complete = query(
        tmp_path,
        store_url,
        "SELECT (SELECT count(*) FROM deliveries WHERE job_id=?), complete FROM jobs WHERE id=?",
        job_id,
        job_id,
    )
    return stored, complete


async def resumed_whole(
    observer: Observer, tmp_path: Path, store_url: str | None, job_id: str, total: int
) -> None:
    """Once the redelivered job's intake resumed: every member stored once, the job complete."""
    await observer.wait(
        lambda: (observer.status(job_id) or {}).get("deliveries") == total, timeout=120
    )
    rows, members_stored, complete = query(
        tmp_path,
        store_url,
        "SELECT count(*), count(DISTINCT rindex), min(j.complete) FROM deliveries d"
        " JOIN jobs j ON j.id = d.job_id WHERE d.job_id=?",
        job_id,
    )
    assert (rows, members_stored, complete) == (total, total, 1), "none lost, none doubled"


async def test_kill_9_mid_intake_of_a_large_job_then_redelivery_loses_and_doubles_no_member(
    gateway: GatewayFactory,
    observer: Observer,
    smtp: SmtpServer,
    tmp_path: Path,
    store_url: str | None,
) -> None:
    # Stored in chunks: members 0-49, 50-249, then 2,000 at a time; each sent once stored.
    # Two full chunks: the kill lands in a small chunk, the first full one or the last.
    boundaries = chunk_ends(2)
    total = boundaries[-1]
    smtp.script.delay = 0.01
    proc = gateway()
    chunk = random.randrange(len(boundaries) - 1)  # the kill lands in the chunk after it
    await observer.publish_job(email_job("municipality", members(total), priority="cold"))
    last = boundaries[chunk] - 1
    proc.wait_log(f"job municipality: members {boundaries[chunk - 1] if chunk else 0} to {last}")
    proc.kill()
    stored, complete = stored_so_far(tmp_path, store_url, "municipality")
    assert not complete, f"killed after chunk {chunk}: the job must not be complete yet"
    assert stored in boundaries[chunk:-1], "a chunk is stored whole or not at all"

    gateway()  # the broker delivers the unacknowledged job again: its intake resumes
    await resumed_whole(observer, tmp_path, store_url, "municipality", total)
    await observer.publish("plp/jobs/municipality/cancel", json.dumps({"reason": "test over"}))
    await observer.wait_job("municipality", "cancelled", timeout=60)
    counts = Counter(m.rcpts[0] for m in smtp.mailbox)
    # Only attempts in flight at the kill may be resent: at most the e-mail lane's attempts,
    # twice the SMTP concurrency of 4 (one on the wire per connection, one being recorded).
    assert sum(1 for n in counts.values() if n > 1) <= 2 * 4
    assert all(n <= 2 for n in counts.values())


def directory_store(tmp_path: Path, store_url: str | None) -> SqlStore:
    """The daemon's store, opened by the test while the daemon is not running."""
    if store_url is None:
        return SqliteStore(tmp_path / "gateway.sqlite3")
    return PostgresStore(store_url)


async def test_kill_9_mid_intake_of_an_audience_job_then_a_directory_change_and_redelivery(
    gateway: GatewayFactory,
    observer: Observer,
    smtp: SmtpServer,
    tmp_path: Path,
    store_url: str | None,
) -> None:
    # A 2,250-member PLP: members 0-49, 50-249, then 2,000 at a time, frozen with the job's
    # header.
    boundaries = chunk_ends(1)
    total = boundaries[-1]
    town = [Member("town", f"m-{i:05d}", "fr", email=f"m{i}@example.be") for i in range(total)]
    store = directory_store(tmp_path, store_url)
    try:
        store.import_members("town", town, plp=Plp("town"))
    finally:
        store.close()
    smtp.script.delay = 0.01
    proc = gateway()
    job = email_job("town-alert", [], audience={"plps": ["town"]})
    del job["recipients"]
    await observer.publish_job(job)
    proc.wait_log("job town-alert: members 0 to 49 stored")
    proc.kill()
    smtp.script.delay = 0  # slow mail kept the kill mid-job; the rest may go at full speed
    stored, complete = stored_so_far(tmp_path, store_url, "town-alert")
    assert not complete and stored in boundaries[:-1], "killed mid-intake, a chunk stored whole"

    # Before the redelivery the directory changes: members that sort first join (resolved
    # again, every position would shift), a member not yet stored is erased.
    store = directory_store(tmp_path, store_url)
    try:
        joined = [Member("town", f"a-{i:02d}", "fr", email=f"a{i}@example.be") for i in range(40)]
        store.import_members("town", joined)
        assert store.remove_member("m-02000") == 1  # in the last chunk, not stored yet
    finally:
        store.close()
    gateway()  # the broker delivers the unacknowledged job again: its intake resumes
    await resumed_whole(observer, tmp_path, store_url, "town-alert", total)
    refs, gone = query(
        tmp_path,
        store_url,
        "SELECT count(DISTINCT ref), (SELECT last_error FROM deliveries WHERE job_id=?"
        " AND rindex=2000) FROM deliveries WHERE job_id=? AND ref LIKE ?",
        "town-alert",
        "town-alert",
        "m-%",
    )
    assert (refs, gone) == (total - 1, "member_gone"), "the frozen members, each once"
    await observer.wait_job("town-alert", "done", timeout=120)
    counts = Counter(m.rcpts[0] for m in smtp.mailbox)
    assert not any(a.startswith("a") for a in counts), "a member who joined later is not sent"
    assert "m2000@example.be" not in counts and len(counts) == total - 1
    # Only attempts in flight at the kill may be resent: at most the e-mail lane's attempts,
    # twice the SMTP concurrency of 4 (one on the wire per connection, one being recorded).
    assert sum(1 for n in counts.values() if n > 1) <= 2 * 4


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_postgresql_restart_during_a_job_loses_nothing(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer, postgres_server: PostgresServer
) -> None:
    server = postgres_server
    smtp.script.delay = 0.01
    proc = gateway()
    await observer.publish_job(email_job("pg-outage-1", members(200)))
    await smtp.await_for(lambda box: len(box) >= 30)
    assert len(smtp.mailbox) < 200, "the job must still be running when PostgreSQL goes"
    server.restart(crash=True)  # like a crash: every connection cut, recovery at start
    proc.wait_log("store reconnected")
    # A job published after the restart is stored and run too.
    await observer.publish_job(email_job("pg-outage-2", members(5, domain="other.be")))
    await observer.wait_job("pg-outage-1", "done", timeout=90)
    await observer.wait_job("pg-outage-2", "done", timeout=90)
    counts = Counter(m.rcpts[0] for m in smtp.mailbox)
    assert len(counts) == 205 and max(counts.values()) == 1
    status = observer.status("pg-outage-1")
    assert status is not None and status["totals"] == {"delivered": 200}
