"""A job status counts members by their sets of delivery states: read from the delivery counts
when the job's deliveries are on one channel, by the store's grouping otherwise; the same
counts either way."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.config import JobsConfig
from gateway.domain import DeliveryState
from gateway.jobs import content_hash, parse_job
from gateway.rows import AddResult
from gateway.status import _counts_and_member_sets
from gateway.store import SqliteStore, SqlStore
from gateway.store_jobs import COUNTS
from tests.fixtures import email_job, members


def add_job(store: SqlStore, job_id: str, channels: list[str]) -> list[int]:
    payload = json.dumps(email_job(job_id, members(4), channels=channels)).encode()
    enabled = frozenset(channels)
    job, _ = parse_job(payload, JobsConfig(), enabled)
    result, rows = store.add_job(job, content_hash(payload), enabled)
    assert result is AddResult.NEW
    return [r.id for r in rows]


def by_states(sets: list[tuple[frozenset[DeliveryState], int]]) -> list[tuple[list[str], int]]:
    return sorted((sorted(states), n) for states, n in sets)


def test_member_sets_from_one_channels_counts_match_the_stores_grouping(
    any_store: SqlStore,
) -> None:
    for job_id, channels in (("one", ["email"]), ("two", ["email", "sms"])):
        ids = add_job(any_store, job_id, channels)
        any_store.transition(ids[0], DeliveryState.SENDING)
        any_store.transition(ids[0], DeliveryState.DELIVERED)
        any_store.transition(ids[1], DeliveryState.FAILED, last_error="smtp_550")
        any_store.transition(ids[-1], DeliveryState.SENDING)
        found, sets = _counts_and_member_sets(any_store, job_id)
        assert found is not None and len(found[1]) == len(channels)
        assert by_states(sets) == by_states(any_store.member_state_sets(job_id)), job_id
    found, sets = _counts_and_member_sets(any_store, "one")
    assert by_states(sets) == [
        (["delivered"], 1),
        (["failed"], 1),
        (["queued"], 1),
        (["sending"], 1),
    ]
    assert _counts_and_member_sets(any_store, "nope") == (None, [])


def test_a_jobs_counts_are_read_from_an_index_alone(tmp_path: Path) -> None:
    """A status every `job_status_interval` reads the job's counts: from the index on
    (job_id, state, channel), never every delivery row of a 100,000-member job."""
    store = SqliteStore(tmp_path / "s.sqlite3")
    plan = store._db.execute(f"EXPLAIN QUERY PLAN {COUNTS}", ("j",)).fetchall()
    assert any("COVERING INDEX deliveries_job_counts" in str(tuple(r)) for r in plan), plan
