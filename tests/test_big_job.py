"""A large job is stored in chunks, each sent once stored, and complete after its last chunk:
a redelivery after a crash mid-intake resumes it, no member lost or doubled (both engines).
A large audience job (the PLP directory) goes the same way, its members' choices applied to
each chunk, and resumes from the members frozen with it even when the directory changed in
between. The daemon killed mid-intake: tests/test_restart_recovery.py."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import frozen
from gateway.config import JobsConfig
from gateway.directory import MEMBER_GONE, Audience, Member, Plp
from gateway.domain import DeliveryState, JobState, Recipient
from gateway.frozen import Begun
from gateway.jobs import (
    JobIn,
    JobRejected,
    Resolved,
    content_hash,
    job_header,
    member_count,
    members,
    parse_job,
    validate_and_hash,
    validate_job,
)
from gateway.privacy import erased_ref
from gateway.rows import AddResult, job_to_body, member_json
from gateway.store import SqliteStore, SqlStore
from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer, email_job
from tests.fixtures import members as people
from tests.sms_fixtures import sms_job

EMAIL = frozenset({"email"})
SMS = frozenset({"sms"})


def audience_job(job_id: str, **extra: Any) -> dict[str, Any]:
    """An e-mail job to members the store gives (an audience, a follow-up's)."""
    job = email_job(job_id, [], **extra)
    del job["recipients"]
    return job


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


def test_a_chunks_first_members_can_be_stored_claimed(any_store: SqlStore) -> None:
    # A hot job's first chunk, stored with its header (gateway.intake): its first attempts
    # claimed as a small hot job's are, the others queued; a failed address is never claimed.
    store = any_store
    recipients = people(5)
    recipients[1]["phone"] = "not a number"
    payload = json.dumps(sms_job("first", recipients)).encode()
    spec = validate_job(payload, JobsConfig(), SMS)
    header = job_header(spec, JobsConfig(), datetime.now(UTC))
    store.begin_job(header, content_hash(payload))
    rows = store.add_members("first", members(spec, 0, 5, "BE", {}), SMS, claim=3)
    assert [(r.state, r.attempts) for r in rows] == [
        (DeliveryState.SENDING, 1),
        (DeliveryState.FAILED, 0),
        (DeliveryState.SENDING, 1),
        (DeliveryState.QUEUED, 0),
        (DeliveryState.QUEUED, 0),
    ]


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


def test_an_audience_jobs_members_chunk_by_chunk_are_its_members_whole() -> None:
    # Two PLPs (refs `<plp>:<ref>`), recipients given inline first, then the directory's.
    found = Audience(
        members=tuple(
            Member(plp, f"{plp}-{i}", "nl", email=f"{plp}{i}@example.be")
            for plp in ("a", "b")
            for i in range(5)
        ),
        plps={"a": Plp("a"), "b": Plp("b")},
    )
    job = email_job("mixed", people(3), audience={"plps": ["a", "b"]})
    payload = json.dumps(job).encode()
    resolved = Resolved(audience=found)
    whole, spec = parse_job(payload, JobsConfig(), EMAIL, resolved=resolved)
    assert member_count(spec, resolved) == len(whole.recipients) == 13
    chunks = [members(spec, a, a + 4, "BE", {}, resolved) for a in range(0, 13, 4)]
    assert [r for chunk in chunks for r in chunk] == list(whole.recipients)
    assert whole.recipients[3].ref == "a:a-0" and whole.recipients[3].index == 3
    header = job_header(spec, JobsConfig(), datetime.now(UTC), resolved)
    assert header.options == whole.options and header.options["audience"]


def test_an_audience_jobs_intake_resumes_from_its_frozen_members_after_a_directory_change(
    any_store: SqlStore,
) -> None:
    store = any_store
    store.import_members(
        "p", [Member("p", f"p-{i:03d}", "fr", email=f"p{i}@example.be") for i in range(30)]
    )
    payload = json.dumps(audience_job("aud", audience={"plps": ["p"]})).encode()
    frozen_refs = [f"p-{i:03d}" for i in range(30)]

    def accept() -> tuple[JobIn, Begun]:
        """What the intake does with the job, at its first delivery and at a redelivery:
        resolve the audience, validate, store the header with the members frozen."""
        resolved = Resolved(audience=store.resolve_audience(["p"]))
        spec = validate_job(payload, JobsConfig(), EMAIL, resolved=resolved)
        header = job_header(spec, JobsConfig(), datetime.now(UTC), resolved)
        return spec, frozen.begin_job(store, header, content_hash(payload), spec, resolved)

    spec, begun = accept()
    assert (begun.result, begun.stored) == (AddResult.NEW, 0)
    first = store.add_members("aud", members(spec, 0, 10, "BE", {}, begun.resolved), EMAIL)
    assert [r.ref for r in first] == frozen_refs[:10]

    # The daemon dies here. Before the redelivery the directory changes: members that sort
    # first are added (a resolution now would shift every position), a member already
    # stored and one not yet stored are erased, one changes address.
    store.import_members("p", [Member("p", f"p-00{c}", "fr", email=f"{c}@x.be") for c in "ab"])
    store.remove_member("p-003")
    store.remove_member("p-020")
    store.import_members("p", [Member("p", "p-015", "fr", email="new15@example.be")])

    spec, begun = accept()
    assert (begun.result, begun.stored) == (AddResult.NEW, 10)
    total = member_count(spec, begun.resolved)
    assert total == 30, "the frozen members, not the directory's 31"
    whole = members(spec, 0, total, "BE", {}, begun.resolved)
    body = job_to_body(begun.header, [member_json(r) for r in whole])
    second = store.add_members("aud", whole[10:], EMAIL, body)
    assert [r.rindex for r in second] == list(range(10, 30))
    again = frozen.begin_job(store, begun.header, content_hash(payload), spec, begun.resolved)
    assert again.result is AddResult.DUPLICATE
    assert store.frozen_members("aud") is None  # complete: the body holds them

    stored = store.deliveries("aud")
    assert sorted(d.rindex for d in stored) == list(range(30)), "none lost, none doubled"
    by_ref = {d.ref: d for d in stored}
    # The erased: p-003 stored before (pseudonymised by the erasure), p-020 after (failed).
    erased = {erased_ref("p:p-003"), erased_ref("p:p-020")}
    assert set(by_ref) == set(frozen_refs) - {"p-003", "p-020"} | erased
    assert by_ref[erased_ref("p:p-003")].rindex == 3
    gone = by_ref[erased_ref("p:p-020")]
    assert (gone.state, gone.last_error, gone.address) == (DeliveryState.FAILED, MEMBER_GONE, None)
    assert by_ref["p-015"].address == "new15@example.be"
    assert not {"p-00a", "p-00b"} & set(by_ref), "a member added after the acceptance is not in"
    job = store.job("aud")
    assert job is not None and len(job.recipients) == 30


def test_a_follow_ups_resumed_members_are_its_frozen_ones(any_store: SqlStore) -> None:
    reached = [Recipient(i, f"r{i}", "nl", ("email",), None, f"r{i}@b.be") for i in range(4)]
    first = Resolved(followed=tuple(reached[:3]))
    payload = json.dumps(audience_job("later", follows="first")).encode()
    spec = validate_job(payload, JobsConfig(), EMAIL, resolved=first)
    keys = frozen.keys_of(spec, first)
    assert keys is not None
    # At the redelivery the earlier job has reached one more member, and r1 was erased (its
    # ref pseudonymised): the follow-up goes on with its frozen three, r1 failed.
    now = Resolved(followed=(reached[0], reached[2], reached[3]))
    thawed = frozen.thaw(any_store, json.loads(keys), spec, now)
    out = members(spec, 0, 3, "BE", {}, thawed)
    assert [(r.index, r.ref, r.email) for r in out] == [
        (0, "r0", "r0@b.be"),
        (1, erased_ref("r1"), None),
        (2, "r2", "r2@b.be"),
    ]
    assert out[1].email_error == MEMBER_GONE


async def test_a_large_audience_job_is_stored_in_chunks_with_its_members_choices(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer, tmp_path: Path
) -> None:
    # Per PLP: 1,050 members, 2,100 in all: more than a chunk, stored in chunks (its members
    # frozen with the header), each chunk's members' choices applied.
    n = 1_050
    plps = [f"p{k}" for k in range(2)]
    directory = [
        Member(plp, f"{plp}-{i:04d}", "fr", email=f"{plp}-{i}@example.be")
        for plp in plps
        for i in range(n)
    ]
    store = SqliteStore(tmp_path / "gateway.sqlite3")
    try:
        for plp in plps:
            store.import_members(plp, [m for m in directory if m.plp == plp], plp=Plp(plp))
        # The last member of all (in the last chunk) replied STOP.
        store.set_cold_unsubscribed(plps[-1], directory[-1].ref, True)
    finally:
        store.close()
    proc = gateway('[directory]\nquiet_hours = ""\ncold_daily_cap = 0\n')
    job = email_job("town", [], priority="cold", audience={"plps": plps})
    del job["recipients"]
    await observer.publish_job(job)
    proc.wait_log("job town accepted", timeout=120)
    assert "job town: members 0 to 49 stored" in proc.log()  # chunks, the first one small
    await observer.wait_job("town", "done", timeout=120)
    final = {e["ref"]: e["state"] for e in observer.events("town")}
    stop = f"{plps[-1]}:{directory[-1].ref}"
    assert len(final) == 2 * n and final.pop(stop) == "unsubscribed"
    assert set(final.values()) == {"delivered"}
    received = Counter(m.rcpts[0] for m in smtp.mailbox)
    assert len(received) == 2 * n - 1 and set(received.values()) == {1}
    assert directory[-1].email not in received


def test_a_large_jobs_content_hash_is_the_canonical_jsons_written_in_slices() -> None:
    """The hash of a large job is written a slice of members at a time: the same digest as
    the canonical JSON whole (jobs stored before keep their duplicate-or-conflict verdict)."""
    for n in (1, 256, 257, 3001):
        crowd: list[object] = list(people(n))
        for i in range(0, n, 7):
            crowd[i] = {**people(1)[0], "ref": f"r{i}", "name": 'Zoë "q" \\ \u202e 😀'}
        if n > 3:
            crowd[2], crowd[3] = "not an object", [1, {"b": 2, "a": [None, 1.5, True]}]
        job = {**email_job("h", []), "recipients": crowd, "zzz": {"y": 1}, "a": "é"}
        canonical = json.dumps(job, sort_keys=True, separators=(",", ":")).encode()
        assert content_hash(json.dumps(job).encode()) == hashlib.sha256(canonical).hexdigest()


def test_a_valid_large_jobs_hash_written_while_validated_is_its_content_hash() -> None:
    """A valid large job's members go into the hash as each slice validates, by orjson where
    it writes what `json` writes: the digest stored is the canonical JSON's all the same,
    with printable ASCII, escapes, DEL, non-ASCII text, nulls and members' own channels."""
    printable = ['q"\\/', "tab\there", "ctl\x01", "sl/ash{[:,]}"]  # orjson's slices
    other = ["\x7f", "Zoë 😀", "\u2028"]  # `json`'s: in the first slice only
    for n in (257, 3001):
        crowd: list[dict[str, Any]] = people(n)
        for i in range(0, n, 5):
            text = other[i % len(other)] if i < 256 else printable[i % len(printable)]
            crowd[i] = {"email": f"{text}@x.be", "lang": None, "ref": f"r{i}"}
        for i in range(1, n, 11):
            crowd[i] = {"channels": ["email"], "email": "a@b.be", "phone": None}
        job = email_job("v", crowd, ttl=90.5, test=True, subject={"fr": "é"})
        for payload in (json.dumps(job).encode(), json.dumps(job, sort_keys=True).encode()):
            _, digest = validate_and_hash(payload, JobsConfig(), EMAIL, datetime.now(UTC))
            canonical = json.dumps(job, sort_keys=True, separators=(",", ":")).encode()
            assert digest == hashlib.sha256(canonical).hexdigest() == content_hash(payload)


def test_a_job_nested_too_deep_is_named_so_wherever_the_depth_is() -> None:
    """A job is parsed without the bound on depth first (a valid job nests 4 levels): one
    that fails is read again with it, so nesting still comes first among its errors."""
    for levels in (33, 500, 5000):
        nested = "[" * levels + "]" * levels
        for where in (f'"x": {nested}', f'"recipients": [{{"channels": {nested}}}]'):
            payload = f'{{"id": "deep-1", {where}}}'.encode()
            try:
                validate_and_hash(payload, JobsConfig(), EMAIL, datetime.now(UTC))
            except JobRejected as rej:
                assert [(e.path, e.code) for e in rej.errors] == [("$", "too_deep")]
            else:
                raise AssertionError("accepted")


def test_a_large_jobs_bad_members_are_named_as_before() -> None:
    """The usual job's member checks run without a loop per member; one that finds a problem
    hands over to the loop that names it, wherever it is."""
    crowd = people(3000)
    crowd[2500]["ref"] = crowd[10]["ref"]
    crowd[2700]["channels"] = ["email", "email"]
    try:
        validate_job(json.dumps(email_job("dup", crowd)).encode(), JobsConfig(), EMAIL)
    except JobRejected as rej:
        assert [(e.path, e.code) for e in rej.errors] == [
            ("$.recipients[2500].ref", "duplicate_ref"),
            ("$.recipients[2700].channels", "duplicate_channel"),
        ]
    else:
        raise AssertionError("accepted")
    crowd = people(3000)
    crowd[2999] = {"ref": "x", **{f"k{i}": 1 for i in range(65)}}
    try:
        validate_job(json.dumps(email_job("wide", crowd)).encode(), JobsConfig(), EMAIL)
    except JobRejected as rej:
        assert [(e.path, e.code) for e in rej.errors] == [("$.recipients[2999]", "too_many_items")]
    else:
        raise AssertionError("accepted")
