"""Member choices applied to a cold message (issue 14): quiet hours, a daily cap, STOP.

Pure functions. A hot alert is never held nor capped; an unsubscribed member gets hot alerts
unless `[directory] unsubscribed_hot = "skip"`. Quiet hours are read in `[directory] timezone`
(Europe/Brussels), a window `HH:MM-HH:MM` (or `HH:MM:SS-HH:MM:SS`) that may span midnight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .directory import Member, recipient_ref
from .domain import DeliveryState, Job, Priority, Recipient
from .rows import AddResult, Change, DeliveryRow

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .store_contract import StoreContract
    from .store_tx import Call

_WINDOW = re.compile(
    r"^(?P<a>([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?)-(?P<b>([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?)$"
)

#: A member's reply that unsubscribes them from cold messages, or subscribes them again.
STOP_WORDS = frozenset({"STOP", "ARRET", "ARRÊT", "STOPPEN"})
START_WORDS = frozenset({"START"})


def valid_window(value: str) -> bool:
    return _WINDOW.match(value) is not None


class DirectoryConfig(BaseModel):
    """`[directory]`: what members' choices mean."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quiet_hours: str | None = Field(
        "22:00-07:00", description="cold messages wait for its end; a member's own overrides it"
    )
    timezone: str = "Europe/Brussels"
    cold_daily_cap: int = Field(
        3, ge=0, description="cold messages per member per day (0: no cap); hot never capped"
    )
    unsubscribed_hot: Literal["send", "skip"] = Field(
        "send", description="a member who replied STOP still gets hot alerts (send) or not"
    )
    coordinator_sms: bool = Field(
        False, description="forward members' free replies to coordinators by SMS too"
    )

    @field_validator("quiet_hours")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None and v != "" and not valid_window(v):
            raise ValueError("HH:MM-HH:MM (or HH:MM:SS-HH:MM:SS), e.g. 22:00-07:00")
        return v or None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        ZoneInfo(v)  # raises for an unknown zone
        return v


def quiet_until(window: str | None, now: datetime, zone: ZoneInfo) -> datetime | None:
    """When the quiet hours `window` that `now` is in end; None outside them."""
    if not window or not valid_window(window):
        return None
    a, b = (time.fromisoformat(t) for t in window.split("-"))
    local = now.astimezone(zone)
    today = local.date()
    start = datetime.combine(today, a, zone)
    end = datetime.combine(today, b, zone)
    if a <= b:  # within one day
        return end if start <= local < end else None
    if local >= start:  # spans midnight: in the evening part
        return end + timedelta(days=1)
    return end if local < end else None


@dataclass(frozen=True)
class Decision:
    state: DeliveryState  # HELD, CAPPED or UNSUBSCRIBED
    reason: str  # quiet_hours, daily_cap, unsubscribed
    until: float | None = None  # HELD: when it is sent


def decide(
    member: Member,
    priority: Priority,
    config: DirectoryConfig,
    cold_today: int,
    now: datetime,
) -> Decision | None:
    """What a member's choices do to one message for them; None: send it now."""
    if member.cold_unsubscribed and (
        priority is Priority.COLD or config.unsubscribed_hot == "skip"
    ):
        return Decision(DeliveryState.UNSUBSCRIBED, "unsubscribed")
    if priority is Priority.HOT:
        return None
    if config.cold_daily_cap and cold_today >= config.cold_daily_cap:
        return Decision(DeliveryState.CAPPED, "daily_cap")
    end = quiet_until(member.quiet_hours or config.quiet_hours, now, ZoneInfo(config.timezone))
    if end is not None:
        return Decision(DeliveryState.HELD, "quiet_hours", end.timestamp())
    return None


def start_of_day(now: datetime, zone: ZoneInfo) -> float:
    """Midnight of `now`'s day in `zone`: the cap counts from there."""
    local = now.astimezone(zone)
    return datetime.combine(local.date(), time(0), zone).timestamp()


def keyword(text: str) -> Literal["stop", "start"] | None:
    word = text.strip().strip(".!").upper()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    return None


def apply_choices(
    store: StoreContract,
    job: Job,
    rows: list[DeliveryRow],
    members: Sequence[Member],
    config: DirectoryConfig,
    now: datetime,
) -> list[DeliveryRow]:
    """Hold, cap or skip the new job's deliveries as its directory members chose; the rows
    as they are then. Runs on the store's thread, in one transaction."""
    several = len({m.plp for m in members}) > 1
    by_ref = {recipient_ref(m, several): m for m in members}
    counts: dict[str, int] = {}
    if job.priority is Priority.COLD and config.cold_daily_cap:
        counts = store.cold_counts_since(start_of_day(now, ZoneInfo(config.timezone)), job.id)
    calls: list[Call] = []
    for row in rows:
        member = by_ref.get(row.ref)
        if member is None or row.state is not DeliveryState.QUEUED:
            continue
        today = max(counts.get(member.phone or "", 0), counts.get(member.email or "", 0))
        decision = decide(member, job.priority, config, today, now)
        if decision is not None:
            calls.append(
                (
                    (row.id, decision.state),
                    {"last_error": decision.reason, "next_attempt_at": decision.until},
                )
            )
    if not calls:
        return rows
    changed = {
        c.delivery.id: c.delivery
        for c in store.many(store.transition, calls)
        if isinstance(c, Change)
    }
    return [changed.get(r.id, r) for r in rows]


def add_job_choosing(
    store: StoreContract,
    job: Job,
    content_hash: str,
    enabled: frozenset[str],
    members: Sequence[Member] | None,
    config: DirectoryConfig,
    now: datetime,
    claim: bool = False,
) -> tuple[AddResult, list[DeliveryRow]]:
    """`store.add_job` and its members' choices on the new deliveries in one durable
    transaction: a crash in between must not leave an unsubscribed member's delivery queued
    (it would be sent at restart). On the store's thread (or `AsyncStore.run_now`'s loop).
    `claim` (`add_job`'s) is for a job without members' choices: their choices change
    deliveries that must not be claimed yet."""

    def work() -> tuple[AddResult, list[DeliveryRow]]:
        result, rows = store.add_job(job, content_hash, enabled, claim=claim and not members)
        if result is AddResult.NEW and rows and members:
            rows = apply_choices(store, job, rows, members, config, now)
        return result, rows

    return store.atomically(work, durable=True)


def add_members_choosing(
    store: StoreContract,
    job: Job,
    recipients: Sequence[Recipient],
    enabled: frozenset[str],
    body: str | None,
    members: Sequence[Member] | None,
    config: DirectoryConfig,
    now: datetime,
    claim: int = 0,
) -> list[DeliveryRow]:
    """`store.add_members` (a chunk of a large job) and the members' choices on it, in one
    durable transaction, as `add_job_choosing` (`claim`: `add_members`', for a job without
    members' choices)."""

    def work() -> list[DeliveryRow]:
        rows = store.add_members(job.id, recipients, enabled, body, claim=0 if members else claim)
        if rows and members:
            rows = apply_choices(store, job, rows, members, config, now)
        return rows

    return store.atomically(work, durable=True)
