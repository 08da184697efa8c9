"""The store's transactions, on either engine: one at a time, on the store's one thread.

A method's work runs in `_tx` (a write transaction; nested calls join the outer one) or
`_read` (autocommit reads). When PostgreSQL goes away (a restart, a network cut), the work is
run again on a new connection, for `reconnect_timeout` seconds at most, then `StoreUnavailable`
reaches the caller: the store's thread waits, so every caller waits with it, and nothing
uncommitted is reported as stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .errors import StoreUnavailable
from .migrations import migrate
from .store_db import Db

T = TypeVar("T")
#: One call of a store method: (positional arguments, keyword arguments).
Call = tuple[tuple[Any, ...], dict[str, Any]]

log = logging.getLogger(__name__)


class Transactions:
    def __init__(self, db: Db, reconnect_timeout: float = 60.0) -> None:
        self._db = db
        self._in_tx = False
        self._reconnect_timeout = reconnect_timeout
        self._gave_up = False  # unavailable past the timeout: later calls fail fast
        self.schema_version = self._retrying(lambda: migrate(db))

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._db.name

    def close(self) -> None:
        self._db.close()

    def _retrying(self, fn: Callable[[], T]) -> T:
        deadline: float | None = None
        while True:
            try:
                result = fn()
                self._gave_up = False
                return result
            except StoreUnavailable as exc:
                if deadline is None and self._gave_up:
                    deadline = time.monotonic()  # one reconnect, no wait: the daemon is stopping
                if deadline is None:
                    deadline = time.monotonic() + self._reconnect_timeout
                    log.warning(
                        "store unavailable, reconnecting for up to %.0f s: %s",
                        self._reconnect_timeout,
                        exc,
                    )
                self._reconnect(deadline, exc)

    def _reconnect(self, deadline: float, cause: StoreUnavailable) -> None:
        delay = 0.1
        while True:
            try:
                self._db.reconnect()
            except StoreUnavailable as exc:
                cause = exc
            else:
                log.warning("store reconnected")
                return
            if time.monotonic() >= deadline:
                if not self._gave_up:
                    log.error("store still unavailable after %.0f s", self._reconnect_timeout)
                self._gave_up = True
                raise cause
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _read(self, fn: Callable[[], T]) -> T:
        """Reads outside a transaction (each statement on its own), retried on a lost link."""
        if self._in_tx:
            return fn()
        return self._retrying(fn)

    def _tx(self, fn: Callable[[], Any], durable: bool = False) -> Any:
        if self._in_tx:  # part of a `many()` batch: its transaction commits everything
            return fn()
        return self._retrying(lambda: self._tx_once(fn, durable))

    def _tx_once(self, fn: Callable[[], Any], durable: bool) -> Any:
        self._db.begin(durable)
        self._in_tx = True
        try:
            result = fn()
        except BaseException:
            self._in_tx = False
            self._db.rollback()
            raise
        self._in_tx = False
        self._db.commit()
        return result

    def at_once(self, fn: Callable[[], T]) -> T:
        """`fn()`, whose transactions raise `StoreBusy` rather than wait for another
        process's write lock (SQLite; `AsyncStore.run_now` runs it on the event loop)."""
        with self._db.no_wait():
            return fn()

    def atomically(self, fn: Callable[[], T], durable: bool = False) -> T:
        """`fn()` in one transaction: the store methods it calls commit together (`durable`:
        as a job's intake commits, synced before it returns)."""
        result: T = self._tx(fn, durable)
        return result

    def many(self, fn: Callable[..., T], calls: Sequence[Call]) -> list[T | Exception]:
        """`fn(*args, **kwargs)` for each call, in one transaction (one commit for all).

        Each call runs in its own savepoint: one that raises is undone alone and its
        exception is returned in its place (a lost connection undoes the whole batch).
        """

        def work() -> list[T | Exception]:
            out: list[T | Exception] = []
            for args, kwargs in calls:
                self._db.execute("SAVEPOINT one")
                try:
                    out.append(fn(*args, **kwargs))
                except StoreUnavailable:
                    raise
                except Exception as exc:
                    self._db.execute("ROLLBACK TO SAVEPOINT one")
                    out.append(exc)
                self._db.execute("RELEASE SAVEPOINT one")
            return out

        result: list[T | Exception] = self._tx(work)
        return result
