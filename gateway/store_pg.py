"""The PostgreSQL store: the shared store logic on a psycopg 3 connection (`[store] url`).

For several gateway nodes on one database. The connection is synchronous on purpose: the
store's contract is synchronous methods run on the store's one thread, with group commits
(`gateway.async_store`), and psycopg's sync API fits it unchanged (docs/design.md).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from .store import SqlStore
from .store_db import PostgresDb


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
        super().__init__(PostgresDb(url, password, connect_timeout), reconnect_timeout)


def safe_url(url: str) -> str:
    """The URL for messages and logs: its password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
