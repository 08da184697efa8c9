"""The domain: priorities, job and delivery states, and what a member reads or hears.

Plain Python, no transport: the store, scheduler and channels all speak these types.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

LANGUAGES: tuple[str, ...] = ("fr", "nl", "de", "en")
CHANNELS: tuple[str, ...] = ("email", "sms", "voice")


class Priority(enum.IntEnum):
    """Lower value runs first: hot work always goes before cold work."""

    HOT = 0
    COLD = 1

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Priority:
        return cls[value.upper()]


class JobState(enum.StrEnum):
    ACCEPTED = "accepted"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        return self in _FINAL_JOB_STATES


_FINAL_JOB_STATES = frozenset(
    {JobState.DONE, JobState.CANCELLED, JobState.EXPIRED, JobState.REJECTED}
)


class DeliveryState(enum.StrEnum):
    """One recipient x channel. `sent` waits for a receipt; `held` waits for the end of the
    member's quiet hours (cold only); delivered to unsubscribed are final.

    `capped` (the member's daily cap of cold messages was reached) and `unsubscribed` (the
    member replied STOP) are a member's own choice: the message was not sent, on purpose."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    HELD = "held"
    CAPPED = "capped"
    UNSUBSCRIBED = "unsubscribed"

    @property
    def final(self) -> bool:
        return self in FINAL_DELIVERY_STATES

    @property
    def pending(self) -> bool:
        """Still owed an attempt: the scheduler must (re)send it."""
        return self in PENDING_DELIVERY_STATES


FINAL_DELIVERY_STATES = frozenset(
    {
        DeliveryState.DELIVERED,
        DeliveryState.ACKNOWLEDGED,
        DeliveryState.FAILED,
        DeliveryState.EXPIRED,
        DeliveryState.CANCELLED,
        DeliveryState.CAPPED,
        DeliveryState.UNSUBSCRIBED,
    }
)
PENDING_DELIVERY_STATES = frozenset(
    {DeliveryState.QUEUED, DeliveryState.SENDING, DeliveryState.RETRYING, DeliveryState.HELD}
)

# Allowed transitions. `delivered -> acknowledged` is a member confirming after delivery
# (press 1, SMS reply); `sent -> retrying` is a receipt saying "try again" (rare).
TRANSITIONS: dict[DeliveryState, frozenset[DeliveryState]] = {
    DeliveryState.QUEUED: frozenset(
        {
            DeliveryState.SENDING,
            DeliveryState.FAILED,
            DeliveryState.EXPIRED,
            DeliveryState.CANCELLED,
            DeliveryState.HELD,
            DeliveryState.CAPPED,
            DeliveryState.UNSUBSCRIBED,
        }
    ),
    # Held until the member's quiet hours end, then sent like a queued one.
    DeliveryState.HELD: frozenset(
        {
            DeliveryState.SENDING,
            DeliveryState.FAILED,
            DeliveryState.EXPIRED,
            DeliveryState.CANCELLED,
        }
    ),
    DeliveryState.SENDING: frozenset(
        {
            DeliveryState.SENT,
            DeliveryState.DELIVERED,
            DeliveryState.ACKNOWLEDGED,
            DeliveryState.RETRYING,
            DeliveryState.FAILED,
            DeliveryState.CANCELLED,
            DeliveryState.EXPIRED,
            DeliveryState.QUEUED,
        }
    ),
    DeliveryState.RETRYING: frozenset(
        {
            DeliveryState.SENDING,
            DeliveryState.FAILED,
            DeliveryState.EXPIRED,
            DeliveryState.CANCELLED,
        }
    ),
    DeliveryState.SENT: frozenset(
        {
            DeliveryState.DELIVERED,
            DeliveryState.ACKNOWLEDGED,
            DeliveryState.FAILED,
            DeliveryState.RETRYING,
        }
    ),
    DeliveryState.DELIVERED: frozenset({DeliveryState.ACKNOWLEDGED}),
    DeliveryState.ACKNOWLEDGED: frozenset(),
    DeliveryState.FAILED: frozenset({DeliveryState.ACKNOWLEDGED}),
    DeliveryState.EXPIRED: frozenset(),
    DeliveryState.CANCELLED: frozenset(),
    DeliveryState.CAPPED: frozenset(),
    DeliveryState.UNSUBSCRIBED: frozenset(),
}


def can_transition(old: DeliveryState, new: DeliveryState) -> bool:
    return new in TRANSITIONS[old]


TEST_PREFIX: dict[str, str] = {
    "fr": "EXERCICE - ceci est un message de test, aucune action requise. ",
    "nl": "OEFENING - dit is een testbericht, u hoeft niets te doen. ",
    "de": "ÜBUNG - dies ist eine Testnachricht, keine Maßnahme erforderlich. ",
    "en": "DRILL - this is a test message, no action needed. ",
}

DEFAULT_SUBJECT: dict[str, str] = {
    "fr": "PLP - message de votre partenariat local de prévention",
    "nl": "BIN - bericht van uw buurtinformatienetwerk",
    "de": "KPP - Nachricht Ihrer kommunalen Präventionspartnerschaft",
    "en": "PLP - message from your local prevention partnership",
}


def pick_language(available: tuple[str, ...], wanted: str | None) -> str:
    """The recipient's language when the job has it, else the job's first language."""
    if wanted is not None and wanted in available:
        return wanted
    return available[0]


#: The PLP's code word under a written message (authenticity: members know the word).
CODE_WORD_LINE: dict[str, str] = {
    "fr": "Mot de code : {}",
    "nl": "Codewoord: {}",
    "de": "Codewort: {}",
    "en": "Code word: {}",
}


def compose_text(
    message: dict[str, str], lang: str, *, test: bool, code_word: str | None = None
) -> str:
    """What a member reads in `lang`; a drill says it is a test, in the member's language;
    the PLP's code word, when there is one, ends it."""
    text = message[lang]
    text = TEST_PREFIX[lang] + text if test else text
    if code_word:
        text += "\n" + CODE_WORD_LINE[lang].format(code_word)
    return text


def job_code_word(options: Mapping[str, object]) -> str | None:
    """The code word of a job: its own (`voice.code_word`), else its PLP's (directory)."""
    for key in ("voice", "plp"):
        section = options.get(key)
        if isinstance(section, dict) and section.get("code_word"):
            return str(section["code_word"])
    return None


def job_sender_id(options: Mapping[str, object]) -> str | None:
    """The PLP's own sender id (SMS source address, e-mail From name), when it has one."""
    section = options.get("plp")
    if isinstance(section, dict) and section.get("sender_id"):
        return str(section["sender_id"])
    return None


def compose_subject(subject: dict[str, str], lang: str, *, test: bool) -> str:
    base = subject.get(lang) or DEFAULT_SUBJECT[lang]
    return f"[TEST] {base}" if test else base


@dataclass(frozen=True)
class Recipient:
    """A validated recipient; addresses normalised (E.164, lower-cased domain) or None."""

    index: int
    ref: str
    lang: str
    channels: tuple[str, ...]
    phone: str | None
    email: str | None
    phone_error: str | None = None
    email_error: str | None = None
    # Phone channels whose number policy refuses `phone` (`number_not_allowed` there): a fixed
    # line gets its call and fails SMS. `phone_error` is for a number no channel can use.
    phone_refused: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Job:
    """A validated, normalised job as the store keeps it."""

    id: str
    priority: Priority
    test: bool
    message: dict[str, str]
    subject: dict[str, str]
    channels: tuple[str, ...]
    recipients: tuple[Recipient, ...]
    expires_at: datetime
    options: dict[str, object] = field(default_factory=dict)  # voice, fallback, ...
    fallback: dict[str, str] = field(default_factory=dict)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.message)
