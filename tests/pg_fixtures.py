"""A real PostgreSQL for tests: one private server per test session, a fresh database per test.

Debian's `postgresql` package (scripts/setup) gives the server binaries; no system service is
used: `initdb` into a temporary folder and `postgres` on a free port, as the broker fixture
starts mosquitto. As root (CI), both run as the `postgres` user (initdb refuses root).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.simulator_process import free_port, wait_port
from gateway.store import SqliteStore, SqlStore
from gateway.store_pg import PostgresStore

USER = "plp"


def _bin_dir() -> Path:
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name),
    )
    if not versions:
        pytest.fail("PostgreSQL server binaries not found: run scripts/setup")
    return versions[-1].parent


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PostgresServer:
    """A private PostgreSQL on a free port; can be stopped (fast or like a crash) and
    started again on the same port and data."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="plp-pg-"))
        self.root.chmod(0o755)  # the postgres user must reach its data folder
        self.data = self.root / "data"
        self.data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
        self.proc: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        subprocess.run(
            [
                *_as_postgres(),
                *(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", USER),
                *("-N", "-E", "UTF8", "--locale=C.UTF-8"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *_as_postgres(),
                *(str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)),
                *("-k", str(self.data), "-c", "listen_addresses=127.0.0.1"),
                # No fsync: a test kills processes, never the machine; commits stay synchronous.
                *("-c", "fsync=off", "-c", "full_page_writes=off"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "postgres.log", "ab"),  # noqa: SIM115
        )
        wait_port(self.port)
        deadline = time.monotonic() + 30
        while True:  # the port opens before the server accepts connections
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, crash: bool = False) -> None:
        """Fast shutdown (SIGINT), or like a crash (SIGQUIT: no checkpoint, recovery at start)."""
        if self.proc is None:
            return
        # The server runs as `postgres` under runuser: signal its process, not runuser's.
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 3 if crash else 2)
        self.proc.wait(30)
        self.proc = None

    def restart(self, crash: bool = False) -> None:
        self.stop(crash)
        self.start()

    def url(self, dbname: str) -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            # template0 accepts no connections: an autovacuum worker in template1 (after a
            # crash restart) cannot make the copy fail with "being accessed by other users".
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh database on the session's PostgreSQL."""
    if postgres_server.proc is None:  # a test stopped it and failed before starting it again
        postgres_server.start()
    return postgres_server.new_database()


StoreFactory = Callable[[], SqlStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens the store of one backend (each test runs on both), on the same file or
    database each time it is called (a reopen is a restart)."""
    opened: list[SqlStore] = []
    if request.param == "sqlite":
        path = tmp_path / "gw.sqlite3"

        def make() -> SqlStore:
            return SqliteStore(path)
    else:
        url = request.getfixturevalue("pg_url")

        def make() -> SqlStore:
            return PostgresStore(url, reconnect_timeout=30)

    def open_one() -> SqlStore:
        store = make()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def any_store(store_factory: StoreFactory) -> SqlStore:
    """A store on SQLite, then on PostgreSQL (the store contract holds on both)."""
    return store_factory()
