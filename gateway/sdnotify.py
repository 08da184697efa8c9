"""systemd service notifications (sd_notify protocol) without a dependency, and a watchdog
task that pings systemd only while the daemon says it is healthy.

The unit uses `Type=notify` (Debian 12 ships systemd 252; `Type=notify-reload` needs 253).
On SIGHUP the daemon sends `RELOADING=1` + `MONOTONIC_USEC`, then `READY=1` when done: the
same messages `Type=notify-reload` expects, so switching the unit later needs no code change.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger("gateway.sdnotify")

HealthCheck = Callable[[], bool | Awaitable[bool]]


def _one_line(text: str) -> str:
    # A field is one line of the datagram; a newline would start a new (bogus) field.
    return " ".join(text.split())


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd wants it in `MONOTONIC_USEC=`."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends sd_notify datagrams to `NOTIFY_SOCKET`; a silent no-op when not under systemd.

    Sending never raises: a lost notification must not take the daemon down (systemd will
    notice by itself through the start timeout or the watchdog).
    """

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self.socket_path = socket_path or None
        self.watchdog_usec = watchdog_usec
        self.sent = 0
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` like sd_watchdog_enabled()."""
        env = os.environ if env is None else env
        watchdog: int | None = None
        raw_usec = env.get("WATCHDOG_USEC", "")
        raw_pid = env.get("WATCHDOG_PID", "")
        # The watchdog is for the process systemd started; a child must not feed it.
        ours = not raw_pid or (raw_pid.isdigit() and int(raw_pid) == os.getpid())
        if raw_usec.isdigit() and int(raw_usec) > 0 and ours:
            watchdog = int(raw_usec)
        return cls(env.get("NOTIFY_SOCKET"), watchdog)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of `WATCHDOG_USEC` (as systemd recommends), or None."""
        if not self.enabled or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2_000_000

    def _address(self) -> str | bytes:
        assert self.socket_path is not None
        if self.socket_path.startswith("@"):
            # Abstract namespace: the leading '@' stands for a NUL byte.
            return b"\0" + self.socket_path[1:].encode()
        return self.socket_path

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` fields in one datagram; True when the datagram left."""
        if not self.enabled:
            return False
        data = "\n".join(fields).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(data, self._address())
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.socket_path, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1"]
        if status:
            fields.append("STATUS=" + _one_line(status))
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        return self.notify("STATUS=" + _one_line(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """Start of a reload; follow with `ready()` when the new configuration is in force."""
        fields = ["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"]
        if status:
            fields.append("STATUS=" + _one_line(status))
        return self.notify(*fields)

    def stopping(self, status: str | None = None) -> bool:
        fields = ["STOPPING=1"]
        if status:
            fields.append("STATUS=" + _one_line(status))
        return self.notify(*fields)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time for the current start/stop/reload (`EXTEND_TIMEOUT_USEC`)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """Feeds the systemd watchdog every `interval` seconds while `healthy()` holds.

    When the event loop hangs or `healthy()` stays false, pings stop and systemd restarts
    the service after `WatchdogSec`. `healthy` may be a plain or an async function; an async
    one that does not answer within half the interval counts as unhealthy.
    """

    def __init__(
        self, notifier: Notifier, healthy: HealthCheck, interval: float | None = None
    ) -> None:
        self.notifier = notifier
        self.healthy = healthy
        self.interval = interval if interval is not None else notifier.watchdog_interval()
        self.pings = 0
        self._task: asyncio.Task[None] | None = None
        self._was_healthy = True

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start pinging (no-op when systemd asked for no watchdog)."""
        if self.interval is None or self.active:
            return
        self._task = asyncio.create_task(self._run(), name="sd-watchdog")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _check(self) -> bool:
        assert self.interval is not None
        try:
            result = self.healthy()
            if inspect.isawaitable(result):
                # Half the interval, so that check + ping stay within one interval.
                return bool(await asyncio.wait_for(result, self.interval / 2))
            return bool(result)
        except TimeoutError:
            log.warning("watchdog: health check did not answer within %.2f s", self.interval / 2)
            return False
        except Exception:
            log.exception("watchdog: health check raised")
            return False

    async def _run(self) -> None:
        assert self.interval is not None
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            healthy = await self._check()
            if healthy:
                if self.notifier.watchdog():
                    self.pings += 1
                if not self._was_healthy:
                    log.info("watchdog: healthy again, pinging systemd")
            elif self._was_healthy:
                log.error("watchdog: unhealthy, no longer pinging systemd (restart pending)")
            self._was_healthy = healthy
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))
