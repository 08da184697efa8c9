"""Per-bind submit pacing: a configured rate, lowered on ESME_RTHROTTLED, then recovered.

Slots are reserved on an absolute timeline, so sleeping late does not lower the average rate;
a small catch-up burst is allowed and nothing more. On throttling the bind remembers the rate
the SMSC actually accepted (its ceiling), drops below it, climbs back to it, then probes
slowly above it: against a fixed SMSC limit that means one throttling event now and then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

MIN_RATE = 1.0
BURST = 2.0  # slots a late sender may catch up
PROBE = 1.05  # growth of the ceiling per quiet interval spent at it


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
        self.throttle_events = 0

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
        slot = max(self._next, start - BURST * interval)
        self._next = slot + interval
        return max(0.0, slot - now)

    async def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)

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
