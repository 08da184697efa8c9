"""E-mail channel over SMTP: a pool of reused connections, opened by aiosmtplib, whose mail
transactions are pipelined where the server offers it (`smtp_pipeline`); each job's message is
rendered once per language and copied per recipient (`mail_message`).

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
from collections.abc import Callable, Mapping
from email.message import EmailMessage

import aiosmtplib
from aiosmtplib.email import extract_sender, flatten_message

from .channel import Attempt, Limits, Outcome
from .config import EmailConfig
from .domain import DeliveryState, Job
from .errors import ChannelError, LinkDown, PermanentError, TemporaryError
from .mail_message import MessageTemplates, build_message
from .privacy import mask_email
from .queues import Slots
from .smtp_pipeline import Pipeline

log = logging.getLogger("gateway.mail")

# Attempts sent or having their outcome stored, per connection (`Limits.concurrency`), and
# claimed ahead of them (`Limits.claim_ahead`). A claim and an outcome are store writes: with
# only twice the connections in the lane, 4-8 of 16 connections were busy on a large job
# (sampled under load) while the next attempts waited for their claims; claimed ahead, 10-16.
ATTEMPTS_PER_CONNECTION = 2
CLAIMED_AHEAD_PER_CONNECTION = 2


class LinkState(enum.StrEnum):
    UNKNOWN = "unknown"  # not probed yet
    UP = "up"
    DOWN = "down"
    AUTH_FAILED = "auth_failed"


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


class _Connection:
    """A pooled connection: aiosmtplib opens it (TLS, EHLO, STARTTLS, AUTH), then a `Pipeline`
    carries its mail transactions. Closed, it opens again with a fresh client."""

    def __init__(self, factory: Callable[[], aiosmtplib.SMTP], timeout: float) -> None:
        self._factory = factory
        self._timeout = timeout
        self.pipe: Pipeline | None = None
        self.eight_bit = False
        self.smtputf8 = False

    @property
    def is_connected(self) -> bool:
        return self.pipe is not None and self.pipe.is_connected

    async def open(self) -> None:
        self.close()
        client = self._factory()
        try:
            await client.connect()  # STARTTLS and AUTH too, when configured
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
            self.eight_bit = client.supports_extension("8bitmime")
            self.smtputf8 = client.supports_extension("smtputf8")
            self.pipe = Pipeline.take_over(client, self._timeout)
        except BaseException:
            client.close()
            raise

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None

    async def quit(self) -> None:
        if self.pipe is not None and self.pipe.is_connected:
            await self.pipe.quit()


def _serialise(msg: EmailMessage, address: str, conn: _Connection) -> tuple[bytes, str, list[str]]:
    """A message as aiosmtplib's `send_message` would put it on the wire, with its envelope
    sender and MAIL FROM options."""
    sender = extract_sender(msg)
    if sender is None:
        raise aiosmtplib.SMTPNotSupported("no sender address")  # a misconfigured `sender`
    options = []
    utf8 = not (sender + address).isascii()
    if utf8:
        if not conn.smtputf8:
            raise aiosmtplib.SMTPNotSupported(
                "An address containing non-ASCII characters was provided, but "
                "SMTPUTF8 is not supported by this server"
            )
        options.append("SMTPUTF8")
    if conn.eight_bit:
        options.append("BODY=8BITMIME")
    data = flatten_message(msg, utf8=utf8, cte_type="8bit" if conn.eight_bit else "7bit")
    return data, sender, options


class EmailChannel:
    name = "email"

    def __init__(self, cfg: EmailConfig) -> None:
        self._cfg = cfg
        # Idle connections. Every client exists once: idle here or held by a send, which gives
        # it back (or a fresh one) however the send ends, so the pool never runs dry.
        self._pool: asyncio.Queue[_Connection] = asyncio.Queue()
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
        self._templates = MessageTemplates()
        self._stopping = False

    def reconfigure(self, cfg: EmailConfig) -> None:
        """New settings (server, credentials, concurrency...) apply at once: idle connections
        are replaced now, the ones in use when their send ends."""
        self._cfg = cfg
        self._templates.clear()  # the sender or the Message-ID domain may have changed
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
            self._pool.put_nowait(_Connection(self._new_client, self._cfg.timeout))
            self._clients += 1

    def _give_back(self, client: _Connection, broken: bool) -> None:
        self._in_use.discard(id(client))
        stale = id(client) in self._stale
        self._stale.discard(id(client))
        if self._clients > self._cfg.concurrency:  # the limit was lowered
            self._clients -= 1
            client.close()
        elif broken or stale:
            client.close()
            self._pool.put_nowait(_Connection(self._new_client, self._cfg.timeout))
        else:
            self._pool.put_nowait(client)

    @property
    def domain(self) -> str:
        return self._cfg.message_id_domain or self._cfg.sender.rpartition("@")[2] or "localhost"

    async def start(self) -> None:
        self._grow()
        if self._probe_task is None:
            self._stopping = False
            self._probe_now.set()
            self._probe_task = asyncio.create_task(self._probe_loop(), name="smtp-probe")

    async def stop(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None:
            # Python 3.11's wait_for (inside aiosmtplib) can swallow a cancellation that lands
            # as a reply arrives; the flag and the event end the loop even then.
            self._stopping = True
            self._probe_now.set()
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
        # While an attempt's outcome is stored, the next one already has the connection
        # (`_turns` keeps `concurrency` on the wire at a time), and the ones after it are
        # claimed: nothing waits for the store when a connection frees.
        cfg = self._cfg
        return Limits(
            ATTEMPTS_PER_CONNECTION * cfg.concurrency,
            cfg.rate,
            cfg.retry.policy(),
            claim_ahead=CLAIMED_AHEAD_PER_CONNECTION * cfg.concurrency,
        )

    async def prepare(self, job: Job) -> Mapping[str, str]:
        return {}

    async def send(self, attempt: Attempt) -> Outcome:
        async with self._turns.hold(attempt.priority):
            return await self._send(attempt)

    async def _send(self, attempt: Attempt) -> Outcome:
        client = await self._pool.get()
        self._in_use.add(id(client))
        try:
            if not client.is_connected:
                await client.open()
            msg_id = await self._transmit(client, attempt)
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
            provider_ids=(msg_id,),
            detail="accepted by mail server",
        )

    async def _transmit(self, conn: _Connection, attempt: Attempt) -> str:
        """Send one message on an open connection; returns its Message-ID."""
        pipe = conn.pipe
        assert pipe is not None
        rendered = self._templates.render(
            attempt, self._cfg.sender, self.domain, eight_bit=conn.eight_bit
        )
        if rendered is None:  # an address or id the template cannot take as it is
            msg = build_message(attempt, self._cfg.sender, self.domain)
            data, sender, options = _serialise(msg, attempt.address, conn)
            await pipe.sendmail(sender, attempt.address, data, options)
            return str(msg["Message-ID"])
        options = ["BODY=8BITMIME"] if conn.eight_bit else []
        await pipe.sendmail(rendered.envelope_sender, attempt.address, rendered.data, options)
        return rendered.message_id

    # -- probing ---------------------------------------------------------------------------
    async def _probe_loop(self) -> None:
        while not self._stopping:
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
