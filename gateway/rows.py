"""The store's records: what a row of `jobs` / `deliveries` is in Python, and back.

`DeliveryRow` and `JobRow` are read-only snapshots handed to the scheduler and the status
publisher; `Change` is one delivery's transition as the store committed it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from .domain import DeliveryState, Job, JobState, Priority, Recipient
from .numbers import NUMBER_NOT_ALLOWED
from .store_db import Row


class AddResult(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"  # same id, same content: dispatch re-sent it
    CONFLICT = "conflict"  # same id, other content: rejected, the first stands


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    job_id: str
    rindex: int
    ref: str
    channel: str
    address: str | None
    masked: str
    lang: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    detail: str | None
    provider_ids: tuple[str, ...]
    possibly_sent: bool
    updated_at: float


@dataclass(frozen=True)
class JobRow:
    id: str
    priority: Priority
    state: JobState
    created_at: float
    updated_at: float
    expires_at: float
    finished_at: float | None
    reason: str | None


@dataclass(frozen=True)
class Change:
    """A delivery that changed state, and whether its job finished with it."""

    delivery: DeliveryRow
    old_state: DeliveryState
    job_finished: JobState | None = None


#: A stored state's member by its value: a dict lookup, not `DeliveryState(value)`'s
#: enum machinery (the hot path reads a few per SMS).
STATE_OF: dict[str, DeliveryState] = {s.value: s for s in DeliveryState}
_NO_IDS: tuple[str, ...] = ()


def row_to_delivery(r: Row, **changes: Any) -> DeliveryRow:
    """The row as a record; `changes` (field -> value) replace what the row says, for a row
    read just before an UPDATE that set them.

    Three per SMS (claim, send, receipt) on the store's thread, which shares the GIL with the
    event loop: the fields are given by position, the state looked up in a dict, and the
    usual empty list of provider ids not parsed."""
    c = changes
    state = c["state"] if "state" in c else STATE_OF[r["state"]]
    if "provider_ids" in c:
        provider_ids = c["provider_ids"]
    else:
        stored = r["provider_ids"]
        provider_ids = _NO_IDS if stored == "[]" else tuple(json.loads(stored))
    return DeliveryRow(
        c.get("id", r["id"]),
        c.get("job_id", r["job_id"]),
        c.get("rindex", r["rindex"]),
        c.get("ref", r["ref"]),
        c.get("channel", r["channel"]),
        c.get("address", r["address"]),
        c.get("masked", r["masked"]),
        c.get("lang", r["lang"]),
        state,
        c.get("attempts", r["attempts"]),
        c.get("next_attempt_at", r["next_attempt_at"]),
        c.get("last_error", r["last_error"]),
        c.get("detail", r["detail"]),
        provider_ids,
        c["possibly_sent"] if "possibly_sent" in c else bool(r["possibly_sent"]),
        c.get("updated_at", r["updated_at"]),
    )


_PLAIN_FIELDS = frozenset({"attempts", "next_attempt_at", "last_error", "detail"})


def updated_row(
    d: DeliveryRow, state: DeliveryState, now: float, fields: dict[str, Any]
) -> DeliveryRow | None:
    """The row as `UPDATE ... SET state, updated_at, **fields` left it, without reading it
    (None for a field it does not know: the caller reads the row then)."""
    changes: dict[str, Any] = {"state": state, "updated_at": now}
    for key, value in fields.items():
        if key in _PLAIN_FIELDS:
            changes[key] = value
        elif key == "provider_ids":
            changes[key] = tuple(json.loads(value))
        elif key == "possibly_sent":
            changes[key] = bool(value)
        else:
            return None
    return dataclasses.replace(d, **changes)


def row_to_job(r: Row) -> JobRow:
    return JobRow(
        id=r["id"],
        priority=Priority(r["priority"]),
        state=JobState(r["state"]),
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        expires_at=r["expires_at"],
        finished_at=r["finished_at"],
        reason=r["reason"],
    )


def job_to_body(job: Job, members: list[str] | None = None) -> str:
    """The job's stored body; `members` (each `member_json`, or several of them joined by
    commas) instead of job.recipients: a large job keeps its members' bodies as they come, as
    text (a third of the memory)."""
    body = json.dumps(
        {
            "message": job.message,
            "subject": job.subject,
            "channels": list(job.channels),
            "options": job.options,
            "fallback": job.fallback,
            "recipients": [] if members is not None else [_member(r) for r in job.recipients],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    if members is None:
        return body
    assert body.endswith('"recipients":[]}')  # the last member, as written above
    return body[:-2] + ",".join(members) + "]}"


def member_json(r: Recipient) -> str:
    """A member as it is in the job's body (`job_to_body`)."""
    return json.dumps(_member(r), ensure_ascii=False, separators=(",", ":"))


def _member(r: Recipient) -> list[Any]:
    return [r.ref, r.lang, list(r.channels), r.phone, r.email, r.phone_error, r.email_error] + (
        [sorted(r.phone_refused)] if r.phone_refused else []
    )


def job_from_row(r: Row) -> Job:
    # A recipient is 7 fields, and an 8th (the refused phone channels) only when there are any.
    body = json.loads(r["body"])
    return Job(
        id=r["id"],
        priority=Priority(r["priority"]),
        test=bool(r["test"]),
        message=body["message"],
        subject=body["subject"],
        channels=tuple(body["channels"]),
        recipients=tuple(
            Recipient(i, ref, lang, tuple(chs), phone, email, pe, ee, frozenset(*refused))
            for i, (ref, lang, chs, phone, email, pe, ee, *refused) in enumerate(body["recipients"])
        ),
        expires_at=datetime.fromtimestamp(r["expires_at"], UTC),
        options=body["options"],
        fallback=body["fallback"],
    )


def address_for(recipient: Recipient, channel: str) -> tuple[str | None, str | None]:
    """(address, reason it cannot be used) of a recipient on a channel."""
    if channel == "email":
        if recipient.email is None:
            return None, recipient.email_error or "missing_email"
        return recipient.email, None
    if recipient.phone is None:
        return None, recipient.phone_error or "missing_phone"
    if channel in recipient.phone_refused:
        return None, NUMBER_NOT_ALLOWED
    return recipient.phone, None
