"""The gateway's side of its status child (gateway.status_child): the outgoing queue is handed
to a process of its own, which publishes it on the status connection.

The queue stays the gateway's (bounded, oldest dropped when full, kept over broker outages):
the child holds at most HANDED messages, which the gateway keeps until the child reports them
finished. When the child dies, they go back to the head of the queue and a new child sends
them (QoS 1: a message may then arrive twice, never not at all); the new child starts at once,
or with backoff if it keeps dying. Costs per message on the gateway's loop: its frame and one
pipe write per batch, instead of paho's packet building, write and PUBACK reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections import deque
from pathlib import Path

from .mqtt_publisher import PUBLISH_TIMEOUT, Outgoing
from .status_wire import DONE, DOWN, NOW_FRAME, UP, ChildSetup, WireError, encode, setup_frame

HANDED = 1024  # messages the child holds (queued or unconfirmed there), at most
FEED_BATCH = 256  # messages per pipe write, at most
STOP_GRACE = 5.0  # seconds a closing child may take to publish what it holds
# Seconds a connected child may hold messages without a report before it is taken for stuck
# and replaced: its own publisher reconnects after PUBLISH_TIMEOUT (10 s) without a PUBACK,
# and says so, so silence this long means its loop no longer runs.
STALL_S = 3 * PUBLISH_TIMEOUT

log = logging.getLogger("gateway.mqtt")


class _ChildEnded(Exception):
    pass


def _command() -> tuple[list[str], dict[str, str]]:
    """The child: this interpreter, this installation's `gateway` package (the directory it
    was imported from comes first on the path), never the working directory (-P)."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}
    return [sys.executable, "-P", "-m", "gateway.status_child"], env


class StatusProcess:
    """Publishes `out` through a child process; the same face as mqtt_publisher.Publisher
    (`connected`, `error`, `now`, `unconfirmed`, `run()`)."""

    def __init__(self, setup: ChildSetup, out: deque[Outgoing], ready: asyncio.Event) -> None:
        self._setup = setup
        self._out = out
        self._ready = ready
        self._handed: deque[Outgoing] = deque()
        self.connected = asyncio.Event()
        self.now = asyncio.Event()  # reconnect now: handed on to the child, and cuts a restart
        self.error: str | None = None
        self.pid: int | None = None
        self._was_up = False  # the current child has been connected
        self._progress = 0.0  # loop time of the child's last report, or of a first message handed

    @property
    def unconfirmed(self) -> int:
        return len(self._handed)

    async def run(self) -> None:
        delay = self._setup.initial_delay
        while True:
            self.now.clear()
            try:
                await self._serve()
            except _ChildEnded as exc:
                self.error = f"status process: {exc}"
            except (OSError, WireError) as exc:
                self.error = f"status process: {exc!r}"
            finally:
                self.connected.clear()
                self.pid = None
                # What the child held and did not report finished goes to it again.
                self._out.extendleft(reversed(self._handed))
                self._handed.clear()
            if self._was_up:
                delay = self._setup.initial_delay
            log.warning("%s; starting another in %.1fs", self.error, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.now.wait()
            delay = min(delay * 2, self._setup.max_delay)

    async def _serve(self) -> None:
        command, env = _command()
        self._was_up = False
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
        )
        self.pid = proc.pid
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(setup_frame(self._setup))
        feed = asyncio.create_task(self._feed(proc.stdin), name="status-feed")
        reports = asyncio.create_task(self._reports(proc.stdout), name="status-reports")
        try:
            done, _ = await asyncio.wait({feed, reports}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (feed, reports):
                task.cancel()
            await asyncio.gather(feed, reports, return_exceptions=True)
            await self._close(proc)
        for task in done:
            exc = task.exception()
            if isinstance(exc, ConnectionError):  # the pipe broke: the child is gone
                break
            if exc is not None:
                raise exc
        raise _ChildEnded(f"ended with exit status {proc.returncode}")

    async def _close(self, proc: asyncio.subprocess.Process) -> None:
        """Let the child publish what it holds and exit (STOP_GRACE), then kill it."""
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        finally:
            # Also when this wait is cancelled (a stop that would not wait): no child outlives
            # its gateway's link for long. The event loop's child watcher reaps it.
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    async def _feed(self, stdin: asyncio.StreamWriter) -> None:
        out, handed, ready = self._out, self._handed, self._ready
        while True:
            if self.now.is_set():
                self.now.clear()
                stdin.write(NOW_FRAME)
            room = min(HANDED - len(handed), len(out), FEED_BATCH)
            if room > 0:
                if not handed:  # the child's silence counts from here (see _reports)
                    self._progress = asyncio.get_running_loop().time()
                batch = [out.popleft() for _ in range(room)]
                handed.extend(batch)
                stdin.write(encode(batch))
                await stdin.drain()
                continue
            ready.clear()
            await ready.wait()

    async def _reports(self, stdout: asyncio.StreamReader) -> None:
        handed = self._handed
        loop = asyncio.get_running_loop()
        while True:
            try:
                # (readline keeps a partial line buffered when the wait ends.)
                line = await asyncio.wait_for(stdout.readline(), STALL_S / 3)
            except TimeoutError:
                stalled = loop.time() - self._progress > STALL_S
                if handed and self.connected.is_set() and stalled:
                    raise WireError(
                        f"no report in {STALL_S:.0f} s with {len(handed)} messages held"
                    ) from None
                continue
            if not line:
                return
            self._progress = loop.time()
            kind, _, rest = line.rstrip(b"\n").partition(b" ")
            if kind == DONE:
                n = int(rest) if rest.isdigit() else 0
                if not 0 < n <= len(handed):
                    raise WireError(f"the child reported {n} finished of {len(handed)}")
                for _ in range(n):
                    handed.popleft()
                self._ready.set()
            elif kind == UP:
                self.error = None
                self._was_up = True
                self.connected.set()
            elif kind == DOWN:
                self.connected.clear()
                self.error = rest.decode("utf-8", "replace")
            else:
                raise WireError(f"unknown report {kind!r}")
