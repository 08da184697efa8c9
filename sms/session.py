"""One SMSC as an ESME over asyncio: bind, window of submit_sm, pacing, keep-alive, reconnect.

`Session.submit()` returns the SMSC's message id or raises: `LinkUnavailable` (not sent,
safe to send elsewhere or later without using up an attempt), `TemporaryError("possibly_sent")`
(written, no answer), `TemporaryError` / `PermanentError` named after the command_status (e.g.
`ESME_RINVDSTADR`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from gateway.domain import Priority
from gateway.errors import LinkUnavailable, PermanentError, TemporaryError

from . import pdu as P
from .config import SmscConfig
from .pacing import Gate, Pacer

log = logging.getLogger("sms.session")

#: A deliver_sm's handler: its response status now, or a future that says whether what the
#: PDU carried is stored (True: ROK; False or cancelled: "retry later", the SMSC resends).
#: The response then waits for it, so a crash before the news is stored makes the SMSC
#: deliver it again instead of losing it.
DeliverHandler = Callable[[P.Pdu], "int | asyncio.Future[bool]"]

MAX_THROTTLE_RETRIES = 20
# The reconnect backoff starts over after a healthy bind: one that answered a submit_sm
# (whatever its length: an SMSC may close every session after N submits), or one that lasted
# this long. A bind that carried nothing keeps the exponential backoff.
STABLE_AFTER = 5.0


class BindState(enum.StrEnum):
    DOWN = "down"
    CONNECTING = "connecting"
    BOUND = "bound"
    STOPPED = "stopped"


class BindRejected(ConnectionError):
    """The SMSC answered the bind with an error status (wrong password, ...)."""


class LinkLost(ConnectionError):
    """The TCP connection closed while a response was awaited."""


class ResponseTimeout(TimeoutError):
    """No response within `response_timeout`."""


class _Link(asyncio.Protocol):
    """One TCP connection: frames in, responses matched to requests by sequence number.

    Requests time out through one sweep timer per link rather than a timer per request:
    `pending` is in send order and all requests share one timeout, so the sweep stops at the
    first request still in time.
    """

    def __init__(
        self, name: str, on_request: Callable[[_Link, P.Pdu], None], response_timeout: float
    ) -> None:
        self.name = name
        self._on_request = on_request
        self._frames = P.FrameReader()
        self._seq = 0
        self._timeout = response_timeout
        self._loop = asyncio.get_running_loop()
        self._sweeper: asyncio.TimerHandle | None = None
        self.pending: dict[int, tuple[asyncio.Future[P.Pdu], float]] = {}
        self.transport: asyncio.Transport | None = None
        self._writer: P.FrameWriter | None = None
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()
        self._writable.set()
        self.last_received = time.monotonic()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._writer = P.FrameWriter(transport)
        self._sweeper = self._loop.call_later(self._sweep_interval, self._sweep)

    @property
    def _sweep_interval(self) -> float:
        return min(0.5, self._timeout / 4)

    def _sweep(self) -> None:
        now = self._loop.time()
        expired = []
        for seq, (fut, deadline) in self.pending.items():
            if deadline > now:
                break
            expired.append(seq)
            if not fut.done():
                fut.set_exception(ResponseTimeout(f"no response within {self._timeout}s"))
        for seq in expired:
            del self.pending[seq]
        if self.is_open:
            self._sweeper = self._loop.call_later(self._sweep_interval, self._sweep)

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        try:
            frames = self._frames.feed(data)
            for frame in frames:
                if frame.is_response:
                    entry = self.pending.pop(frame.sequence, None)
                    if entry is not None and not entry[0].done():
                        entry[0].set_result(frame)
                    elif frame.command_id == P.Cmd.GENERIC_NACK:
                        log.warning(
                            "smsc %s: generic_nack %s for sequence %d",
                            self.name, P.status_name(frame.status), frame.sequence,
                        )  # fmt: skip
                else:
                    self._on_request(self, frame)
        except P.PduError as exc:
            log.error("smsc %s: malformed PDU (%s): resetting the link", self.name, exc)
            self.close(f"malformed PDU: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed by the SMSC"
        if not self.closed.done():
            self.closed.set_result(reason)
        for fut, _deadline in self.pending.values():
            if not fut.done():
                fut.set_exception(LinkLost(reason))
        self.pending.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # used by the session
    @property
    def is_open(self) -> bool:
        return not self.closed.done()

    def next_sequence(self) -> int:
        self._seq = self._seq + 1 if self._seq < P.MAX_SEQUENCE else 1
        return self._seq

    async def writable(self) -> None:
        await self._writable.wait()

    def write(self, data: bytes) -> None:
        if self._writer is None or not self.is_open:
            raise LinkLost("not connected")
        self._writer.write(data)

    def request(self, sequence: int, data: bytes) -> asyncio.Future[P.Pdu]:
        """Write a request; the future resolves with its response (or generic_nack)."""
        fut: asyncio.Future[P.Pdu] = self._loop.create_future()
        self.write(data)
        self.pending[sequence] = (fut, self._loop.time() + self._timeout)
        return fut

    def forget(self, sequence: int) -> None:
        self.pending.pop(sequence, None)

    def close(self, reason: str, *, graceful: bool = False) -> None:
        """Close at once (a broken link), or after what was written (`graceful`)."""
        if not self.closed.done():
            self.closed.set_result(reason)
        if self.transport is None:
            return
        if graceful and self._writer is not None:
            self._writer.flush()
            self.transport.close()
        else:
            self.transport.abort()


class Session:
    """A self-healing bind to one SMSC. `start()` never fails because the SMSC is down."""

    def __init__(self, config: SmscConfig, on_deliver: DeliverHandler) -> None:
        self.config = config
        self.name = config.name
        self._on_deliver = on_deliver
        self._state = BindState.DOWN
        self._state_changed = asyncio.Event()
        self.last_error: str | None = None
        self.pacer = Pacer(
            config.rate,
            pause=config.throttle_pause,
            factor=config.throttle_factor,
            recovery_interval=config.recovery_interval,
        )
        self._gate = Gate(self.pacer, config.window)  # window and pacing, hot first
        self.outstanding = 0  # submit_sm written and not answered
        self.waiting = 0  # submit() calls holding or waiting for a window slot
        self.submitted = 0
        self.throttled = 0
        self._answered = 0  # submit_sm answered on the current bind: it carried traffic
        self._tx: _Link | None = None
        self._links: list[_Link] = []
        self._bound = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._probe = asyncio.Event()
        self._drained = asyncio.Event()

    # lifecycle
    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"smsc-{self.name}")

    async def stop(self) -> None:
        """Let answered-soon submits finish, unbind cleanly, close."""
        self._stopping = True
        if self.outstanding:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.config.response_timeout, 5.0)):
                    await self._drained.wait()
        if self._bound.is_set():
            await self._unbind_all()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in self._links:
            link.close("stopped")
        self._bound.clear()
        self.state = BindState.STOPPED

    @property
    def state(self) -> BindState:
        return self._state

    @state.setter
    def state(self, value: BindState) -> None:
        if value != self._state:
            self._state = value
            self._state_changed.set()
            self._state_changed = asyncio.Event()

    async def wait_state(self, state: BindState, within: float) -> bool:
        """Wait until the bind reaches `state`; False after `within` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self._state != state:
                    await self._state_changed.wait()
        return self._state == state

    @property
    def bound(self) -> bool:
        return self._bound.is_set() and not self._stopping

    async def wait_bound(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._bound.wait()
        return self.bound

    def load(self) -> float:
        """Share of the window in use or asked for: the channel prefers the lowest."""
        return self.waiting / self.config.window

    def health(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": str(self.state),
            "window_in_use": self.outstanding,
            "window": self.config.window,
            "rate": round(self.pacer.rate, 2),
            "last_error": self.last_error,
            "submitted": self.submitted,
            "throttled": self.throttled,
        }

    # submitting
    async def submit(self, sm: P.SubmitSm, priority: Priority = Priority.COLD) -> str:
        """Submit one part; the SMSC's message id, or a typed error (see module doc).

        A hot part takes the next window and pacing slot before any cold part waiting."""
        self.waiting += 1
        try:
            for _ in range(MAX_THROTTLE_RETRIES):
                resp = await self._submit_once(sm, priority)
                status = resp.status
                if status == P.ESME_ROK and resp.command_id == P.Cmd.SUBMIT_SM_RESP:
                    self.pacer.accepted()
                    return P.decode_message_id(resp.body)
                name = P.status_name(status)
                if status == P.ESME_RTHROTTLED:
                    # Rejected, so certainly not sent: slow down and try again on this bind.
                    self.throttled += 1
                    self.pacer.throttled()
                    continue
                if resp.command_id == P.Cmd.GENERIC_NACK:
                    log.warning("smsc %s: generic_nack %s to submit_sm", self.name, name)
                if P.is_temporary(status):
                    retry = self.config.throttle_pause if status == P.ESME_RMSGQFUL else None
                    raise TemporaryError(name, P.status_name(status), retry_after=retry)
                raise PermanentError(name)
            raise TemporaryError("ESME_RTHROTTLED", "still throttled", self.config.throttle_pause)
        finally:
            self.waiting -= 1

    async def _submit_once(self, sm: P.SubmitSm, priority: Priority) -> P.Pdu:
        await self._gate.acquire(priority)
        try:
            link = self._tx
            if link is None or not self.bound or not link.is_open:
                if link is not None and not link.is_open:
                    self._bound.clear()  # before `_link_closed` runs: wait for the next bind
                raise LinkUnavailable("link_down", f"smsc {self.name} not bound")
            await link.writable()
            seq = link.next_sequence()
            try:
                fut = link.request(seq, P.encode_submit_sm(seq, sm))
            except LinkLost as exc:
                raise LinkUnavailable("link_down", str(exc)) from exc
            self.outstanding += 1
            self.submitted += 1
            try:
                resp = await fut
                self._answered += 1
                return resp
            except ResponseTimeout:
                self.last_error = "submit_sm_resp timeout"
                self._probe.set()  # check the link now rather than at the next interval
                raise TemporaryError(
                    "possibly_sent", f"no submit_sm_resp within {self.config.response_timeout}s"
                ) from None
            except LinkLost as exc:
                raise TemporaryError("possibly_sent", str(exc)) from exc
            finally:
                self.outstanding -= 1
                if not self.outstanding:
                    self._drained.set()
        finally:
            self._gate.release()

    # incoming requests
    def _on_request(self, link: _Link, frame: P.Pdu) -> None:
        cmd = frame.command_id
        if cmd == P.Cmd.DELIVER_SM:
            status = self._on_deliver(frame)  # may raise PduError: the link is reset
            if isinstance(status, int):
                link.write(_deliver_sm_resp(frame.sequence, status))
            else:
                status.add_done_callback(functools.partial(_respond_later, link, frame.sequence))
        elif cmd == P.Cmd.ENQUIRE_LINK:
            link.write(P.header_only(P.Cmd.ENQUIRE_LINK_RESP, frame.sequence))
        elif cmd == P.Cmd.UNBIND:
            log.warning("smsc %s: the SMSC unbinds", self.name)
            link.write(P.header_only(P.Cmd.UNBIND_RESP, frame.sequence))
            link.close("unbound by the SMSC", graceful=True)
        elif cmd == P.Cmd.ALERT_NOTIFICATION:
            pass  # no response is defined
        else:
            link.write(P.header_only(P.Cmd.GENERIC_NACK, frame.sequence, P.ESME_RINVCMDID))

    # connection management
    async def _run(self) -> None:
        cfg = self.config
        delay = cfg.reconnect_initial_delay
        while not self._stopping:
            self.state = BindState.CONNECTING
            bound_at = 0.0
            self._answered = 0
            try:
                self._links = await self._open()
                self._tx = self._links[0]
                for link in self._links:
                    link.closed.add_done_callback(functools.partial(self._link_closed, link))
                bound_at = time.monotonic()
                self.state = BindState.BOUND
                self._bound.set()
                log.info("smsc %s: bound (%s)", self.name, cfg.bind_mode)
                reason = await self._serve()
                self.last_error = reason
                log.warning("smsc %s: link down: %s", self.name, reason)
            except BindRejected as exc:
                self.last_error = f"bind rejected: {exc}"
                log.error("smsc %s: bind rejected: %s (check system_id/password)", self.name, exc)
            except (OSError, TimeoutError, P.PduError) as exc:
                self.last_error = f"connect failed: {exc!r}"
                log.warning("smsc %s: cannot connect/bind: %r", self.name, exc)
            finally:
                self._bound.clear()
                self._tx = None
                for link in self._links:
                    link.close("reconnecting")
            if self._stopping:
                break
            self.state = BindState.DOWN
            if self._answered or (bound_at and time.monotonic() - bound_at >= STABLE_AFTER):
                delay = cfg.reconnect_initial_delay
            wait = delay * random.uniform(0.8, 1.2)
            log.info(
                "smsc %s: binding again in %.2fs (%d submit_sm answered on the last bind)",
                self.name, wait, self._answered,
            )  # fmt: skip
            await asyncio.sleep(wait)
            # While down, each reconnect is the probe: at least one per enquire_link interval,
            # so a recovered SMSC shows within one interval.
            delay = min(cfg.reconnect_max_delay, cfg.enquire_link_interval, delay * 2)

    def _link_closed(self, link: _Link, _closed: asyncio.Future[str]) -> None:
        # Not bound from the moment a link closes (`_run` notices a moment later): a send
        # waits for the next bind instead of finding the closed link again and again.
        if link in self._links:
            self._bound.clear()

    async def _open(self) -> list[_Link]:
        cfg = self.config
        if cfg.bind_mode == "transceiver":
            modes = [("bind_transceiver", P.Cmd.BIND_TRANSCEIVER_RESP)]
        else:
            modes = [
                ("bind_transmitter", P.Cmd.BIND_TRANSMITTER_RESP),
                ("bind_receiver", P.Cmd.BIND_RECEIVER_RESP),
            ]
        links: list[_Link] = []
        try:
            for command, resp_id in modes:
                links.append(await self._connect_and_bind(command, resp_id))
        except BaseException:
            for link in links:
                link.close("bind incomplete")
            raise
        return links

    async def _connect_and_bind(self, command: str, resp_id: int) -> _Link:
        cfg = self.config
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(cfg.connect_timeout):
            _t, link = await loop.create_connection(
                lambda: _Link(self.name, self._on_request, cfg.response_timeout),
                cfg.host,
                cfg.port,
            )
        try:
            seq = link.next_sequence()
            data = P.encode(
                command, seq, system_id=cfg.system_id, password=cfg.password,
                system_type=cfg.system_type, addr_ton=0, addr_npi=0, address_range="",
            )  # fmt: skip
            async with asyncio.timeout(cfg.response_timeout):
                resp = await link.request(seq, data)
        except LinkLost as exc:
            link.close("bind failed")
            raise ConnectionError(str(exc)) from exc
        except BaseException:
            link.close("bind failed")
            raise
        if resp.status != P.ESME_ROK or resp.command_id != resp_id:
            link.close("bind rejected")
            raise BindRejected(P.status_name(resp.status))
        return link

    async def _serve(self) -> str:
        """Keep the bind alive until a link closes; returns why."""
        cfg = self.config
        closed: list[asyncio.Future[str]] = [link.closed for link in self._links]
        while True:
            self._probe.clear()
            probe = asyncio.ensure_future(self._probe.wait())
            waiting: list[asyncio.Future[Any]] = [*closed, probe]
            try:
                done, _ = await asyncio.wait(
                    waiting,
                    timeout=cfg.enquire_link_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                probe.cancel()
            for fut in closed:
                if fut.done():
                    return fut.result()
            for link in self._links:
                if not await self._enquire(link):
                    link.close("enquire_link timeout")
                    return "enquire_link timeout"
            if probe in done:
                log.info("smsc %s: link answers enquire_link after a submit timeout", self.name)

    async def _enquire(self, link: _Link) -> bool:
        seq = link.next_sequence()
        try:
            async with asyncio.timeout(self.config.response_timeout):
                await link.request(seq, P.header_only(P.Cmd.ENQUIRE_LINK, seq))
        except (TimeoutError, LinkLost):
            link.forget(seq)
            return False
        return True

    async def _unbind_all(self) -> None:
        for link in self._links:
            if not link.is_open:
                continue
            seq = link.next_sequence()
            try:
                async with asyncio.timeout(min(self.config.response_timeout, 5.0)):
                    await link.request(seq, P.header_only(P.Cmd.UNBIND, seq))
                log.info("smsc %s: unbound", self.name)
            except (TimeoutError, LinkLost) as exc:
                log.warning("smsc %s: no unbind_resp (%r)", self.name, exc)


def _respond_later(link: _Link, sequence: int, stored: asyncio.Future[bool]) -> None:
    """deliver_sm_resp once the news is stored (ROK), or could not be (retry later)."""
    if link.is_open:
        ok = not stored.cancelled() and stored.result()
        link.write(_deliver_sm_resp(sequence, P.ESME_ROK if ok else P.ESME_RX_T_APPN))
    # else: the link is gone; the SMSC delivers the unacknowledged PDU again


def _deliver_sm_resp(sequence: int, status: int) -> bytes:
    body = b"\x00"  # message_id: unused, always empty
    return P.HEADER.pack(P.HEADER_LEN + 1, P.Cmd.DELIVER_SM_RESP, status, sequence) + body
