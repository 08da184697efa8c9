"""The store from the event loop: every call on one dedicated thread, hot-path writes batched.

`AsyncStore.run(fn, ...)` runs a store method on the store's thread. `Batched` is an async
front to one set-based store method; every `Batched` of one `WriteBatch` shares its
transactions: the claims, sends, receipts and retries that arrive while one transaction is
being written all go into the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, ParamSpec, TypeVar

from .errors import StoreBusy, StoreUnavailable
from .store_contract import StoreContract
from .store_tx import Call

P = ParamSpec("P")
T = TypeVar("T")

#: A set-based store method: one result (or exception) per call, in order.
BatchFn = Callable[[list[Call]], Sequence[Any]]


class WriteBatch:
    """Coalesces concurrent hot-path writes, of every kind, into one transaction.

    Under load a thousand attempts cost a few transactions (a commit costs as much as a
    hundred row updates); an idle gateway adds no delay: a lone call is written at once.
    """

    def __init__(self, store: AsyncStore, max_batch: int = 1024) -> None:
        self._store = store
        self._max = max_batch
        self._pending: list[tuple[BatchFn, Call, asyncio.Future[Any]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None

    def call(
        self, fn: BatchFn, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        """The future of one call's result: a plain future, not a coroutine around one (three
        writes per SMS)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, (args, kwargs), fut))
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                groups: dict[BatchFn, list[int]] = {}  # method -> its calls, first-come order
                for i, (fn, _, _) in enumerate(batch):
                    groups.setdefault(fn, []).append(i)
                plan = [(fn, [batch[i][1] for i in idx]) for fn, idx in groups.items()]
                results: list[Any] = [None] * len(batch)
                try:
                    done = await self._store.run(self._store.store.atomically, _runner(plan))
                    for (_, idx), out in zip(groups.items(), done, strict=True):
                        for i, result in zip(idx, out, strict=True):
                            results[i] = result
                except Exception as exc:
                    results = [exc] * len(batch)
                for (_, _, fut), result in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(result, Exception):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
        finally:
            self._running = False


def _runner(plan: list[tuple[BatchFn, list[Call]]]) -> Callable[[], list[Sequence[Any]]]:
    return lambda: [fn(calls) for fn, calls in plan]


class Batched(Generic[T]):
    """An async front to one set-based store method, writing through a `WriteBatch`.

    `batch(calls)` runs on the store's thread with the calls (args, kwargs) gathered and
    returns one result (or exception) per call, in order: a set-based store method
    (`StoreContract.claim_batch`) or `functools.partial(Store.many, method)`.
    """

    def __init__(
        self, writes: WriteBatch, batch: Callable[[list[Call]], Sequence[T | Exception]]
    ) -> None:
        self._writes = writes
        self._batch = batch

    def __call__(self, *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = self._writes.call(self._batch, args, kwargs)
        return fut


class AsyncStore:
    """Runs every store call on one dedicated thread so the event loop never waits on disk
    (`run`), but for the few small writes an alert waits for (`run_now`)."""

    def __init__(self, store: StoreContract) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._lost = asyncio.Event()
        # Calls handed to the thread and not finished (or cancelled) yet: `run_now` uses the
        # connection from the loop only while it is 0. Changed by the loop and by the thread.
        self._busy = 0
        self._busy_lock = threading.Lock()
        # SQLite: a local file, a commit of a small job is an fsync (0.2-0.8 ms). PostgreSQL is
        # a network round trip whose wait (a reconnect: up to a minute) must not stop the loop.
        self._inline = store.backend == "sqlite"

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        with self._busy_lock:
            self._busy += 1
        try:
            future = self._executor.submit(lambda: fn(*args, **kwargs))
        except BaseException:
            self._done()
            raise
        future.add_done_callback(self._done)  # in the thread once `fn` returned, or here
        try:
            return await asyncio.wrap_future(future)
        except StoreUnavailable:
            self._lost.set()
            raise

    def _done(self, _: object = None) -> None:
        with self._busy_lock:
            self._busy -= 1

    async def run_now(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`run`, but on the event loop itself when the store is SQLite and its thread is
        idle: a hot alert's insert spares two thread hops (each a wait for the GIL and a
        wake-up on two busy cores). Only for small, quick calls: the loop waits for the
        commit, but never for another process's write lock (an admin command writing: then
        the thread waits). While it runs, the loop submits nothing, so the connection is
        never used from two threads at once."""
        if self._inline:
            with self._busy_lock:
                idle = self._busy == 0
            if idle:
                with contextlib.suppress(StoreBusy):
                    return self.store.at_once(lambda: fn(*args, **kwargs))
        return await self.run(fn, *args, **kwargs)

    async def watch(self) -> None:
        """A daemon task: fails once a call found the store unavailable past its
        `reconnect_timeout`. The gateway then stops (exit 1, systemd starts it again) and
        resumes from the store at its next start; unstored jobs wait at the broker."""
        await self._lost.wait()
        raise StoreUnavailable("the store stayed unavailable past [store] reconnect_timeout")

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()
