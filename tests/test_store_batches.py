"""The store's batched hot path gives what one call at a time would: claims, sends, receipts
(early, multi-part, repeated, unknown) and the end of the job, in one transaction each."""

from __future__ import annotations

import json

import pytest

from gateway.config import JobsConfig
from gateway.domain import DeliveryState, JobState
from gateway.jobs import parse_job
from gateway.store import Call, Change, SqlStore
from tests.fixtures import members
from tests.sms_fixtures import sms_job

SENT = DeliveryState.SENT
DELIVERED = DeliveryState.DELIVERED
FAILED = DeliveryState.FAILED


@pytest.fixture
def store(any_store: SqlStore) -> SqlStore:
    """On SQLite and on PostgreSQL: the batches are part of the store contract."""
    return any_store


def new_job(store: SqlStore, job_id: str, n: int) -> list[int]:
    raw = json.dumps(sms_job(job_id, members(n))).encode()
    job, _ = parse_job(raw, JobsConfig(), frozenset({"sms"}))
    _, rows = store.add_job(job, job_id, frozenset({"sms"}))
    return [r.id for r in rows]


def job_state(store: SqlStore, job_id: str) -> JobState:
    row = store.job_row(job_id)
    assert row is not None
    return row.state


def claim(store: SqlStore, ids: list[int]) -> list[Change | Exception | None]:
    return store.claim_batch([((did,), {}) for did in ids])


def sent(store: SqlStore, items: list[tuple[int, list[str]]]) -> list[list[Change]]:
    calls: list[Call] = [((did, SENT, "sms", pids, None), {}) for did, pids in items]
    results = store.record_sent_batch(calls)
    assert all(isinstance(r, list) for r in results)
    return [r for r in results if isinstance(r, list)]


def claimed(result: Change | Exception | None) -> Change:
    assert isinstance(result, Change)
    return result


def test_a_batch_of_claims_counts_each_attempt_once(store: SqlStore) -> None:
    ids = new_job(store, "j", 3)
    results = claim(store, [ids[0], ids[1], ids[0]])
    first, second, again = results
    assert claimed(second) and again is None
    assert claimed(first).delivery.state is DeliveryState.SENDING
    assert claimed(first).old_state is DeliveryState.QUEUED
    assert store.delivery(ids[0]).attempts == 1
    assert store.delivery(ids[2]).state is DeliveryState.QUEUED
    assert claim(store, [ids[0]]) == [None]  # already sending
    assert job_state(store, "j") is JobState.RUNNING


def test_an_unknown_delivery_is_an_error_for_that_call_only(store: SqlStore) -> None:
    ids = new_job(store, "j", 1)
    results = claim(store, [999_999, ids[0]])
    assert isinstance(results[0], Exception)
    assert claimed(results[1])


def test_sent_then_receipts_deliver_and_finish_the_job(store: SqlStore) -> None:
    ids = new_job(store, "j", 3)
    claim(store, ids)
    changes = sent(store, [(did, [f"m{did}"]) for did in ids])
    assert [[c.delivery.state for c in cs] for cs in changes] == [[SENT]] * 3
    assert store.delivery(ids[0]).provider_ids == (f"m{ids[0]}",)
    results = store.apply_receipts([("sms", f"m{did}", DELIVERED, None) for did in ids])
    assert [known for known, _ in results] == [True, True, True]
    finished = [c.job_finished for _, c in results if c is not None]
    assert finished == [None, None, JobState.DONE]  # on the job's last change only
    assert store.counts("j") == {"sms": {"delivered": 3}}


def test_a_receipt_before_the_submit_response_applies_when_it_is_recorded(store: SqlStore) -> None:
    ids = new_job(store, "j", 2)
    claim(store, ids)
    assert store.apply_receipts([("sms", "early", FAILED, "UNDELIV")]) == [(False, None)]
    changes = sent(store, [(ids[0], ["early"]), (ids[1], ["late"])])
    first = changes[0]
    assert [c.delivery.state for c in first] == [SENT, FAILED]
    assert first[1].delivery.last_error == "UNDELIV"
    assert [c.delivery.state for c in changes[1]] == [SENT]
    # the orphan is used up: the same id again is a new orphan, not a second change
    assert store.apply_receipts([("sms", "early", DELIVERED, None)]) == [(True, None)]


def test_a_long_message_is_delivered_only_when_every_part_is(store: SqlStore) -> None:
    ids = new_job(store, "j", 1)
    claim(store, ids)
    sent(store, [(ids[0], ["p1", "p2", "p3"])])
    results = store.apply_receipts([("sms", "p1", DELIVERED, None), ("sms", "p2", DELIVERED, None)])
    assert results == [(True, None), (True, None)]
    ((known, change),) = store.apply_receipts([("sms", "p3", DELIVERED, None)])
    assert known and change is not None and change.delivery.state is DELIVERED
    assert change.job_finished is JobState.DONE


def test_one_failed_part_fails_the_message_in_the_same_batch(store: SqlStore) -> None:
    ids = new_job(store, "j", 2)
    claim(store, ids)
    sent(store, [(ids[0], ["a1", "a2"]), (ids[1], ["b1"])])
    results = store.apply_receipts(
        [
            ("sms", "a1", DELIVERED, None),
            ("sms", "b1", DELIVERED, None),
            ("sms", "a2", FAILED, "REJECTD"),
            ("sms", "a2", DELIVERED, None),  # a repeated receipt changes nothing
        ]
    )
    states = [c.delivery.state if c else None for _, c in results]
    assert states == [None, DELIVERED, FAILED, None]
    finished = [c.job_finished if c else None for _, c in results]
    assert finished == [None, None, JobState.DONE, None]  # once, on the job's last change
    assert store.delivery(ids[0]).last_error == "REJECTD"
    assert job_state(store, "j") is JobState.DONE


def test_a_job_stored_claimed_is_as_if_claimed_at_once(store: SqlStore) -> None:
    """`add_job(claim=True)` (a small hot job): its queued deliveries are stored `sending`,
    the attempt counted, in the job's own transaction; one it cannot send stays failed. A
    crash before the send finds them like any claimed attempt: retried, possibly sent."""
    raw = json.dumps({**sms_job("c", members(2)), "channels": ["sms", "voice"]}).encode()
    job, _ = parse_job(raw, JobsConfig(), frozenset({"sms", "voice"}))
    _, rows = store.add_job(job, "c", frozenset({"sms"}), claim=True)
    sms = [r for r in rows if r.channel == "sms"]
    assert [(r.state, r.attempts) for r in sms] == [(DeliveryState.SENDING, 1)] * 2
    assert {(r.state, r.last_error) for r in rows if r.channel == "voice"} == {
        (FAILED, "channel_disabled")
    }
    assert [store.delivery(r.id) for r in sms] == sms  # what the store holds
    assert claim(store, [sms[0].id]) == [None]  # claimed already
    assert job_state(store, "c") is JobState.ACCEPTED  # running from its first outcome
    assert {d.id for d, _ in store.pending_deliveries()} == {r.id for r in sms}
    assert sent(store, [(sms[0].id, ["p1"])])[0][0].delivery.state is SENT
    assert job_state(store, "c") is JobState.RUNNING
    interrupted = store.recover_interrupted()  # killed before the other was sent
    assert [d.id for d in interrupted] == [sms[1].id]
    again = store.delivery(sms[1].id)
    assert again.state is DeliveryState.RETRYING and again.possibly_sent
    assert again.last_error == "interrupted" and again.attempts == 1
    assert claimed(claim(store, [sms[1].id])[0]).delivery.attempts == 2
