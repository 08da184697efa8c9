"""Per-channel work queues: hot before cold, retries held until their time, resizable slots."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

from .domain import Priority


@dataclass(order=True, frozen=True)
class Item:
    priority: Priority
    seq: int
    delivery_id: int = field(compare=False)
    job_id: str = field(compare=False)


class ChannelQueue:
    """Ready items ordered by (priority, arrival); delayed items wait for their due time."""

    def __init__(self) -> None:
        self._ready: list[Item] = []
        self._delayed: list[tuple[float, Item]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._queued: set[int] = set()

    def push(
        self, priority: Priority, delivery_id: int, job_id: str, due: float | None = None
    ) -> None:
        if delivery_id in self._queued:
            return
        self._queued.add(delivery_id)
        item = Item(priority, next(self._seq), delivery_id, job_id)
        if due is not None and due > time.time():
            heapq.heappush(self._delayed, (due, item))
        else:
            heapq.heappush(self._ready, item)
        self._changed.set()

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            heapq.heappush(self._ready, heapq.heappop(self._delayed)[1])

    async def pop(self) -> Item:
        while True:
            now = time.time()
            self._promote(now)
            if self._ready:
                item = heapq.heappop(self._ready)
                self._queued.discard(item.delivery_id)
                return item
            self._changed.clear()
            timeout = self._delayed[0][0] - now if self._delayed else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def depth(self) -> dict[str, int]:
        hot = sum(1 for i in self._ready if i.priority is Priority.HOT)
        return {"hot": hot, "cold": len(self._ready) - hot, "delayed": len(self._delayed)}

    def __len__(self) -> int:
        return len(self._ready) + len(self._delayed)


class Slots:
    """A semaphore whose size can change at run time (configuration reload)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiters: list[asyncio.Future[None]] = []

    async def acquire(self) -> None:
        while self.used >= self.size:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)
        self.used += 1

    def release(self) -> None:
        self.used -= 1
        self._wake()

    def resize(self, size: int) -> None:
        self.size = size
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


def make_limiter(rate: float) -> AsyncLimiter | None:
    """Attempts per second; 0 means unlimited."""
    if rate <= 0:
        return None
    if rate >= 1:
        return AsyncLimiter(rate, 1.0)
    return AsyncLimiter(1, 1.0 / rate)
