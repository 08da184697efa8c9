"""Asterisk Manager Interface session: login, keep-alive, reconnect, events.

panoramisk (behind voice/ami_adapter.py) gives the wire protocol and event dispatch; this
module owns the session: it never lets panoramisk replay an action after a reconnect (an
Originate sent twice is a member called twice), fails pending actions when the link drops,
and backs off on errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.errors import GatewayError, LinkDown

from .ami_adapter import AMIProtocol, Manager, fail_awaiting_actions
from .config import AmiConfig

log = logging.getLogger("voice.ami")

EventHandler = Callable[[Mapping[str, Any]], None]
ConnectedHandler = Callable[[], Awaitable[None]]


class AmiError(GatewayError):
    """Base of the AMI session's errors."""


class AmiActionError(AmiError):
    """Asterisk answered an action with `Response: Error`."""

    def __init__(self, action: str, message: str) -> None:
        self.action = action
        self.message = message
        super().__init__(f"{action}: {message}")


class AmiAuthError(AmiError, PermissionError):
    """Login refused ("Authentication failed")."""


class AmiNotConnected(LinkDown):
    """No usable AMI session right now (down, logging in, or lost during the action)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("ami_down", detail)


DB_NOT_FOUND = "Database entry not found"  # main/db.c, for DBGet, DBDel and DBDelTree


def db_get_value(reply: Any) -> str | None:
    """The `Val` of a successful `DBGet` reply as panoramisk returns it.

    Asterisk answers `Response: Success` (`EventList: start`, "Result will follow"), then
    `Event: DBGetResponse` (Family, Key, Val), then `Event: DBGetComplete`; panoramisk
    collects them into a list. A reply without a DBGetResponse has no value (None).
    """
    for message in reply if isinstance(reply, list) else [reply]:
        if message is not None and str(message.get("Event", "")) == "DBGetResponse":
            value = message.get("Val")
            if isinstance(value, list):  # a repeated header: the last one counts
                value = value[-1] if value else None
            return None if value is None else str(value)
    return None


class AmiClient:
    """One AMI session kept alive in the background: `start()`, `action()`, `stop()`."""

    def __init__(
        self,
        config: AmiConfig,
        on_event: EventHandler,
        on_connected: ConnectedHandler | None = None,
    ) -> None:
        self._cfg = config
        self._on_event = on_event
        self._on_connected = on_connected
        self._manager: Manager | None = None
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._lost: asyncio.Event = asyncio.Event()
        self._pending: set[asyncio.Future[Any]] = set()
        self._hooks: set[asyncio.Task[None]] = set()
        # stopped, connecting (first connection or new settings), logging_in, up, down,
        # auth_failed; Ping every `ping_interval` while up, a reconnect at least as often
        # while down.
        self.state = "stopped"
        self.last_error: str | None = None
        self.since = time.time()
        self.connects = 0
        self.failures = 0
        self.next_retry_in: float | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting in the background; never fails because Asterisk is down."""
        if self._task is None:
            self._set_state("connecting")
            self._task = asyncio.create_task(self._run(), name="ami-session")

    async def stop(self) -> None:
        for hook in list(self._hooks):
            hook.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._manager is not None and self.state == "up":
            with contextlib.suppress(AmiError, LinkDown, TimeoutError):
                await self.action({"Action": "Logoff"}, within=2.0)
        self._close()
        self._set_state("stopped")

    async def reconfigure(self, config: AmiConfig) -> None:
        """New server or credentials: drop the session and log in again with them now."""
        if config == self._cfg:
            return
        self._cfg = config
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._close()
        self._set_state("connecting")
        log.info("AMI settings changed: reconnecting")
        self._task = asyncio.create_task(self._run(), name="ami-session")

    @property
    def is_up(self) -> bool:
        return self.state == "up"

    async def wait_up(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._up.wait()
        return self.is_up

    def health(self) -> dict[str, object]:
        return {
            "state": self.state,
            "server": f"{self._cfg.host}:{self._cfg.port}",
            "since": self.since,
            "connects": self.connects,
            "failures": self.failures,
            "last_error": self.last_error,
            "next_retry_in": self.next_retry_in,
        }

    # -- actions ---------------------------------------------------------------------------
    async def action(
        self,
        fields: Mapping[str, Any],
        *,
        within: float | None = None,
        as_list: bool | None = None,
    ) -> Any:
        """Send an action; return panoramisk's Message (or list for event lists).

        Raises AmiNotConnected (link down/lost), AmiActionError (Response: Error) or
        TimeoutError. Actions are never re-sent automatically.
        """
        manager = self._manager
        if manager is None or manager.protocol is None or self.state not in ("up", "logging_in"):
            raise AmiNotConnected(self.state)
        future: asyncio.Future[Any] = manager.send_action(dict(fields), as_list=as_list)
        self._pending.add(future)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives together with the reply, and a cancelled call must hang up.
            async with asyncio.timeout(within or self._cfg.action_timeout):
                result = await asyncio.shield(future)
        finally:
            self._pending.discard(future)
        first = result[0] if isinstance(result, list) and result else result
        if first is not None and str(first.get("Response", "")) == "Error":
            raise AmiActionError(str(fields.get("Action", "?")), str(first.get("Message", "")))
        return result

    # -- AstDB -----------------------------------------------------------------------------
    async def db_get(self, family: str, key: str, *, within: float | None = None) -> str | None:
        """`DBGet`: the value, or None when Asterisk has no such entry.

        Raises AmiNotConnected / TimeoutError / AmiActionError (another error) like action().
        """
        try:
            reply = await self.action(
                {"Action": "DBGet", "Family": family, "Key": key}, within=within
            )
        except AmiActionError as exc:
            if exc.message == DB_NOT_FOUND:
                return None
            raise
        return db_get_value(reply)

    async def db_del(self, family: str, key: str, *, within: float | None = None) -> bool:
        """`DBDel`: True if the entry existed and is gone, False if there was none."""
        try:
            await self.action({"Action": "DBDel", "Family": family, "Key": key}, within=within)
        except AmiActionError as exc:
            if exc.message == DB_NOT_FOUND:
                return False
            raise
        return True

    # -- the session -----------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self._cfg.reconnect_initial_delay
        while True:
            try:
                await self._session()
                delay = self._cfg.reconnect_initial_delay  # it was up: start over quickly
            except AmiAuthError as exc:
                self.failures += 1
                self._set_state("auth_failed", str(exc))
            except (OSError, TimeoutError, AmiError, LinkDown) as exc:
                self.failures += 1
                self._set_state("down", f"{type(exc).__name__}: {exc}")
            finally:
                self._close()
            self.next_retry_in = delay
            await asyncio.sleep(delay)
            self.next_retry_in = None
            # While down, each reconnect is the probe: at least one per ping interval, so a
            # recovered Asterisk shows within one interval. The state stays down (or
            # auth_failed) until a login succeeds: health must not flicker to a usable link.
            delay = min(self._cfg.reconnect_max_delay, self._cfg.ping_interval, delay * 2)

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self._cfg
        self._lost = asyncio.Event()
        manager = Manager(
            self._connection_lost,
            host=cfg.host,
            port=cfg.port,
            username=cfg.username,
            secret=cfg.secret,
            loop=loop,
            ping_delay=10**6,  # our own keep-alive below, with a timeout
            log=log,
        )
        manager.register_event("*", self._dispatch)
        transport, protocol = await asyncio.wait_for(
            loop.create_connection(AMIProtocol, cfg.host, cfg.port), cfg.connect_timeout
        )
        self._manager = manager
        if self.state == "connecting":  # after a failure it stays down until logged in
            self.state = "logging_in"
        login = manager.open(transport, protocol)  # sends Login
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait(
                {login, lost}, timeout=cfg.connect_timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            lost.cancel()
        if not login.done():
            raise AmiNotConnected("no answer to Login")
        reply = login.result()
        if not reply.success:
            raise AmiAuthError(str(reply.get("Message", "")) or "Authentication failed")
        self.connects += 1
        self._set_state("up")
        self._up.set()
        if self._on_connected is not None:
            hook = asyncio.create_task(self._connected_hook(), name="ami-reconcile")
            self._hooks.add(hook)
            hook.add_done_callback(self._hooks.discard)
        while not self._lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), cfg.ping_interval)
            if self._lost.is_set():
                break
            await self.action({"Action": "Ping"}, within=cfg.action_timeout)
        raise AmiNotConnected("connection lost")

    async def _connected_hook(self) -> None:
        assert self._on_connected is not None
        try:
            await self._on_connected()
        except (AmiError, LinkDown, TimeoutError) as exc:
            log.warning("AMI reconcile after connect failed: %s", exc)

    def _dispatch(self, _manager: Any, event: Any) -> None:
        try:
            self._on_event(event)
        except Exception:  # a handler bug must not kill panoramisk's reader
            log.exception("AMI event handler failed on %s", event.get("Event"))

    def _connection_lost(self, exc: object) -> None:
        self._lost.set()
        self._fail_pending()

    def _fail_pending(self) -> None:
        manager = self._manager
        if manager is not None:
            # panoramisk queues unanswered actions to replay them after a reconnect: never.
            fail_awaiting_actions(manager, AmiNotConnected("connection lost"))
        for future in list(self._pending):
            if not future.done():
                future.set_exception(AmiNotConnected("connection lost"))

    def _close(self) -> None:
        self._up.clear()
        manager, self._manager = self._manager, None
        if manager is None:
            return
        manager.close()  # closes the transport; queues its pending actions...
        self._manager = manager
        self._fail_pending()  # ...which we fail instead
        self._manager = None

    def _set_state(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.since = time.time()
            level = logging.WARNING if state in ("down", "auth_failed") else logging.INFO
            log.log(
                level,
                "AMI %s (%s:%d)%s",
                state,
                self._cfg.host,
                self._cfg.port,
                f": {error}" if error else "",
            )
        self.state = state
        if error:
            self.last_error = error
