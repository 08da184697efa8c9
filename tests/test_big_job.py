"""A large job is stored in chunks, each sent once stored, and complete after its last chunk:
a redelivery after a crash mid-intake resumes it, no member lost or doubled (both engines).
The daemon killed mid-intake: tests/test_restart_recovery.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from gateway.config import JobsConfig
from gateway.domain import DeliveryState, JobState
from gateway.jobs import content_hash, job_header, members, validate_job
from gateway.rows import AddResult, job_to_body, member_json
from gateway.store import SqlStore
from tests.fixtures import email_job
from tests.fixtures import members as people

EMAIL = frozenset({"email"})


def test_a_chunked_job_resumes_after_a_crash_and_is_never_done_before_its_last_chunk(
    any_store: SqlStore,
) -> None:
    store = any_store
    payload = json.dumps(email_job("big", people(30))).encode()
    spec = validate_job(payload, JobsConfig(), EMAIL)
    header = job_header(spec, JobsConfig(), datetime.now(UTC))
    digest = content_hash(payload)
    assert store.begin_job(header, digest) == (AddResult.NEW, 0)
    first = store.add_members("big", members(spec, 0, 10, "BE", {}), EMAIL)
    assert [r.rindex for r in first] == list(range(10))
    # Every stored member is final, but the job is not complete: not done.
    for row in first:
        store.transition(row.id, DeliveryState.SENDING)
        store.transition(row.id, DeliveryState.DELIVERED)
    assert store.transition_job_if_done("big") is None
    assert store.finish_receipt_waits({"email": 0.0}) == []
    job_row = store.job_row("big")
    assert job_row is not None and job_row.state is JobState.RUNNING

    # The daemon dies here; the broker delivers the job again: the intake resumes at 10.
    assert store.begin_job(header, digest) == (AddResult.NEW, 10)
    assert store.begin_job(header, "other content")[0] is AddResult.CONFLICT
    rest = members(spec, 10, 30, "BE", {})
    body = job_to_body(header, [member_json(r) for r in members(spec, 0, 30, "BE", {})])
    second = store.add_members("big", rest, EMAIL, body)
    assert [r.rindex for r in second] == list(range(10, 30))
    assert store.begin_job(header, digest) == (AddResult.DUPLICATE, 0)

    stored = store.deliveries("big")
    assert sorted(d.rindex for d in stored) == list(range(30)), "none lost, none doubled"
    job = store.job("big")
    assert job is not None and [r.ref for r in job.recipients] == [f"m-{i:05d}" for i in range(30)]
    assert store.transition_job_if_done("big") is None  # 20 members still queued


def test_members_stored_after_a_cancel_are_never_sent(any_store: SqlStore) -> None:
    store = any_store
    payload = json.dumps(email_job("closed", people(4))).encode()
    spec = validate_job(payload, JobsConfig(), EMAIL)
    header = job_header(spec, JobsConfig(), datetime.now(UTC))
    store.begin_job(header, content_hash(payload))
    store.add_members("closed", members(spec, 0, 2, "BE", {}), EMAIL)
    store.close_job("closed", JobState.CANCELLED, DeliveryState.CANCELLED, "cancelled")
    late = store.add_members("closed", members(spec, 2, 4, "BE", {}), EMAIL, "{}")
    assert {r.state for r in late} == {DeliveryState.CANCELLED}
    assert store.pending_deliveries() == []
