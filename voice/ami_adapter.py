"""The one place that reaches inside panoramisk (bounded in pyproject.toml: >=1.4,<1.5).

voice/ami.py owns the AMI session (login, keep-alive, reconnect, never replaying an action);
panoramisk gives it the wire protocol. For that the session needs four things panoramisk does
not publish: a Manager that does not reconnect by itself, `connection_made()` fed with an
already opened transport, `authenticated_future`, and the queue of unanswered actions
(`awaiting_actions`, whose items hold a `.future` in 1.4; the next version makes the action
itself the future). `missing_internals()` names any of them that a new release removed, and
tests/test_borrowed_internals.py fails with that list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import panoramisk
from panoramisk.ami_protocol import AMIProtocol

__all__ = ["AMIProtocol", "Manager", "fail_awaiting_actions", "missing_internals"]


class Manager(panoramisk.Manager):  # type: ignore[misc]
    """panoramisk's Manager, but the session (not panoramisk) decides about reconnecting."""

    pinger: Any

    def __init__(self, on_lost: Callable[[object], None], **config: Any) -> None:
        super().__init__(**config)
        self._on_lost = on_lost

    def connection_lost(self, exc: object) -> None:
        # panoramisk's own connection_lost schedules a reconnect that replays queued actions:
        # an Originate sent twice is a member called twice. Ours only reports the loss.
        self._connected = False
        if self.pinger:
            self.pinger.cancel()
            self.pinger = None
        self._on_lost(exc)

    def open(self, transport: Any, protocol: Any) -> asyncio.Future[Any]:
        """Hand panoramisk a connection we opened (with our timeout); it sends Login.

        Returns the future of the Login reply.
        """
        opened: asyncio.Future[tuple[Any, Any]] = asyncio.get_running_loop().create_future()
        opened.set_result((transport, protocol))
        self.connection_made(opened)
        login: asyncio.Future[Any] = self.authenticated_future
        return login


def fail_awaiting_actions(manager: Any, exc: BaseException) -> None:
    """Fail every action panoramisk keeps to replay after a reconnect, and forget them."""
    for queued in list(manager.awaiting_actions):
        future = getattr(queued, "future", queued)  # 1.4: Action.future; later: the Action
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(exc)
    manager.awaiting_actions.clear()


def missing_internals() -> list[str]:
    """The panoramisk internals this adapter relies on that the installed version lacks."""
    missing = []
    manager_cls = panoramisk.Manager
    for name in ("connection_made", "connection_lost", "send_action", "register_event", "close"):
        if not callable(getattr(manager_cls, name, None)):
            missing.append(f"panoramisk.Manager.{name}()")
    loop = asyncio.new_event_loop()
    try:
        manager, action = loop.run_until_complete(_instances(manager_cls))
    finally:
        loop.close()
    for attr in ("awaiting_actions", "authenticated_future", "pinger", "protocol"):
        if not hasattr(manager, attr):
            missing.append(f"panoramisk.Manager().{attr}")
    if action is None:
        missing.append("panoramisk.actions.Action")
    elif not isinstance(action, asyncio.Future) and not isinstance(
        getattr(action, "future", None), asyncio.Future
    ):
        missing.append("panoramisk.actions.Action().future (or Action as a future)")
    return missing


async def _instances(manager_cls: Any) -> tuple[Any, Any]:
    manager = manager_cls(loop=asyncio.get_running_loop(), ping_delay=10**6)
    action_cls = getattr(panoramisk.actions, "Action", None)
    action = None if action_cls is None else action_cls({"Action": "Ping"})
    return manager, action
