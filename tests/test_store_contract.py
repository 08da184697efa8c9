"""The store contract on both engines: every method of `StoreContract` the other store tests
do not already cover, the schema migrations, and a PostgreSQL that restarts under the store.
(The batches are in test_store_batches.py, receipt waits in test_receipt_wait.py, purge and
replay proofs in test_replay.py and test_privacy_scan.py: all run on both engines.)"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.config import JobsConfig
from gateway.domain import DeliveryState, Job, JobState, Priority
from gateway.errors import SchemaTooNew, StoreError
from gateway.jobs import content_hash, parse_job
from gateway.migrations import MIGRATIONS, migrate
from gateway.rows import AddResult
from gateway.store import SqliteStore, SqlStore
from gateway.store_contract import StoreContract
from gateway.store_db import SqliteDb
from gateway.store_pg import PostgresStore, safe_url
from tests.fixtures import email_job, members
from tests.pg_fixtures import PostgresServer, StoreFactory
from tests.test_store_batches import claim, job_state, new_job, sent

BOTH = frozenset({"sms", "voice", "email"})


def add_email_job(store: SqlStore, job_id: str, n: int, **extra: object) -> list[int]:
    payload = json.dumps(email_job(job_id, members(n), **extra)).encode()
    job, _ = parse_job(payload, JobsConfig(), frozenset({"email"}))
    result, rows = store.add_job(job, content_hash(payload), frozenset({"email"}))
    assert result is AddResult.NEW
    return [r.id for r in rows]


def test_both_stores_implement_the_contract(any_store: SqlStore) -> None:
    contract: StoreContract = any_store  # mypy checks the methods; this checks the names
    names = [n for n in dir(StoreContract) if not n.startswith("_")]
    assert all(callable(getattr(contract, n)) for n in names if n not in ("backend",))
    assert any_store.backend in ("sqlite", "postgresql")
    assert any_store.schema_version == len(MIGRATIONS)


def test_jobs_read_back_and_close(any_store: SqlStore) -> None:
    store = any_store
    ids = add_email_job(store, "a", 3)
    add_email_job(store, "b", 1, priority="cold")
    job = store.job("a")
    assert job is not None and [r.ref for r in job.recipients] == ["m-00000", "m-00001", "m-00002"]
    assert [r.id for r in store.active_jobs()] == ["a", "b"]
    found = store.job_with_counts("a")
    assert found is not None and found[1] == {"email": {"queued": 3}}
    assert store.job_with_counts("nope") is None and store.job("nope") is None
    pending = store.pending_deliveries()
    assert [(d.id, p) for d, p in pending][:3] == [(i, Priority.HOT) for i in ids]
    assert pending[-1][1] is Priority.COLD
    changes = store.close_job("a", JobState.CANCELLED, DeliveryState.CANCELLED, "drill over")
    assert {c.delivery.state for c in changes} == {DeliveryState.CANCELLED}
    assert job_state(store, "a") is JobState.CANCELLED
    assert [r.id for r in store.active_jobs()] == ["b"]
    assert store.deliveries("a")[0].last_error == "drill over"


def test_members_grouped_by_their_states_and_the_latest_jobs(any_store: SqlStore) -> None:
    store = any_store
    ids = add_email_job(store, "g", 3)
    add_email_job(store, "h", 1)
    store.transition(ids[0], DeliveryState.SENDING)
    store.transition(ids[0], DeliveryState.DELIVERED)
    store.transition(ids[1], DeliveryState.FAILED, last_error="smtp_550")
    assert sorted(store.member_state_sets("g"), key=lambda e: sorted(e[0])) == sorted(
        [
            (frozenset({DeliveryState.DELIVERED}), 1),
            (frozenset({DeliveryState.FAILED}), 1),
            (frozenset({DeliveryState.QUEUED}), 1),
        ],
        key=lambda e: sorted(e[0]),
    )
    assert store.member_state_sets("nope") == []
    assert {r.id for r in store.recent_jobs(5)} == {"g", "h"}
    assert len(store.recent_jobs(1)) == 1


def test_transitions_one_at_a_time_and_in_a_savepoint_batch(any_store: SqlStore) -> None:
    store = any_store
    ids = add_email_job(store, "t", 2)
    change = store.transition(ids[0], DeliveryState.SENDING, attempts=1)
    assert change is not None and change.old_state is DeliveryState.QUEUED
    results = store.many(
        store.transition,
        [
            ((ids[0], DeliveryState.DELIVERED), {}),
            ((999_999, DeliveryState.DELIVERED), {}),  # raises: undone alone
            ((ids[1], DeliveryState.FAILED), {"last_error": "bounced", "possibly_sent": True}),
        ],
    )
    assert isinstance(results[1], StoreError)
    assert store.delivery(ids[0]).state is DeliveryState.DELIVERED
    assert store.transition(ids[0], DeliveryState.SENDING) is None  # not allowed: None
    failed = store.delivery(ids[1])
    assert failed.last_error == "bounced" and failed.possibly_sent
    assert store.transition_job_if_done("t") is None  # already done by the last change
    assert job_state(store, "t") is JobState.DONE
    assert store.atomically(lambda: store.counts("t")) == {"email": {"delivered": 1, "failed": 1}}


def test_a_failed_transaction_leaves_nothing(any_store: SqlStore) -> None:
    store = any_store
    ids = add_email_job(store, "r", 1)

    def half() -> None:
        store.transition(ids[0], DeliveryState.SENDING)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.atomically(half)
    assert store.delivery(ids[0]).state is DeliveryState.QUEUED


def test_recovery_fallback_and_acknowledgement(any_store: SqlStore) -> None:
    store = any_store
    payload = json.dumps({**email_job("f", members(2)), "channels": ["sms", "voice"]}).encode()
    job, _ = parse_job(payload, JobsConfig(), BOTH)
    _, rows = store.add_job(job, content_hash(payload), BOTH)
    sms = [r for r in rows if r.channel == "sms"]
    claim(store, [sms[0].id])
    interrupted = store.recover_interrupted()
    assert [d.id for d in interrupted] == [sms[0].id]
    again = store.delivery(sms[0].id)
    assert again.state is DeliveryState.RETRYING and again.possibly_sent
    assert again.last_error == "interrupted"
    assert store.add_fallback(sms[0].id, "voice", BOTH) is None  # voice exists already
    assert store.add_fallback(sms[0].id, "email", BOTH) is not None
    voice = next(r for r in rows if r.channel == "voice" and r.rindex == 0)
    cancelled = store.acknowledge_member("f", 0, voice.id)
    assert "sms" in {c.delivery.channel for c in cancelled}
    assert {c.delivery.state for c in cancelled} == {DeliveryState.CANCELLED}
    found = store.find_member_by_phone(members(1)[0]["phone"], time.time() - 60)
    assert {d.channel for d in found} == {"sms", "voice"}


def test_receipts_in_batches_and_orphans(any_store: SqlStore) -> None:
    store = any_store
    ids = new_job(store, "s", 2)
    claim(store, ids)
    sent(store, [(ids[0], ["p1"]), (ids[1], ["p2"])])
    out = store.apply_receipts_batch(
        [
            (([("sms", "p1", DeliveryState.DELIVERED, None)],), {}),
            (([("sms", "zz", DeliveryState.DELIVERED, None)],), {}),
        ]
    )
    first, orphan = out
    assert isinstance(first, list) and first[0][0] and first[0][1] is not None
    assert orphan == [(False, None)]
    assert store.purge_orphan_receipts(time.time() + 1) == 1


def test_voice_jobs_purge_and_nonces_survive_a_reopen(store_factory: StoreFactory) -> None:
    store = store_factory()
    payload = json.dumps({**email_job("v", members(1)), "channels": ["voice"]}).encode()
    job, _ = parse_job(payload, JobsConfig(), BOTH)
    store.add_job(job, content_hash(payload), BOTH)
    assert store.voice_jobs(float("inf")) == ([], [])  # nothing finished yet
    store.close_job("v", JobState.CANCELLED, DeliveryState.CANCELLED, "over")
    purged, running = store.voice_jobs(float("inf"))
    assert [j.id for j in purged] == ["v"] and running == []
    assert store.purge(float("inf")) == 1
    store.close()
    reopened = store_factory()
    assert reopened.job("v") is None
    assert reopened.add_job(job, content_hash(payload), BOTH)[0] is AddResult.DUPLICATE


# -- migrations ------------------------------------------------------------------------------
def test_a_sqlite_file_from_before_versioning_is_adopted_as_version_1(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        old.execute(statement.format(REAL="REAL", ID="INTEGER PRIMARY KEY", BIGINT="INTEGER"))
    old.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    old.execute(
        "INSERT INTO jobs VALUES ('kept', 'h', 1, 0, 'done', '{}', 1.0, 1.0, 2.0, 1.5, NULL)"
    )
    old.commit()
    old.close()
    store = SqliteStore(path)
    try:
        assert store.schema_version == len(MIGRATIONS)  # adopted as 1, then migrated
        row = store.job_row("kept")
        assert row is not None and row.state is JobState.DONE
    finally:
        store.close()
    db = sqlite3.connect(path)
    versions = db.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert versions == [(v,) for v in range(1, len(MIGRATIONS) + 1)]
    db.close()


def test_a_newer_schema_is_refused_with_a_precise_error(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.atomically(
        lambda: store._db.execute("INSERT INTO schema_version VALUES (?, ?)", (99, time.time()))
    )
    store.close()
    known = len(MIGRATIONS)
    with pytest.raises(
        SchemaTooNew, match=rf"schema version 99, newer than this gateway knows \({known}\)"
    ):
        store_factory()


def test_migrations_run_in_order_once(tmp_path: Path) -> None:
    v2 = ("ALTER TABLE deliveries ADD COLUMN lease_until {REAL}",)
    conn = sqlite3.connect(tmp_path / "m.sqlite3", isolation_level=None)
    db = SqliteDb(conn)
    n = len(MIGRATIONS)
    assert migrate(db, MIGRATIONS) == n
    assert migrate(db, (*MIGRATIONS, v2)) == n + 1
    assert migrate(db, (*MIGRATIONS, v2)) == n + 1  # at n + 1 already: nothing runs again
    versions = [r["version"] for r in db.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, n + 2))
    conn.execute("SELECT lease_until FROM deliveries")
    conn.close()


# -- PostgreSQL going away -------------------------------------------------------------------
@pytest.mark.parametrize("crash", [False, True], ids=["fast", "crash"])
def test_the_store_rides_out_a_postgresql_restart(
    postgres_server: PostgresServer, pg_url: str, crash: bool
) -> None:
    store = PostgresStore(pg_url, reconnect_timeout=30)
    try:
        ids = add_email_job(store, "pg", 3)
        claim(store, ids[:1])
        postgres_server.restart(crash=crash)
        # The connection is gone: the next call reconnects and runs its transaction again.
        assert claim(store, ids[1:])[0] is not None
        assert store.counts("pg") == {"email": {"sending": 3}}
    finally:
        store.close()


def test_a_postgresql_that_stays_down_is_a_store_error(
    postgres_server: PostgresServer, pg_url: str
) -> None:
    store = PostgresStore(pg_url, reconnect_timeout=0.5)
    try:
        postgres_server.stop()
        with pytest.raises(StoreError, match="PostgreSQL"):
            store.job_row("x")
    finally:
        postgres_server.start()
        store.close()


def test_the_url_password_never_reaches_a_message() -> None:
    assert safe_url("postgresql://plp:s3cret@db.example:5432/plp") == (
        "postgresql://plp:***@db.example:5432/plp"
    )
    assert safe_url("postgresql://plp@db/plp") == "postgresql://plp@db/plp"


def test_fallbacks_of_one_job_read_its_members_once_each_with_its_own_address(
    any_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large job whose SMS fail falls back member by member: its body (every member) is
    parsed once, not once per fallback, and each fallback still goes to its own member."""
    store = any_store
    payload = json.dumps({**email_job("fb", members(5)), "channels": ["sms"]}).encode()
    job, _ = parse_job(payload, JobsConfig(), BOTH)
    _, rows = store.add_job(job, content_hash(payload), BOTH)
    parsed: list[str] = []
    read_job = store.job

    def counted(job_id: str) -> Job | None:
        parsed.append(job_id)
        return read_job(job_id)

    monkeypatch.setattr(store, "job", counted)
    made = [store.add_fallback(r.id, "voice", BOTH) for r in rows]
    assert parsed == ["fb"]
    assert [m.address if m else None for m in made] == [m["phone"] for m in members(5)]
    assert store._fallback_members is not None
    for d in rows + [m for m in made if m is not None]:  # the job ends on its own: done
        store.transition(d.id, DeliveryState.SENDING)
        store.transition(d.id, DeliveryState.FAILED, last_error="unreachable")
    assert job_state(store, "fb") is JobState.DONE
    assert store._fallback_members is None  # ended: its members are let go
