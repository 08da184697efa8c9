"""The PLP directory in the store, on both engines: import (merge, replace, all or nothing),
an audience resolved, and a member's erasure that leaves nothing in the store files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import JobsConfig
from gateway.directory_import import read_file
from gateway.jobs import content_hash, parse_job
from gateway.store import SqlStore
from gateway.store_db import PostgresDb
from tests.directory_fixtures import BAD_ROWS, email, member_csv, phone
from tests.pg_fixtures import StoreFactory

ALL = frozenset({"sms", "voice", "email"})


def test_a_500_row_csv_with_10_bad_rows_then_a_replace(any_store: SqlStore) -> None:
    parsed = read_file(member_csv(), "zone5344-tilleuls", "members.csv")
    assert {(p.line, p.reason) for p in parsed.problems} == {
        (line, reason) for line, (_, reason) in BAD_ROWS.items()
    }
    assert len(parsed.members) == 490
    result = any_store.import_members("zone5344-tilleuls", parsed.members)
    assert (result.added, result.updated, result.removed) == (490, 0, 0)
    assert len(any_store.members("zone5344-tilleuls")) == 490
    member = any_store.find_members(ref="m-0000")[0]
    assert member.phone == phone(0) and member.email == email(0) and member.no_voice
    assert member.groups == ("farmers", "shopkeepers") and member.phone_kind == "BE/mobile"

    # The same list without members 20..29, as the whole list: they are removed.
    again = read_file(member_csv(bad=False, skip=frozenset(range(20, 30))), "zone5344-tilleuls")
    assert not again.problems
    result = any_store.import_members("zone5344-tilleuls", again.members, replace=True)
    assert result.removed == 10 + 0 and result.added == 10  # the 10 once bad are now good
    refs = {m.ref for m in any_store.members("zone5344-tilleuls")}
    assert len(refs) == 490 and "m-0020" not in refs and "m-0010" in refs


def test_an_audience_by_plp_and_group_and_what_it_does_not_know(any_store: SqlStore) -> None:
    parsed = read_file(member_csv(40, bad=False), "plp-a")
    any_store.import_members("plp-a", parsed.members)
    audience = any_store.resolve_audience(["plp-a"], ["farmers"])
    assert [m.ref for m in audience.members] == [f"m-{i:04d}" for i in range(0, 40, 5)]
    assert "plp-a" in audience.plps
    assert any_store.resolve_audience(["plp-a", "nope"]).unknown_plps == (1,)
    assert any_store.resolve_audience(["plp-a"], ["farmers", "bikers"]).unknown_groups == (1,)
    assert len(any_store.resolve_audience(["plp-a"]).members) == 40


def test_remove_member_leaves_neither_number_nor_address(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    store = store_factory()
    parsed = read_file(member_csv(5, bad=False), "plp-a")
    store.import_members("plp-a", parsed.members)
    payload = json.dumps(
        {
            "id": "job-1",
            "priority": "hot",
            "message": {"fr": "Alerte"},
            "channels": ["sms", "email"],
            "recipients": [
                {"ref": f"m-{i:04d}", "phone": phone(i), "email": email(i)} for i in range(5)
            ],
        }
    ).encode()
    job, _ = parse_job(payload, JobsConfig(), ALL)
    store.add_job(job, content_hash(payload), ALL)

    assert store.remove_member("m-0003") == 1
    assert store.find_members(ref="m-0003") == []
    gone = (phone(3).encode(), email(3).encode(), phone(3)[1:].encode())
    kept = phone(2).encode()
    if store.backend == "sqlite":
        files = [p for p in tmp_path.iterdir() if p.name.startswith("gw.sqlite3")]
        data = b"".join(p.read_bytes() for p in files)
    else:
        assert isinstance(store._db, PostgresDb)
        db = store._db
        tables = [
            r["table_name"]
            for r in db.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            ).fetchall()
        ]
        data = b"".join(
            repr(db.execute(f"SELECT * FROM {t}").fetchall()).encode()  # noqa: S608
            for t in tables
        )
    assert kept in data  # the scan sees the others
    assert not [g for g in gone if g in data]
    rows = [d for d in store.deliveries("job-1") if d.rindex == 3]
    assert rows and all(d.address is None and d.ref.startswith("erased-") for d in rows)
    stored = store.job("job-1")
    assert stored is not None and stored.recipients[3].phone is None


def test_member_choices_in_the_store(any_store: SqlStore) -> None:
    """STOP kept per member, members found by number, the cold messages a number got today."""
    store = any_store
    store.import_members("plp-a", read_file(member_csv(3, bad=False), "plp-a").members)
    assert store.set_cold_unsubscribed("plp-a", "m-0001", True)
    assert not store.set_cold_unsubscribed("plp-a", "nobody", True)
    [found] = store.find_members(phone=phone(1))
    assert found.ref == "m-0001" and found.cold_unsubscribed
    for job_id, priority in (("c1", "cold"), ("c2", "cold"), ("h1", "hot")):
        payload = json.dumps(
            {
                "id": job_id,
                "priority": priority,
                "message": {"fr": "Info"},
                "channels": ["sms"],
                "recipients": [{"ref": "m-0000", "phone": phone(0)}],
            }
        ).encode()
        job, _ = parse_job(payload, JobsConfig(), ALL)
        store.add_job(job, content_hash(payload), ALL)
    assert store.cold_counts_since(0.0, "c2") == {phone(0): 1}  # hot and c2 itself not counted
    assert store.cold_counts_since(0.0, "other") == {phone(0): 2}


def test_a_job_and_its_members_choices_commit_together(
    any_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unsubscribed member's cold delivery is stored `unsubscribed`, never `queued` first:
    were the process killed between the two, the restart would send it."""
    from datetime import UTC, datetime

    from gateway import choices
    from gateway.choices import DirectoryConfig, add_job_choosing
    from gateway.domain import DeliveryState

    store = any_store
    members = read_file(member_csv(3, bad=False), "plp-a").members
    store.import_members("plp-a", members)
    assert store.set_cold_unsubscribed("plp-a", "m-0001", True)
    chosen = store.find_members(phone=phone(1))

    def cold(job_id: str) -> tuple[Any, str]:
        payload = json.dumps(
            {
                "id": job_id,
                "priority": "cold",
                "message": {"fr": "Info"},
                "channels": ["sms"],
                "recipients": [{"ref": "m-0001", "phone": phone(1)}],
            }
        ).encode()
        job, _ = parse_job(payload, JobsConfig(), ALL)
        return job, content_hash(payload)

    config = DirectoryConfig(quiet_hours="")
    job, digest = cold("c-atomic")
    now = datetime.now(UTC)
    _, rows = add_job_choosing(store, job, digest, ALL, chosen, config, now)
    assert [r.state for r in rows] == [DeliveryState.UNSUBSCRIBED]
    assert [r.state for r in store.deliveries("c-atomic")] == [DeliveryState.UNSUBSCRIBED]

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("killed between the job and the choices")

    monkeypatch.setattr(choices, "apply_choices", crash)
    job, digest = cold("c-crash")
    with pytest.raises(RuntimeError):
        add_job_choosing(store, job, digest, ALL, chosen, config, now)
    assert store.job_row("c-crash") is None and store.deliveries("c-crash") == []
