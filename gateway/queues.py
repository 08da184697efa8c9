"""Per-channel work queues: hot before cold, retries held until their time, resizable slots."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

from .domain import Priority


# Slotted: a 100,000-member job queues 100,000 of them at once (72 bytes each, not ~220).
@dataclass(order=True, frozen=True, slots=True)
class Item:
    priority: Priority
    seq: int
    delivery_id: int = field(compare=False)
    job_id: str = field(compare=False)


class ChannelQueue:
    """Ready items by priority, in arrival order; delayed items wait for their due time.

    Each priority is popped on its own (`pop(priority)`): the scheduler feeds a channel from
    one loop per priority, so hot work never waits for a slot a cold attempt holds."""

    def __init__(self) -> None:
        self._ready: dict[Priority, list[Item]] = {p: [] for p in Priority}
        self._delayed: list[tuple[float, Item]] = []
        self._seq = itertools.count()
        self._changed = {p: asyncio.Event() for p in Priority}
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
            heapq.heappush(self._ready[priority], item)
        self._changed[priority].set()

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            item = heapq.heappop(self._delayed)[1]
            heapq.heappush(self._ready[item.priority], item)
            self._changed[item.priority].set()

    async def pop(self, priority: Priority) -> Item:
        ready, changed = self._ready[priority], self._changed[priority]
        while True:
            now = time.time()
            self._promote(now)
            if ready:
                item = heapq.heappop(ready)
                self._queued.discard(item.delivery_id)
                return item
            changed.clear()
            timeout = self._delayed[0][0] - now if self._delayed else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)

    def depth(self) -> dict[str, int]:
        return {
            "hot": len(self._ready[Priority.HOT]),
            "cold": len(self._ready[Priority.COLD]),
            "delayed": len(self._delayed),
        }

    def waiting(self) -> dict[tuple[str, str], int]:
        """`{(priority, state): n}`, state `ready` or `delayed` (a retry not yet due)."""
        out = {(p.name.lower(), "ready"): len(items) for p, items in self._ready.items()}
        out |= {(p.name.lower(), "delayed"): 0 for p in Priority}
        for _, item in self._delayed:
            out[(item.priority.name.lower(), "delayed")] += 1
        return out

    def __len__(self) -> int:
        return sum(map(len, self._ready.values())) + len(self._delayed)


class Slots:
    """A semaphore whose size can change at run time (configuration reload); a freed slot
    goes to the most urgent waiter (hot before cold, then first come)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiters: list[tuple[Priority, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def acquire(self, priority: Priority = Priority.COLD) -> None:
        if self.used < self.size and not self._waiters:
            self.used += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        self._wake()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, then cancelled before it ran: pass the slot on
            raise

    def try_acquire(self) -> bool:
        """A slot now if one is free and nobody waits for it, else False (no waiting)."""
        if self.used < self.size and not self._waiters:
            self.used += 1
            return True
        return False

    def release(self) -> None:
        self.used -= 1
        self._wake()

    @contextlib.asynccontextmanager
    async def hold(self, priority: Priority = Priority.COLD) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    def resize(self, size: int) -> None:
        self.size = size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used < self.size:
            fut = heapq.heappop(self._waiters)[2]
            if not fut.done():
                self.used += 1
                fut.set_result(None)


def make_limiter(rate: float) -> AsyncLimiter | None:
    """Attempts per second; 0 means unlimited."""
    if rate <= 0:
        return None
    if rate >= 1:
        return AsyncLimiter(rate, 1.0)
    return AsyncLimiter(1, 1.0 / rate)
