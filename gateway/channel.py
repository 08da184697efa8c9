"""The one narrow interface every channel (email, sms, voice) implements.

A channel turns an `Attempt` into an `Outcome` or raises `TemporaryError` / `PermanentError`.
News that arrives later (SMS delivery receipts, member replies) is put on the `reports`
queue the daemon hands to the channel; the daemon `settle()`s each report once it is stored,
so a channel acknowledges news to its provider only when a crash can no longer lose it.
Channels never touch the store or MQTT.
Cancelling the task that runs `send()` means "stop this attempt now" (a voice channel hangs
up); a channel must let `CancelledError` propagate.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from .domain import DeliveryState, Job, Priority


@dataclass(frozen=True)
class Attempt:
    """One try at one delivery (recipient x channel)."""

    delivery_id: int
    job_id: str
    channel: str
    ref: str
    address: str  # E.164 number for sms/voice, e-mail address for email
    lang: str
    text: str  # composed in the member's language; a drill already says it is a test
    subject: str
    priority: Priority
    number: int  # 1 for the first attempt
    expires_at: datetime
    test: bool
    options: Mapping[str, object] = field(default_factory=dict)  # the job's options, e.g. "voice"
    previous_provider_ids: tuple[str, ...] = ()  # set when an earlier attempt was possibly sent
    # The previous attempt was cut off by a crash or a stop: the channel may find out how it
    # ended from its provider (voice: the call's AstDB record) instead of sending again.
    interrupted: bool = False


@dataclass(frozen=True)
class Outcome:
    """What a successful `send()` achieved.

    `state` is SENT (handed over; a `Receipt` will settle it), DELIVERED or ACKNOWLEDGED.
    `provider_ids` are the provider's ids (SMSC message ids, one per part; Message-ID)
    so that later receipts can be matched, also after a restart.
    """

    state: DeliveryState
    provider_ids: tuple[str, ...] = ()
    detail: str | None = None  # e.g. "answered", "accepted by mail server"


@dataclass(frozen=True)
class Receipt:
    """Late news about one provider id returned in an earlier `Outcome`."""

    channel: str
    provider_id: str
    state: DeliveryState  # DELIVERED, FAILED or ACKNOWLEDGED
    reason: str | None = None
    # Resolved by whoever consumes the report once it is durably applied (True) or could
    # not be (False): the channel only then acknowledges the news to its provider.
    settled: asyncio.Future[bool] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Reply:
    """A message from a member (an SMS reply). `acknowledges` when it matched a keyword."""

    channel: str
    sender: str  # E.164
    text: str
    acknowledges: bool
    received_at: datetime | None = None
    settled: asyncio.Future[bool] | None = field(default=None, compare=False, repr=False)


Report = Receipt | Reply
Reports = asyncio.Queue[Report]


def settle(report: Report, applied: bool) -> None:
    """Tell the channel that `report` is (or could not be) durably applied."""
    if report.settled is not None and not report.settled.done():
        report.settled.set_result(applied)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; `max_attempts` counts the first try."""

    max_attempts: int = 5
    initial_delay: float = 5.0
    max_delay: float = 300.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.factor ** max(0, attempt - 1))
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))


@dataclass(frozen=True)
class Limits:
    """How the scheduler feeds a channel: parallel attempts, attempts/s (0 = unlimited).

    `receipt_wait`: seconds after which a `sent` delivery without a receipt no longer keeps
    its job running (None: a `sent` waits for its receipt until the job expires)."""

    concurrency: int
    rate: float
    retry: RetryPolicy
    receipt_wait: float | None = None
    # Attempts claimed beyond `concurrency`, waiting for their turn: a claim (a store write)
    # is then done before a turn frees. Only `concurrency` are sent or have their outcome
    # stored at a time, so a crash resends no more than before (claimed, unsent ones are
    # sent once after it).
    claim_ahead: int = 0


@runtime_checkable
class Channel(Protocol):
    """What the scheduler needs from a channel."""

    name: str

    async def start(self) -> None:
        """Open links. Must not fail because a peer is down: reconnect in the background."""

    async def stop(self) -> None:
        """Close links cleanly (unbind, logoff, quit)."""

    def limits(self) -> Limits:
        """Current limits; read again after a configuration reload."""
        ...

    def reconfigure(self, section: Any, /) -> None:
        """Apply the channel's reloaded configuration section (`[email]`, `[sms]`...).

        Called from the reload (a signal handler): anything slow, such as binding or logging
        in again, runs in the channel's own background task.
        """

    async def prepare(self, job: Job) -> Mapping[str, str]:
        """Called once when a job is accepted, before its attempts on this channel.

        Returns {language: reason} for languages this channel cannot serve (e.g.
        "tts_failed"); those deliveries fail with that reason. Most channels return {}.
        """
        ...

    async def send(self, attempt: Attempt) -> Outcome:
        """Deliver one attempt or raise TemporaryError / PermanentError."""
        ...

    def health(self) -> Mapping[str, object]:
        """Link state for the health topic, e.g. {"state": "up", ...}. No personal data."""
        ...
