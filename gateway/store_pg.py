"""The PostgreSQL store: the shared store logic on a psycopg 3 connection (`[store] url`).

For several gateway nodes on one database. The connection is synchronous on purpose: the
store's contract is synchronous methods run on the store's one thread, with group commits
(`gateway.async_store`), and psycopg's sync API fits it unchanged (docs/design.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from .errors import StoreUnavailable
from .store import SqlStore
from .store_db import PostgresDb

log = logging.getLogger(__name__)


class PostgresStore(SqlStore):
    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 60.0,
    ) -> None:
        self.url = safe_url(url)
        db = _first_connection(
            lambda: PostgresDb(url, password, connect_timeout), reconnect_timeout, self.url
        )
        super().__init__(db, reconnect_timeout)


def _first_connection(connect: Callable[[], PostgresDb], timeout: float, where: str) -> PostgresDb:
    """At start too, PostgreSQL may be restarting: wait for it as for a lost connection."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            return connect()
        except StoreUnavailable as exc:
            if time.monotonic() >= deadline:
                raise
            if delay == 0.1:
                log.warning("store %s unavailable, waiting up to %.0f s: %s", where, timeout, exc)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def safe_url(url: str) -> str:
    """The URL for messages and logs: its password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
