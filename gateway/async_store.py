"""The store from the event loop: every call on one dedicated thread, hot-path writes batched.

`AsyncStore.run(fn, ...)` runs a `Store` method on the store's thread; `Batched` coalesces the
concurrent calls of one method into one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, ParamSpec, TypeVar

from .store import Call, Store

P = ParamSpec("P")
T = TypeVar("T")


class Batched(Generic[T]):
    """An async front to one store method that coalesces concurrent calls.

    Calls made while a batch is being written wait for the next one, so under load a
    thousand attempts cost a few transactions, and an idle gateway adds no delay.
    """

    def __init__(
        self,
        store: AsyncStore,
        batch: Callable[[list[Call]], Sequence[T | Exception]],
        max_batch: int = 512,
    ) -> None:
        """`batch(calls)` runs on the store's thread with the calls (args, kwargs) gathered
        and returns one result (or exception) per call, in order: a set-based store method
        (`Store.claim_batch`) or `functools.partial(Store.many, method)`."""
        self._store = store
        self._batch = batch
        self._max = max_batch
        self._pending: list[tuple[tuple[tuple[Any, ...], dict[str, Any]], asyncio.Future[T]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, *args: Any, **kwargs: Any) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(((args, kwargs), fut))
        if not self._running:
            self._running = True
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                try:
                    results = await self._store.run(self._batch, [call for call, _ in batch])
                except Exception as exc:
                    results = [exc] * len(batch)
                for (_, fut), result in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(result, Exception):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
        finally:
            self._running = False


class AsyncStore:
    """Runs every store call on one dedicated thread so the event loop never waits on disk."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()
