"""The SMS channel: an `Attempt` becomes submit_sm PDUs on the healthiest bind.

Receipts and replies from any bind go to the daemon's `reports` queue; a receipt carries the
same canonical id (`<smsc>:<message id>`) as the `Outcome` of the part it settles.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import phonenumbers

from gateway.channel import Attempt, Limits, Outcome, Receipt, Reply, Reports, RetryPolicy
from gateway.domain import DeliveryState, Job, job_sender_id
from gateway.errors import LinkDown, LinkUnavailable, PermanentError, TemporaryError
from gateway.numbers import kind_of_e164, refusal
from gateway.privacy import address_hash, mask_phone

from . import pdu as P
from .config import SmscConfig, SmsConfig
from .encoding import Encoded, TooLong, encode_text
from .pacing import BURST, MIN_RATE
from .receipts import DeliveryReport, KeywordMatcher, MobileOriginated, canonical_id, classify
from .session import Session

log = logging.getLogger("sms.channel")

# phonenumbers' types (gateway.numbers.NUMBER_TYPES names) that cannot take an SMS.
_NOT_MOBILE = frozenset(
    {"fixed_line", "toll_free", "premium_rate", "shared_cost", "uan", "voicemail"}
)
TON_INTERNATIONAL, TON_NATIONAL, TON_ALPHANUMERIC = 1, 2, 5
NPI_ISDN, NPI_UNKNOWN = 1, 0


def number_problem(e164: str) -> str | None:
    """`reject_non_mobile`: None for a number that can take an SMS; else `invalid_number` or
    `not_mobile`. It runs after the number policy, which already refuses what phonenumbers
    cannot classify; it matters only when the policy allows a non-mobile type. The kind is
    the one intake found (remembered by gateway.numbers)."""
    kind = kind_of_e164(e164)
    if kind is None:
        return "invalid_number"
    if kind.type in _NOT_MOBILE:
        return "not_mobile"
    return None


def validity_period(seconds: float) -> str:
    """SMPP relative time `YYMMDDhhmmss000R` for a duration (days may exceed a month)."""
    return _relative_time(max(1, int(seconds)))


@functools.lru_cache(maxsize=16)
def _relative_time(total: int) -> str:
    # Every SMS of a job asks for the same few values (whole seconds): formatted once each.
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"0000{days:02d}{hours:02d}{minutes:02d}{secs:02d}000R"


def sender_address(sender: str) -> tuple[int, int, str]:
    """(ton, npi, addr): an international number, else alphanumeric."""
    digits = sender.removeprefix("+")
    if digits.isdigit():
        return TON_INTERNATIONAL, NPI_ISDN, digits
    return TON_ALPHANUMERIC, NPI_UNKNOWN, sender


class SmsChannel:
    """`Channel` over one or more SMPP binds, with failover."""

    name = "sms"

    def __init__(self, config: SmsConfig, reports: Reports) -> None:
        self.config = config
        self._reports = reports
        self._keywords = KeywordMatcher(config.reply_keywords)
        self._sender = sender_address(config.sender)
        self.sessions = [
            Session(smsc, functools.partial(self._on_deliver, smsc)) for smsc in config.smsc
        ]
        self._rr = itertools.count()
        self._encoded: dict[str, Encoded] = {}
        self._rebinding: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for s in self.sessions:
            await s.start()

    async def stop(self) -> None:
        if self._rebinding is not None:
            await self._rebinding
        await asyncio.gather(*(s.stop() for s in self.sessions))

    def reconfigure(self, config: SmsConfig) -> None:
        """Apply a reloaded `[sms]`: channel settings at once; a link whose settings changed
        (credentials, address, window, rate...) drains its window, unbinds and binds again
        with the new ones (in the background) while the other links carry the traffic.
        Unchanged links stay up."""
        previous = self._rebinding
        self.config = config
        self._keywords = KeywordMatcher(config.reply_keywords)
        self._sender = sender_address(config.sender)
        self._encoded.clear()
        self._rebinding = asyncio.get_running_loop().create_task(
            self._rebind(config, previous), name="sms-rebind"
        )

    def share(self, nodes: int) -> None:
        """Several nodes on the same SMSC accounts: each bind gets its share of its link's
        `rate` (what the operator sold is for all nodes together). Each pacer may catch up
        BURST slots plus the one under way, so that much per node is kept aside:
        together the nodes stay within the rate in any second."""
        for session in self.sessions:
            rate = session.config.rate
            if rate > 0 and nodes > 1:
                rate = max(MIN_RATE, (rate - (BURST + 1) * nodes) / nodes)
            session.pacer.set_rate(rate)

    async def _rebind(self, config: SmsConfig, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous  # one reload after the other
        old = {s.name: s for s in self.sessions}
        sessions: list[Session] = []
        for smsc in config.smsc:
            current = old.pop(smsc.name, None)
            if current is not None and current.config == smsc:
                sessions.append(current)
                continue
            if current is not None:
                log.info("smsc %s: settings changed, binding again", smsc.name)
                await current.stop()
            fresh = Session(smsc, functools.partial(self._on_deliver, smsc))
            await fresh.start()
            sessions.append(fresh)
        self.sessions = sessions
        for gone in old.values():
            log.info("smsc %s: removed from the configuration, unbinding", gone.name)
            await gone.stop()

    def limits(self) -> Limits:
        r = self.config.retry
        policy = RetryPolicy(r.max_attempts, r.initial_delay, r.max_delay, r.factor, r.jitter)
        # Twice the windows: while one send handles its response the next already waits.
        concurrency = max(1, 2 * sum(s.window for s in self.config.smsc))
        return Limits(
            concurrency=concurrency, rate=0.0, retry=policy, receipt_wait=self.config.receipt_wait
        )

    async def prepare(self, job: Job) -> Mapping[str, str]:
        return {}

    def health(self) -> Mapping[str, object]:
        binds = [s.health() for s in self.sessions]
        up = sum(1 for s in self.sessions if s.bound)
        state = "up" if up == len(self.sessions) and up else "degraded" if up else "down"
        return {"state": state, "binds": binds}

    # sending
    def _encode(self, text: str) -> Encoded:
        # A job sends the same text to many members: encode it once (small bounded cache).
        enc = self._encoded.get(text)
        if enc is None or len(enc.parts) > 1:  # multi-part needs a fresh UDH reference
            enc = encode_text(text, self.config.max_parts, truncate=self.config.too_long != "fail")
            if len(enc.parts) == 1:
                if len(self._encoded) > 64:
                    self._encoded.clear()
                self._encoded[text] = enc
        return enc

    def _candidates(self) -> list[Session]:
        bound = [s for s in self.sessions if s.bound]
        if len(bound) > 1:
            start = next(self._rr) % len(bound)
            bound = bound[start:] + bound[:start]
            bound.sort(key=lambda s: s.load())  # stable: round robin among equals
        return bound

    async def _wait_any_bound(self) -> None:
        if not self.sessions or self.config.link_wait <= 0:
            return
        waits = [asyncio.ensure_future(s.wait_bound(self.config.link_wait)) for s in self.sessions]
        try:
            for fut in asyncio.as_completed(waits):
                if await fut:
                    return
        finally:
            for w in waits:
                w.cancel()

    async def send(self, attempt: Attempt) -> Outcome:
        masked = mask_phone(attempt.address)
        # Intake refused numbers outside the policy already; this catches any other path.
        problem = refusal(attempt.address, self.config.number_policy)
        if problem is None and self.config.reject_non_mobile:
            problem = number_problem(attempt.address)
        if problem:
            log.info(
                "sms %s to %s (%s) refused: %s",
                attempt.delivery_id, masked, kind_of_e164(attempt.address), problem,
            )  # fmt: skip
            raise PermanentError(problem)
        remaining = attempt.expires_at.timestamp() - time.time()
        if remaining <= 1:
            raise PermanentError("expired", "the job expired before the SMS was submitted")
        try:
            enc = self._encode(attempt.text)
        except TooLong as exc:
            raise PermanentError("too_long", str(exc)) from exc
        validity = validity_period(min(remaining, self.config.max_validity))
        # The PLP's own sender id (directory), else the configured one.
        sender_id = job_sender_id(attempt.options)
        ton, npi, source = self._sender if sender_id is None else sender_address(sender_id)
        parts = [
            P.SubmitSm(ton, npi, source, TON_INTERNATIONAL, NPI_ISDN,
                       attempt.address.removeprefix("+"), enc.esm_class, enc.data_coding,
                       short_message, validity, 1)
            for short_message in enc.parts
        ]  # fmt: skip
        candidates = self._candidates()
        if not candidates:
            await self._wait_any_bound()
            candidates = self._candidates()
        last: LinkDown | None = None
        for session in candidates:
            ids: list[str] = []
            try:
                for sm in parts:
                    mid = await session.submit(sm, attempt.priority)
                    ids.append(canonical_id(session.name, mid, session.config.submit_id_format))
            except LinkDown as exc:
                if ids:
                    raise TemporaryError(
                        "partially_sent", f"{len(ids)}/{len(parts)} parts"
                    ) from exc
                last = exc
                continue  # nothing went out: fail over to the next bind
            except TemporaryError as exc:
                if ids and exc.reason != "possibly_sent":
                    raise TemporaryError("partially_sent", exc.reason, exc.retry_after) from exc
                raise
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "sms %s to %s sent via %s: %d part(s), ids %s%s",
                    attempt.delivery_id, masked, session.name, len(ids),
                    ",".join(address_hash(i) for i in ids), " (truncated)" if enc.truncated else "",
                )  # fmt: skip
            detail = f"{len(ids)} part(s) via {session.name}"
            return Outcome(DeliveryState.SENT, tuple(ids), detail)
        # Nothing left the gateway: the scheduler waits for a link without counting an attempt.
        raise LinkUnavailable(
            "link_down",
            str(last) if last else "no SMSC bound",
            retry_after=self.config.smsc[0].reconnect_initial_delay if self.config.smsc else None,
        )

    # receiving
    def _on_deliver(self, smsc: SmscConfig, frame: P.Pdu) -> int | asyncio.Future[bool]:
        item = classify(P.decode_deliver_sm(frame.body))
        loop = asyncio.get_running_loop()
        report: Receipt | Reply
        if item is None:
            log.warning("smsc %s: receipt without a message id ignored", smsc.name)
            return P.ESME_ROK
        if isinstance(item, DeliveryReport):
            if not item.final:
                return P.ESME_ROK
            provider_id = canonical_id(smsc.name, item.message_id, smsc.receipt_id_format)
            state = DeliveryState.DELIVERED if item.delivered else DeliveryState.FAILED
            reason = None if item.delivered else item.reason
            report = Receipt("sms", provider_id, state, reason, settled=loop.create_future())
            if log.isEnabledFor(logging.DEBUG):
                log.debug("smsc %s: receipt %s %s", smsc.name, address_hash(provider_id), item.stat)
        else:
            report = self._reply(item, loop.create_future())
        try:
            self._reports.put_nowait(report)
        except asyncio.QueueFull:
            log.warning("smsc %s: reports queue full, the SMSC will redeliver", smsc.name)
            return P.ESME_RX_T_APPN
        assert report.settled is not None
        return report.settled  # the session answers once it is settled

    def _reply(self, mo: MobileOriginated, settled: asyncio.Future[bool]) -> Reply:
        sender = e164(mo.source_addr, mo.source_ton, self.config.default_region)
        keyword = self._keywords.match(mo.text)
        log.info("sms reply from %s%s", mask_phone(sender), " (acknowledges)" if keyword else "")
        return Reply("sms", sender, mo.text, keyword is not None, datetime.now(UTC), settled)


def e164(addr: str, ton: int, region: str) -> str:
    """An MO source address as E.164 (`+32...`) when it looks like a number.

    SMSCs differ: international digits with TON 1, `+`/`00` prefixes, national numbers with
    TON 2, and international digits with TON 0 ("unknown") all occur.
    """
    digits = addr.strip()
    if digits.startswith("+"):
        return digits
    if not digits.isdigit():
        return digits  # an alphanumeric sender
    if ton == TON_INTERNATIONAL:
        return "+" + digits
    if digits.startswith("00"):
        return "+" + digits[2:]
    for candidate, hint in ((digits, region), ("+" + digits, None)):
        try:
            number = phonenumbers.parse(candidate, hint)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return digits
