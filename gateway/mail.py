"""E-mail channel over SMTP (aiosmtplib): a small pool of reused connections.

4xx replies are temporary, 5xx permanent. The Message-ID is derived from job and recipient,
so a retried message is recognisable as the same alert by the receiving side.
While no mail goes out, a probe (connect, EHLO, STARTTLS and AUTH as configured, NOOP) on a
connection of its own tells every `probe_interval` whether the server is usable, so a dead
server or a wrong password shows before an alert needs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, formatdate, parseaddr

import aiosmtplib

from .channel import Attempt, Limits, Outcome
from .config import EmailConfig
from .domain import DeliveryState, Job, Priority, job_sender_id
from .errors import ChannelError, LinkDown, PermanentError, TemporaryError
from .privacy import mask_email
from .queues import Slots

log = logging.getLogger("gateway.mail")


class LinkState(enum.StrEnum):
    UNKNOWN = "unknown"  # not probed yet
    UP = "up"
    DOWN = "down"
    AUTH_FAILED = "auth_failed"


def message_id(job_id: str, ref: str, domain: str) -> str:
    left = f"{job_id}.{ref}".replace(":", "=")
    return f"<plp.{left}@{domain}>"


def build_message(attempt: Attempt, sender: str, domain: str) -> EmailMessage:
    msg = EmailMessage()
    sender_id = job_sender_id(attempt.options)
    # The PLP's own sender id is the From display name; the address stays the gateway's.
    msg["From"] = sender if sender_id is None else formataddr((sender_id, parseaddr(sender)[1]))
    msg["To"] = attempt.address
    msg["Subject"] = attempt.subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = message_id(attempt.job_id, attempt.ref, domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-PLP-Job"] = attempt.job_id
    msg["X-PLP-Expires"] = format_datetime(attempt.expires_at)
    if attempt.priority is Priority.HOT:
        msg["Importance"] = "high"
        msg["X-Priority"] = "1"
    if attempt.test:
        msg["X-PLP-Test"] = "yes"
    msg.set_content(attempt.text, charset="utf-8")
    msg["Content-Language"] = attempt.lang  # after set_content, which resets Content-*
    return msg


def _classify(exc: BaseException) -> ChannelError:
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # Our credentials, not the member's address: retried (a fixed password saves the
        # alert), never a permanent failure of every member.
        return LinkDown("smtp_auth_failed", f"{exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        first = exc.recipients[0] if exc.recipients else None
        code = first.code if first is not None else 550
        return _by_code(code, first.message if first else str(exc))
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _by_code(exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return TemporaryError("smtp_timeout", str(exc))
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | OSError):
        return LinkDown("smtp_unreachable", str(exc))
    return TemporaryError("smtp_error", f"{type(exc).__name__}: {exc}")


def _by_code(code: int, text: str) -> ChannelError:
    if 400 <= code < 500:
        return TemporaryError(f"smtp_{code}", text)
    return PermanentError(f"smtp_{code}", text)


class EmailChannel:
    name = "email"

    def __init__(self, cfg: EmailConfig) -> None:
        self._cfg = cfg
        # Idle connections. Every client exists once: idle here or held by a send, which gives
        # it back (or a fresh one) however the send ends, so the pool never runs dry.
        self._pool: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        # Turns at a connection: the scheduler lets hot and cold sends in with a concurrency
        # each; the next free connection goes to a waiting hot send before any cold one.
        self._turns = Slots(cfg.concurrency)
        self._clients = 0  # idle + held
        self._stale: set[int] = set()  # held clients made with settings since replaced
        self._in_use: set[int] = set()  # ids of the clients sends hold
        self._state = LinkState.UNKNOWN
        self._last_error: str | None = None
        self._sent = 0
        self._since: float | None = None
        self._last_sent = float("-inf")  # monotonic time of the last accepted message
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_now = asyncio.Event()

    def reconfigure(self, cfg: EmailConfig) -> None:
        """New settings (server, credentials, concurrency...) apply at once: idle connections
        are replaced now, the ones in use when their send ends."""
        self._cfg = cfg
        idle = [self._pool.get_nowait() for _ in range(self._pool.qsize())]
        for client in idle:
            client.close()
        self._clients -= len(idle)
        self._stale = set(self._in_use)
        self._turns.resize(cfg.concurrency)
        self._grow()
        self._probe_now.set()  # a new server or password: say at once whether it works

    def _grow(self) -> None:
        while self._clients < self._cfg.concurrency:
            self._pool.put_nowait(self._new_client())
            self._clients += 1

    def _give_back(self, client: aiosmtplib.SMTP, broken: bool) -> None:
        self._in_use.discard(id(client))
        stale = id(client) in self._stale
        self._stale.discard(id(client))
        if self._clients > self._cfg.concurrency:  # the limit was lowered
            self._clients -= 1
            client.close()
        elif broken or stale:
            client.close()
            self._pool.put_nowait(self._new_client())
        else:
            self._pool.put_nowait(client)

    @property
    def domain(self) -> str:
        return self._cfg.message_id_domain or self._cfg.sender.rpartition("@")[2] or "localhost"

    async def start(self) -> None:
        self._grow()
        if self._probe_task is None:
            self._probe_now.set()
            self._probe_task = asyncio.create_task(self._probe_loop(), name="smtp-probe")

    async def stop(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._pool.empty():
            client = self._pool.get_nowait()
            if client.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await asyncio.wait_for(client.quit(), 5)

    def _new_client(self) -> aiosmtplib.SMTP:
        cfg = self._cfg
        return aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            timeout=cfg.timeout,
            use_tls=cfg.security == "tls",
            start_tls=cfg.security == "starttls",
            username=cfg.username,
            password=cfg.password,
        )

    def limits(self) -> Limits:
        return Limits(self._cfg.concurrency, self._cfg.rate, self._cfg.retry.policy())

    async def prepare(self, job: Job) -> Mapping[str, str]:
        return {}

    async def send(self, attempt: Attempt) -> Outcome:
        async with self._turns.hold(attempt.priority):
            return await self._send(attempt)

    async def _send(self, attempt: Attempt) -> Outcome:
        msg = build_message(attempt, self._cfg.sender, self.domain)
        client = await self._pool.get()
        self._in_use.add(id(client))
        try:
            if not client.is_connected:
                await client.connect()
            await client.send_message(msg)
        except asyncio.CancelledError:
            self._give_back(client, broken=True)
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            err = _classify(exc)
            self._give_back(client, broken=True)
            if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
                self._set_state(LinkState.AUTH_FAILED, f"smtp_{exc.code}: {exc.message}")
            elif isinstance(err, LinkDown):
                self._set_state(LinkState.DOWN, err.reason)
            log.info(
                "e-mail to %s for job %s failed: %s",
                mask_email(attempt.address),
                attempt.job_id,
                err,
            )
            raise err from None
        except BaseException:
            self._give_back(client, broken=True)
            raise
        self._give_back(client, broken=False)
        self._set_state(LinkState.UP, None)
        self._sent += 1
        self._last_sent = time.monotonic()
        return Outcome(
            DeliveryState.DELIVERED,
            provider_ids=(str(msg["Message-ID"]),),
            detail="accepted by mail server",
        )

    # -- probing ---------------------------------------------------------------------------
    async def _probe_loop(self) -> None:
        while True:
            forced = self._probe_now.is_set()
            self._probe_now.clear()
            # Mail accepted within the interval already proves the link: probe only when idle.
            if forced or time.monotonic() - self._last_sent >= self._cfg.probe_interval:
                try:
                    await self.probe()
                except Exception as exc:  # a bug here must not end the probing for good
                    log.exception("SMTP probe failed unexpectedly")
                    self._set_state(LinkState.DOWN, f"probe_error: {type(exc).__name__}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._cfg.probe_interval):
                    await self._probe_now.wait()

    async def probe(self) -> LinkState:
        """One probe on a fresh connection, never a pooled one: a send never waits for it."""
        cfg = self._cfg
        client = self._new_client()
        try:
            async with asyncio.timeout(cfg.timeout):
                await client.connect()  # STARTTLS and AUTH too, when configured
                if client.is_ehlo_or_helo_needed:
                    await client.ehlo()
                await client.noop()
                with contextlib.suppress(aiosmtplib.SMTPException):
                    await client.quit()
        except aiosmtplib.SMTPAuthenticationError as exc:
            self._set_state(LinkState.AUTH_FAILED, f"smtp_{exc.code}: {exc.message}")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            reason = _classify(exc).reason
            self._set_state(LinkState.DOWN, f"{reason}: {exc}" if str(exc) else reason)
        else:
            self._set_state(LinkState.UP, None)
        finally:
            if client.is_connected:
                client.close()
        return self._state

    def _set_state(self, state: LinkState, error: str | None) -> None:
        if state != self._state:
            self._since = time.time()
            log.log(
                logging.INFO if state == LinkState.UP else logging.WARNING,
                "SMTP link %s (%s:%d)%s",
                state,
                self._cfg.host,
                self._cfg.port,
                f": {error}" if error else "",
            )
        self._state = state
        if error:
            self._last_error = error

    def health(self) -> Mapping[str, object]:
        return {
            "state": str(self._state),
            "server": f"{self._cfg.host}:{self._cfg.port}",
            "since": self._since,
            "sent": self._sent,
            "last_error": self._last_error,
        }
