"""The PLP directory's domain: PLPs, their members and what members asked for (issue 14).

Plain Python, no store, no transport. The store keeps these records
(`gateway.store_directory`); the intake turns an audience's members into a job's recipients
here, once, when the job is accepted (the job then keeps them: a later directory change does
not alter a running job).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple

from .domain import Recipient
from .numbers import NumberKind, NumberPolicy

if TYPE_CHECKING:
    from .store_contract import StoreContract


@dataclass(frozen=True)
class Coordinator:
    """Who a member's free reply is forwarded to."""

    email: str | None = None
    phone: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("email", self.email), ("phone", self.phone)) if v}


@dataclass(frozen=True)
class Plp:
    """A local prevention partnership: its names per language, police zone, the code word its
    members know (authenticity), its own sender id (SMS source, e-mail From name)."""

    id: str
    names: dict[str, str] = field(default_factory=dict)
    zone: str | None = None
    code_word: str | None = None
    sender_id: str | None = None
    coordinators: tuple[Coordinator, ...] = ()


class Member(NamedTuple):
    """A member of one PLP. `phone` is E.164 (normalised at import), `phone_kind` its kind
    (`BE/mobile`), so that an audience is resolved without parsing numbers. A tuple: an
    audience of 10,000 members is built from the store's rows ten times faster than as a
    dataclass (the intake's hot path, docs/benchmarks.md); its flags are then the store's
    0/1, which test as the booleans they stand for."""

    plp: str
    ref: str
    lang: str
    phone: str | None = None
    email: str | None = None
    no_voice: bool = False
    quiet_hours: str | None = None
    consent_at: str | None = None
    cold_unsubscribed: bool = False
    phone_kind: str | None = None
    groups: tuple[str, ...] = ()  # last: an audience is read without them

    def export(self) -> dict[str, object]:
        """The member's own data, whole (a GDPR access request)."""
        return {
            "plp": self.plp,
            "ref": self.ref,
            "phone": self.phone,
            "email": self.email,
            "lang": self.lang,
            "groups": list(self.groups),
            "no_voice": bool(self.no_voice),
            "quiet_hours": self.quiet_hours,
            "consent_at": self.consent_at,
            "cold_unsubscribed": bool(self.cold_unsubscribed),
        }


@dataclass(frozen=True)
class Audience:
    """The members an audience names, or what it names that the directory does not have."""

    members: tuple[Member, ...]
    unknown_plps: tuple[int, ...] = ()  # indexes into audience.plps
    unknown_groups: tuple[int, ...] = ()  # indexes into audience.groups
    plps: Mapping[str, Plp] = field(default_factory=dict)
    # Members frozen in a job but gone from the directory when its intake resumed after a
    # crash (erased or removed in between): positions in `members`, each kept under an erased
    # member's pseudonym, so that their deliveries fail with a reason instead of vanishing.
    departed: frozenset[int] = frozenset()


#: The reason on the deliveries of a member frozen in a job and no longer in the directory
#: when the job's intake resumed (gateway.frozen).
MEMBER_GONE = "member_gone"

_SENDER_ID = re.compile(r"^(\+?\d{3,15}|[A-Za-z0-9][A-Za-z0-9 ._-]{0,10})$")


def valid_sender_id(value: str) -> bool:
    """An SMS source address: a number, or at most 11 letters, digits, space . _ - (SMPP's
    alphanumeric sender)."""
    return _SENDER_ID.match(value) is not None


def plp_options(plp: Plp) -> dict[str, object]:
    """What a job addressed to one PLP keeps of it: every message carries its code word and
    goes out under its sender id."""
    return {
        "id": plp.id,
        "names": dict(plp.names),
        "code_word": plp.code_word,
        "sender_id": plp.sender_id,
    }


def kind_text(kind: NumberKind | None) -> str | None:
    return None if kind is None else f"{kind.region}/{kind.type}"


def _kind(text: str | None) -> NumberKind | None:
    if text is None:
        return None
    region, _, type_ = text.partition("/")
    return NumberKind(region, type_)


def member_channels(channels: Sequence[str], member: Member) -> tuple[str, ...]:
    """The job's channels as this member takes them: a `no_voice` member is never called; an
    SMS stands in for the call (once, if the job has SMS already)."""
    if not member.no_voice or "voice" not in channels:
        return tuple(channels)
    out = [c for c in channels if c != "voice"]
    if "sms" not in out:
        out.insert(list(channels).index("voice"), "sms")
    return tuple(out)


def recipient_ref(member: Member, several_plps: bool) -> str:
    """The member's ref in a job: their own, or `<plp>:<ref>` when the job spans PLPs (a ref
    is unique within a PLP only)."""
    return f"{member.plp}:{member.ref}" if several_plps else member.ref


def to_recipients(
    audience: Audience,
    channels: Sequence[str],
    languages: Sequence[str],
    fallback: Mapping[str, str],
    numbers: Mapping[str, NumberPolicy],
    start: int = 0,
    span: slice = slice(None),
) -> list[Recipient]:
    """The audience's members (those in `span`: a large job takes them chunk by chunk) as a
    job's recipients, the first member's index `start`. Addresses are the directory's, already
    normalised; each phone channel's number policy is applied here."""
    several = len({m.plp for m in audience.members}) > 1
    out: list[Recipient] = []
    first = span.indices(len(audience.members))[0]
    for i, m in enumerate(audience.members[span], first):
        chans = member_channels(channels, m)
        needed = set(chans) | {fallback[c] for c in chans if c in fallback}
        refused: frozenset[str] = frozenset()
        kind = _kind(m.phone_kind)
        if m.phone is not None and kind is not None:
            refused = frozenset(c for c in needed if c in numbers and not numbers[c].allows(kind))
        gone = MEMBER_GONE if i in audience.departed else None
        out.append(
            Recipient(
                index=start + i,
                ref=recipient_ref(m, several),
                lang=m.lang if m.lang in languages else languages[0],
                channels=chans,
                phone=m.phone if needed & {"sms", "voice"} else None,
                email=m.email if "email" in needed else None,
                phone_error=gone,
                email_error=gone,
                phone_refused=refused,
            )
        )
    return out


def followed_members(
    store: StoreContract, job_id: str
) -> tuple[tuple[Recipient, ...] | None, dict[str, object]]:
    """The members job `job_id` reached, each with the one channel that reached them first
    (a follow-up's recipients), and the job's options; (None, {}) when there is no such job.
    Runs on the store's thread."""
    from .outcomes import Delivery, members

    job = store.job(job_id)
    if job is None:
        return None, {}
    reached = {
        o.ref: o.reached_by.channel
        for o in members(Delivery.from_row(r) for r in store.deliveries(job_id))
        if o.reached_by is not None
    }
    out = tuple(replace(r, channels=(reached[r.ref],)) for r in job.recipients if r.ref in reached)
    return out, dict(job.options)
