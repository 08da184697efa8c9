"""The hot path's writes, set-based: a batch of claims, sends or receipts in a few statements.

Done one delivery at a time, claiming, recording a send and applying a receipt cost a dozen
SQL statements and two row objects each. Under load the scheduler hands the store hundreds
at once (`gateway.async_store.Batched`); these functions do that work with one read of the
rows, one `executemany` per table and one end-of-job check per job, inside the caller's
transaction. Results are in the callers' order and are what one call at a time would give
(`Store._apply_receipt`, the one-at-a-time receipt, still serves the rare receipts a batch
cannot merge).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from .domain import FINAL_DELIVERY_STATES, DeliveryState, JobState, can_transition
from .errors import StoreError
from .rows import STATE_OF, Change, row_to_delivery
from .store_db import Db, Row

_CHUNK = 500  # bound variables per IN (...) list, far under SQLite's limit
_CLAIMABLE = ("queued", "retrying", "held")

K = TypeVar("K")

#: One delivery's attempt handed over: (delivery id, new state, channel, provider ids, detail).
Sent = tuple[int, DeliveryState, str, Sequence[str], str | None]
#: One receipt: (channel, provider id, state, reason).
ReceiptIn = tuple[str, str, DeliveryState, str | None]
#: Finishes a job whose last open delivery just closed: (job id, now) -> its new state.
FinishJob = Callable[[str, float], JobState | None]
#: The one-at-a-time receipt logic, for the rare receipts a batch cannot merge.
ApplyOne = Callable[[str, str, DeliveryState, str | None, float], Change | None]


def _chunks(items: Sequence[K]) -> Iterable[Sequence[K]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def rows_by_id(db: Db, ids: Iterable[int]) -> dict[int, Row]:
    unique = list(dict.fromkeys(ids))
    out: dict[int, Row] = {}
    for chunk in _chunks(unique):
        for r in db.execute(
            f"SELECT * FROM deliveries WHERE id IN ({_marks(len(chunk))})",  # noqa: S608
            tuple(chunk),
        ):
            out[r["id"]] = r
    return out


def _mark_running(db: Db, job_ids: set[str], now: float) -> None:
    for job_id in job_ids:
        db.execute(
            "UPDATE jobs SET state='running', updated_at=? WHERE id=? AND state='accepted'",
            (now, job_id),
        )


def _finish_jobs(out: list[Any], last: dict[str, int], finish: FinishJob, now: float) -> None:
    """Run the end-of-job check once per job that had a delivery reach a final state, and
    put the result on that job's last change of the batch (`last`: job -> index in `out`,
    whose entry is a list starting with that change, or a (known, change) pair)."""
    for job_id, i in last.items():
        finished = finish(job_id, now)
        if finished is None:
            continue
        holder = out[i]
        if isinstance(holder, list):
            holder[0] = Change(holder[0].delivery, holder[0].old_state, finished)
        else:
            known, change = holder
            out[i] = (known, Change(change.delivery, change.old_state, finished))


def claim(
    db: Db, ids: Sequence[int], now: float, owner: str | None = None
) -> list[Change | Exception | None]:
    """queued/retrying -> sending for each id, counting the attempt; None when it is no
    longer pending (claimed already, cancelled...). With `owner` (a node's boot id, several
    nodes on one store), only deliveries that boot still holds (gateway.store_cluster)."""
    held = _still_held(db, ids, owner) if owner is not None else None
    rows = rows_by_id(db, ids)
    out: list[Change | Exception | None] = []
    taken: dict[int, None] = {}  # claimed in this batch, in order
    jobs: set[str] = set()
    for did in ids:
        r = rows.get(did)
        if r is None:
            out.append(StoreError(f"no delivery {did}"))
            continue
        if r["state"] not in _CLAIMABLE or did in taken or (held is not None and did not in held):
            out.append(None)
            continue
        taken[did] = None
        jobs.add(r["job_id"])
        row = row_to_delivery(
            r, state=DeliveryState.SENDING, attempts=r["attempts"] + 1, updated_at=now
        )
        out.append(Change(row, STATE_OF[r["state"]]))
    for chunk in _chunks(list(taken)):
        db.execute(
            "UPDATE deliveries SET state='sending', attempts=attempts+1, updated_at=?"  # noqa: S608
            f" WHERE id IN ({_marks(len(chunk))})",
            (now, *chunk),
        )
    _mark_running(db, jobs, now)
    return out


def _still_held(db: Db, ids: Sequence[int], owner: str) -> set[int]:
    """The ids `owner` holds, locked against other nodes until the commit."""
    held: set[int] = set()
    for chunk in _chunks(list(dict.fromkeys(ids))):
        lock = "" if db.name == "sqlite" else " FOR UPDATE"
        held.update(
            r["id"]
            for r in db.execute(
                f"SELECT id FROM deliveries WHERE id IN ({_marks(len(chunk))})"  # noqa: S608
                f" AND claimed_by=? AND state IN ({_marks(len(_CLAIMABLE))}){lock}",
                (*chunk, owner, *_CLAIMABLE),
            )
        )
    return held


def record_sent(
    db: Db,
    items: Sequence[Sent],
    now: float,
    finish: FinishJob,
    apply_one: ApplyOne,
) -> list[list[Change] | Exception]:
    """Record successful attempts and their provider ids; apply receipts that came early."""
    rows = rows_by_id(db, (item[0] for item in items))
    state = {did: STATE_OF[r["state"]] for did, r in rows.items()}
    out: list[list[Change] | Exception] = []
    updates: list[tuple[Any, ...]] = []
    pids: list[tuple[str, str, int]] = []
    jobs: set[str] = set()
    last: dict[str, int] = {}
    for i, (did, new, channel, provider_ids, detail) in enumerate(items):
        r = rows.get(did)
        if r is None:
            out.append(StoreError(f"no delivery {did}"))
            continue
        if not can_transition(state[did], new):
            out.append([])
            continue
        ids = tuple(provider_ids)
        updates.append((new.value, now, json.dumps(ids), detail, did))
        pids.extend((channel, pid, did) for pid in ids)
        row = row_to_delivery(
            r, state=new, updated_at=now, provider_ids=ids, detail=detail, last_error=None
        )
        out.append([Change(row, state[did])])
        state[did] = new
        jobs.add(r["job_id"])
        if new in FINAL_DELIVERY_STATES:
            last[r["job_id"]] = i
    db.executemany(
        "UPDATE deliveries SET state=?, updated_at=?, provider_ids=?, detail=?,"
        " last_error=NULL WHERE id=?",
        updates,
    )
    db.executemany(
        "INSERT INTO provider_ids(channel, provider_id, delivery_id) VALUES (?,?,?)"
        " ON CONFLICT (channel, provider_id) DO UPDATE"
        " SET delivery_id=excluded.delivery_id, state=NULL, reason=NULL",
        pids,
    )
    _mark_running(db, jobs, now)
    _finish_jobs(out, last, finish, now)
    if db.execute("SELECT 1 FROM orphan_receipts LIMIT 1").fetchone() is not None:
        _apply_early_receipts(db, items, out, now, finish, apply_one)
    return out


def _apply_early_receipts(
    db: Db,
    items: Sequence[Sent],
    out: list[list[Change] | Exception],
    now: float,
    finish: FinishJob,
    apply_one: ApplyOne,
) -> None:
    """Receipts that arrived before their submit's response (kept as orphans) now apply;
    their changes follow the `sent` change of their delivery."""
    by_channel: dict[str, list[str]] = {}
    item_of: dict[int, int] = {}
    for i, ((did, new, channel, provider_ids, _), result) in enumerate(
        zip(items, out, strict=True)
    ):
        if new is DeliveryState.SENT and isinstance(result, list) and result:
            by_channel.setdefault(channel, []).extend(provider_ids)
            item_of[did] = i
    early: list[ReceiptIn] = []
    for channel, pids in by_channel.items():
        for chunk in _chunks(pids):
            early.extend(
                (channel, o["provider_id"], DeliveryState(o["state"]), o["reason"])
                for o in db.execute(
                    "SELECT provider_id, state, reason FROM orphan_receipts"  # noqa: S608
                    f" WHERE channel=? AND provider_id IN ({_marks(len(chunk))})",
                    (channel, *chunk),
                )
            )
    if not early:
        return
    db.executemany(
        "DELETE FROM orphan_receipts WHERE channel=? AND provider_id=?",
        [(channel, pid) for channel, pid, _, _ in early],
    )
    for _, change in apply_receipts(db, early, now, finish, apply_one):
        if change is not None:
            result = out[item_of[change.delivery.id]]
            assert isinstance(result, list)
            result.append(change)


def apply_receipts(
    db: Db,
    receipts: Sequence[ReceiptIn],
    now: float,
    finish: FinishJob,
    apply_one: ApplyOne,
) -> list[tuple[bool, Change | None]]:
    """(known, change) per receipt. An unknown provider id is kept as an orphan receipt
    (its submit's response may still be on its way). A delivery whose receipts all arrive in
    this batch, one each, is settled here in bulk; one with several receipts in the batch
    (parts of a long SMS, a repeated receipt) takes them one at a time, in order."""
    owner: dict[tuple[str, str], int] = {}
    by_channel: dict[str, list[str]] = {}
    for channel, pid, _, _ in receipts:
        by_channel.setdefault(channel, []).append(pid)
    for channel, pids in by_channel.items():
        for chunk in _chunks(list(dict.fromkeys(pids))):
            for r in db.execute(
                "SELECT provider_id, delivery_id FROM provider_ids"  # noqa: S608
                f" WHERE channel=? AND provider_id IN ({_marks(len(chunk))})",
                (channel, *chunk),
            ):
                owner[(channel, r["provider_id"])] = r["delivery_id"]
    seen: dict[int, int] = {}
    for channel, pid, _, _ in receipts:
        did = owner.get((channel, pid))
        if did is not None:
            seen[did] = seen.get(did, 0) + 1
    out: list[tuple[bool, Change | None]] = [(False, None)] * len(receipts)
    orphans: list[tuple[Any, ...]] = []
    bulk: list[tuple[int, ReceiptIn]] = []
    single: list[tuple[int, ReceiptIn]] = []
    for i, receipt in enumerate(receipts):
        channel, pid, state, reason = receipt
        did = owner.get((channel, pid))
        if did is None:
            orphans.append((channel, pid, state.value, reason, now))
        elif seen[did] == 1:
            bulk.append((i, receipt))
        else:
            single.append((i, receipt))
    db.executemany(
        "INSERT INTO orphan_receipts VALUES (?,?,?,?,?) ON CONFLICT (channel, provider_id)"
        " DO UPDATE SET state=excluded.state, reason=excluded.reason,"
        " received_at=excluded.received_at",
        orphans,
    )
    _settle(db, bulk, owner, out, now)
    for i, (channel, pid, state, reason) in single:
        out[i] = (True, apply_one(channel, pid, state, reason, now))
    last: dict[str, int] = {}  # job -> its last change to a final state, in receipt order
    for i, (_, change) in enumerate(out):
        if change is not None and change.delivery.state in FINAL_DELIVERY_STATES:
            last[change.delivery.job_id] = i
    _finish_jobs(out, last, finish, now)
    return out


def _settle(
    db: Db,
    bulk: Sequence[tuple[int, ReceiptIn]],
    owner: dict[tuple[str, str], int],
    out: list[tuple[bool, Change | None]],
    now: float,
) -> None:
    """Apply receipts of distinct deliveries (one receipt each in this batch)."""
    db.executemany(
        "UPDATE provider_ids SET state=?, reason=? WHERE channel=? AND provider_id=?",
        [(state.value, reason, channel, pid) for _, (channel, pid, state, reason) in bulk],
    )
    dids = [owner[(channel, pid)] for _, (channel, pid, _, _) in bulk]
    parts: dict[int, list[tuple[str | None, str | None]]] = {}
    for chunk in _chunks(dids):
        for p in db.execute(
            "SELECT delivery_id, state, reason FROM provider_ids"  # noqa: S608
            f" WHERE delivery_id IN ({_marks(len(chunk))})",
            tuple(chunk),
        ):
            parts.setdefault(p["delivery_id"], []).append((p["state"], p["reason"]))
    rows = rows_by_id(db, dids)
    updates: list[tuple[Any, ...]] = []
    for (i, _), did in zip(bulk, dids, strict=True):
        r = rows[did]
        new, reason = settled_state(parts.get(did, []))
        old = STATE_OF[r["state"]]
        if new is None or not can_transition(old, new):
            out[i] = (True, None)
            continue
        error = reason if new is DeliveryState.FAILED else None
        updates.append((new.value, now, error, did))
        row = row_to_delivery(r, state=new, updated_at=now, last_error=error)
        out[i] = (True, Change(row, old))
    db.executemany("UPDATE deliveries SET state=?, updated_at=?, last_error=? WHERE id=?", updates)


def settled_state(
    parts: Sequence[tuple[str | None, str | None]],
) -> tuple[DeliveryState | None, str | None]:
    """A delivery's state from its parts' receipts (state, reason): failed if one failed,
    acknowledged if one was, delivered once all are; None while a part owes its receipt."""
    states = [state for state, _ in parts]
    if "failed" in states:
        return DeliveryState.FAILED, next(reason for state, reason in parts if state == "failed")
    if "acknowledged" in states:
        return DeliveryState.ACKNOWLEDGED, None
    if parts and all(state == "delivered" for state in states):
        return DeliveryState.DELIVERED, None
    return None, None
