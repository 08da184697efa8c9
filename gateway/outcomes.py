"""Per-member outcomes of a job: who was reached, on which channel and when, who confirmed.

Pure functions over delivery records (the store's rows, or the events `send` follows): the
one place that says what "reached" means, for the report, the status page, `send`'s table,
the demo's summary and the `members` counts of the retained job status.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .domain import DeliveryState
from .rows import DeliveryRow

# A member counts as reached once one channel says the message arrived (SMTP accepted it,
# the SMSC's receipt said DELIVRD, the call was answered and played) or they confirmed it.
REACHING = frozenset({DeliveryState.DELIVERED, DeliveryState.ACKNOWLEDGED})


class MemberStatus(enum.StrEnum):
    PENDING = "pending"  # a channel is still working on it
    REACHED = "reached"
    ACKNOWLEDGED = "acknowledged"  # reached, and the member confirmed (pressed 1, replied)
    NOT_REACHED = "not_reached"  # every channel has ended, none reached the member


@dataclass(frozen=True)
class Delivery:
    """One member on one channel, as far as a person needs to know it (masked address)."""

    ref: str
    channel: str
    address: str
    state: DeliveryState
    attempts: int = 0
    reason: str | None = None
    time: float | None = None  # when it last changed (epoch seconds)
    detail: str | None = None

    @classmethod
    def from_row(cls, row: DeliveryRow) -> Delivery:
        return cls(
            ref=row.ref,
            channel=row.channel,
            address=row.masked,
            state=row.state,
            attempts=row.attempts,
            reason=row.last_error,
            time=row.updated_at,
            detail=row.detail,
        )

    @classmethod
    def from_event(cls, event: dict[str, Any], time: float | None = None) -> Delivery:
        """From a delivery event on MQTT (`plp/jobs/<id>/deliveries`)."""
        return cls(
            ref=str(event.get("ref", "?")),
            channel=str(event.get("channel", "?")),
            address=str(event.get("address", "")),
            state=DeliveryState(event["state"]),
            attempts=int(event.get("attempt", 0)),
            reason=event.get("reason"),
            time=time,
            detail=event.get("detail"),
        )


@dataclass(frozen=True)
class MemberOutcome:
    ref: str
    status: MemberStatus
    deliveries: tuple[Delivery, ...]
    reached_by: Delivery | None  # the first channel that reached the member
    acknowledged_by: Delivery | None


@dataclass(frozen=True)
class MemberCounts:
    total: int = 0
    reached: int = 0  # acknowledged members included
    acknowledged: int = 0
    not_reached: int = 0
    pending: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "reached": self.reached,
            "acknowledged": self.acknowledged,
            "not_reached": self.not_reached,
            "pending": self.pending,
        }


def member_status(states: Iterable[DeliveryState]) -> MemberStatus:
    states = list(states)
    if DeliveryState.ACKNOWLEDGED in states:
        return MemberStatus.ACKNOWLEDGED
    if any(s in REACHING for s in states):
        return MemberStatus.REACHED
    if states and all(s.final for s in states):
        return MemberStatus.NOT_REACHED
    return MemberStatus.PENDING


def count_state_sets(sets: Iterable[tuple[Iterable[DeliveryState], int]]) -> MemberCounts:
    """Counts from (a member's delivery states, how many members have them) pairs, as
    `Store.member_state_sets` groups them."""
    return _counts((member_status(states), n) for states, n in sets)


def _counts(statuses: Iterable[MemberStatus | tuple[MemberStatus, int]]) -> MemberCounts:
    n = dict.fromkeys(MemberStatus, 0)
    total = 0
    for item in statuses:
        status, k = item if isinstance(item, tuple) else (item, 1)
        n[status] += k
        total += k
    return MemberCounts(
        total=total,
        reached=n[MemberStatus.REACHED] + n[MemberStatus.ACKNOWLEDGED],
        acknowledged=n[MemberStatus.ACKNOWLEDGED],
        not_reached=n[MemberStatus.NOT_REACHED],
        pending=n[MemberStatus.PENDING],
    )


def members(deliveries: Iterable[Delivery]) -> list[MemberOutcome]:
    """Each member's outcome, in the order members first appear."""
    grouped: dict[str, list[Delivery]] = {}
    for d in deliveries:
        grouped.setdefault(d.ref, []).append(d)
    out = []
    for ref, ds in grouped.items():
        reaching = sorted((d for d in ds if d.state in REACHING), key=_when)
        acked = sorted((d for d in ds if d.state is DeliveryState.ACKNOWLEDGED), key=_when)
        out.append(
            MemberOutcome(
                ref=ref,
                status=member_status(d.state for d in ds),
                deliveries=tuple(ds),
                reached_by=reaching[0] if reaching else None,
                acknowledged_by=acked[0] if acked else None,
            )
        )
    return out


def member_counts(outcomes: Iterable[MemberOutcome]) -> MemberCounts:
    return _counts(m.status for m in outcomes)


def _when(d: Delivery) -> float:
    return d.time if d.time is not None else float("inf")


# What `send` shows per channel: the states a coordinator asks about, the rest as "pending".
CHANNEL_COLUMNS = ("delivered", "acknowledged", "failed", "retrying", "pending", "cancelled")


def channel_counts(deliveries: Iterable[Delivery]) -> dict[str, dict[str, int]]:
    """Per channel: delivered, acknowledged, failed (or expired), retrying, pending (queued,
    sending, or sent and waiting for a receipt), cancelled (the member confirmed on another
    channel, or the job was cancelled)."""
    out: dict[str, dict[str, int]] = {}
    for d in deliveries:
        row = out.setdefault(d.channel, dict.fromkeys(CHANNEL_COLUMNS, 0))
        row[_column(d.state)] += 1
    return out


def _column(state: DeliveryState) -> str:
    if state is DeliveryState.DELIVERED:
        return "delivered"
    if state is DeliveryState.ACKNOWLEDGED:
        return "acknowledged"
    if state is DeliveryState.RETRYING:
        return "retrying"
    if state in (DeliveryState.CANCELLED, DeliveryState.CAPPED, DeliveryState.UNSUBSCRIBED):
        return "cancelled"  # not sent on purpose
    if state.final:
        return "failed"
    return "pending"
