"""Per-bind submit pacing: a configured rate, lowered on ESME_RTHROTTLED, then recovered;
and the `Gate` that grants the window and the pacing slots together, hot first.

Slots are reserved on an absolute timeline, so sleeping late does not lower the average rate;
a small catch-up burst is allowed and nothing more. Whatever the catch-up, a configured rate
is also a hard cap: never more than `rate` submits in any `WINDOW` (1 s and 5 % more, so that
the SMSC, which counts by its own clock after the network's and its own delays, never sees
more than `rate` in any second: an account's rate is what the operator sold). On throttling
the bind remembers the rate the SMSC actually accepted (its ceiling), drops below it, climbs
back to it, then probes slowly above it: against a fixed SMSC limit that means one
throttling event now and then.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable

MIN_RATE = 1.0
BURST = 2.0  # slots a late sender may catch up
PROBE = 1.05  # growth of the ceiling per quiet interval spent at it
WINDOW = 1.05  # at most `rate` submits in any WINDOW seconds (5 % headroom for jitter)


class _PerSecond:
    """Events over the last second, in 100 ms slots."""

    def __init__(self, now: float) -> None:
        self._slots = [0] * 10
        self._at = int(now * 10)
        self._since = now

    def _advance(self, now: float) -> None:
        slot = int(now * 10)
        if slot != self._at:
            for i in range(self._at + 1, min(slot, self._at + 10) + 1):
                self._slots[i % 10] = 0
            self._at = slot

    def add(self, now: float) -> None:
        self._advance(now)
        self._slots[self._at % 10] += 1

    def rate(self, now: float) -> float:
        self._advance(now)
        return sum(self._slots) / max(0.1, min(1.0, now - self._since))


class Pacer:
    """`await wait()` before each submit; `accepted()` / `throttled()` on the response."""

    def __init__(
        self,
        rate: float,
        *,
        pause: float = 1.0,
        factor: float = 0.8,
        recovery_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.configured = rate
        self.rate = rate  # 0 = unlimited
        self.ceiling = rate
        self._pause = pause
        self._factor = factor
        self._recovery = recovery_interval
        self._clock = clock
        self._next = 0.0
        self._paused_until = 0.0
        self._last_change = clock()
        self._accepted = _PerSecond(clock())
        self._granted: deque[float] = deque()  # the last slots taken, for the hard cap
        self.throttle_events = 0

    def set_rate(self, rate: float) -> None:
        """A new configured rate without binding again (several nodes share one account:
        gateway.cluster). A rate lowered by throttling stays lowered; a higher one is
        climbed back to as after throttling."""
        if rate == self.configured:
            return
        self.configured = self.ceiling = rate
        if rate <= 0 or self.rate <= 0 or self.rate > rate:
            self.rate = rate

    def _recover(self, now: float) -> None:
        if self.rate == self.configured or now - self._last_change < self._recovery:
            return
        self._last_change = now
        if self.rate >= self.ceiling:
            self.ceiling *= PROBE
        self.rate = min(self.rate / self._factor, self.ceiling)
        if self.configured:
            self.rate = min(self.rate, self.configured)
        elif self.rate > 4 * max(self._accepted.rate(now), MIN_RATE):
            self.rate = self.ceiling = 0.0  # far above any demand: unlimited again

    def reserve(self) -> float:
        """Reserve the next slot; returns how long to sleep before using it."""
        now = self._clock()
        self._recover(now)
        start = max(now, self._paused_until)
        if self.rate <= 0:
            return start - now
        interval = 1.0 / self.rate
        slot = max(self._next, start - BURST * interval, self._cap_until())
        self._next = slot + interval
        self._granted.append(max(slot, now))  # when it is used: now if late
        while len(self._granted) > self._cap():
            self._granted.popleft()
        return max(0.0, slot - now)

    def _cap(self) -> int:
        return max(1, int(self.rate))

    def _cap_until(self) -> float:
        """When one more submit keeps every WINDOW at `rate` or fewer."""
        count = self._cap()
        if len(self._granted) < count:
            return 0.0
        return self._granted[-count] + WINDOW

    def next_in(self) -> float:
        """Seconds until the next slot may be used, without reserving it."""
        now = self._clock()
        self._recover(now)
        start = max(now, self._paused_until)
        if self.rate <= 0:
            return start - now
        return max(0.0, max(self._next, start - BURST / self.rate, self._cap_until()) - now)

    def accepted(self) -> None:
        self._accepted.add(self._clock())

    def throttled(self) -> None:
        """The SMSC said ESME_RTHROTTLED: pause, then continue below what it accepted."""
        now = self._clock()
        self.throttle_events += 1
        if now < self._paused_until:
            return  # the in-flight submits of one burst count as one event
        measured = self._accepted.rate(now)
        current = self.rate if self.rate > 0 else measured
        if now - self._paused_until >= 1.0 and measured >= MIN_RATE:
            current = min(current, measured)  # a full second of sending: trust the measure
        self.ceiling = max(MIN_RATE, current)
        self.rate = max(MIN_RATE, self.ceiling * self._factor)
        self._paused_until = now + self._pause
        self._next = self._paused_until
        self._last_change = now


class Gate:
    """A bind's window of outstanding submits and its pacing, granted together, hot first.

    A submit waits here for a free window slot and for its pacing slot; each grant goes to
    the most urgent waiter (lowest priority value, then arrival). The pacing slot is taken
    at the grant, not on arrival: were it reserved on arrival, as a plain sleep does, a hot
    message would sit behind every cold one already waiting, a window's worth of slots
    (at 50/s and a window of 50, a second). So a hot submit waits for at most the pacing
    slot in progress, plus a window slot when the window is full of written submits.
    """

    def __init__(self, pacer: Pacer, window: int) -> None:
        self.pacer = pacer
        self.free = window
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    async def acquire(self, priority: int) -> None:
        if not self._waiters and self.free > 0 and self.pacer.next_in() <= 0:
            self._take()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        self._grant()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, then cancelled before it ran: pass the slot on
            raise

    def release(self) -> None:
        self.free += 1
        self._grant()

    def _take(self) -> None:
        self.free -= 1
        self.pacer.reserve()

    def _grant(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters and self.free > 0:
            fut = self._waiters[0][2]
            if fut.done():  # its submit was cancelled while waiting
                heapq.heappop(self._waiters)
                continue
            delay = self.pacer.next_in()
            if delay > 0:
                # Decide who goes when the slot comes, not now: a hot submit may arrive.
                self._timer = asyncio.get_running_loop().call_later(delay, self._grant)
                return
            heapq.heappop(self._waiters)
            self._take()
            fut.set_result(None)
