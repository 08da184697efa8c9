"""The daemon on a PostgreSQL store (`[store] url`, here from the environment): the admin
commands read the same database and the URL's password appears nowhere; a store from a newer
gateway stops it; a PostgreSQL down for longer than `reconnect_timeout`, at start or later,
stops the gateway (exit 1, for systemd to start it again) and loses no job."""

from __future__ import annotations

import time

import pytest

from gateway.exit_codes import ExitCode
from gateway.migrations import MIGRATIONS
from gateway.store_pg import PostgresStore
from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer, email_job, members
from tests.pg_fixtures import PostgresServer
from tests.test_cli import plp_gateway

PASSWORD = "s3cret-pw"


@pytest.fixture
def gateway_store_toml(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    # The daemon reads the URL, password included, from the environment (a secret).
    monkeypatch.setenv("PLP_TEST_STORE_URL", pg_url.replace("://plp@", f"://plp:{PASSWORD}@"))
    return 'url = "env:PLP_TEST_STORE_URL"\nreconnect_timeout = 1\n'


async def test_check_config_status_and_purge_on_postgresql(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    proc = gateway()
    await observer.publish_job(email_job("pg-admin-1", members(2)))
    await observer.wait_job("pg-admin-1", "done")
    assert proc.terminate() == 0
    config = str(proc.config)

    checked = plp_gateway("check-config", config)
    assert checked.returncode == 0, checked.stderr
    assert "store: postgresql postgresql://plp:***@127.0.0.1:" in checked.stdout

    status = plp_gateway("status", "pg-admin-1", "--config", config)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "state done" in status.stdout and "m-00001" in status.stdout

    purge = plp_gateway("purge", "--config", config, "--older-than-days", "0")
    assert purge.returncode == 0, purge.stderr
    assert purge.stdout.startswith("purged 1 finished jobs"), purge.stdout
    gone = plp_gateway("status", "pg-admin-1", "--config", config)
    assert gone.returncode == 1 and "no job pg-admin-1 in postgresql://plp:***@" in gone.stdout

    everything = checked.stdout + status.stdout + purge.stdout + gone.stdout + proc.log()
    assert PASSWORD not in everything


async def test_a_store_from_a_newer_gateway_stops_the_daemon_at_start(
    gateway: GatewayFactory, pg_url: str
) -> None:
    store = PostgresStore(pg_url)
    store.atomically(
        lambda: store._db.execute("INSERT INTO schema_version VALUES (?, ?)", (7, time.time()))
    )
    store.close()
    proc = gateway(wait_ready=False)
    assert proc.proc is not None and proc.proc.wait(30) == ExitCode.CONFIG
    assert (
        "cannot start: the postgresql store is at schema version 7, newer than this gateway"
        f" knows ({len(MIGRATIONS)})" in proc.log()
    )


async def test_a_job_that_arrives_while_postgresql_is_down_runs_once_it_is_back(
    gateway: GatewayFactory,
    observer: Observer,
    smtp: SmtpServer,
    postgres_server: PostgresServer,
) -> None:
    proc = gateway()
    postgres_server.stop()
    try:
        await observer.publish_job(email_job("pg-down-1", members(3)))
        # Past reconnect_timeout (1 s) the first store call fails (the job's, or one of the
        # daemon's own): the gateway stops, to start again from the store (systemd restarts
        # it), and the job, never acknowledged, waits at the broker.
        assert proc.proc is not None and proc.proc.wait(60) == ExitCode.FAILURE
        assert "task store ended unexpectedly" in proc.log()
        assert "job pg-down-1 accepted" not in proc.log()
    finally:
        postgres_server.start()
    gateway()  # what systemd does
    await observer.wait_job("pg-down-1", "done", timeout=60)
    assert sorted(m.rcpts[0] for m in await smtp.await_for(lambda box: len(box) == 3)) == [
        "member0@example.be",
        "member1@example.be",
        "member2@example.be",
    ]


def test_a_postgresql_down_at_start_fails_the_start_for_systemd_to_retry(
    gateway: GatewayFactory, postgres_server: PostgresServer
) -> None:
    postgres_server.stop()
    try:
        proc = gateway(wait_ready=False)
        assert proc.proc is not None and proc.proc.wait(60) == ExitCode.FAILURE
    finally:
        postgres_server.start()
    log = proc.log()
    assert "unavailable, waiting up to 1 s" in log
    assert "cannot start: cannot connect to PostgreSQL" in log and "Traceback" not in log
    assert PASSWORD not in log
