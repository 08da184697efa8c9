"""Failures are loud: a dying task stops the daemon with exit status 1, `failed` health and
`offline` availability; after kill -9 a monitor never reads the dead gateway as ready."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from gateway.exit_codes import ExitCode
from tests.conftest import GatewayFactory
from tests.fixtures import (
    GatewayProcess,
    Mosquitto,
    Observer,
    SmtpServer,
    gateway_config,
)


def last(observer: Observer, suffix: str) -> Any:
    msgs = observer.on(suffix)
    return msgs[-1] if msgs else None


def health_state(observer: Observer) -> str | None:
    msg = last(observer, "/gateway/test/health")
    return None if msg is None else str(msg.json()["state"])


async def test_a_task_that_dies_stops_the_gateway_with_status_1(
    tmp_path: Path, broker: Mosquitto, smtp: SmtpServer, observer: Observer
) -> None:
    config = gateway_config(tmp_path, broker, smtp)
    # Retention runs every 0.2 s: the first run after the store breaks meets the damage.
    text = config.read_text().replace("[store]\n", "[store]\npurge_interval = 0.2\n")
    config.write_text(text)
    proc = GatewayProcess(config, tmp_path)
    proc.start()
    try:
        proc.wait_log("connected to MQTT broker")
        await observer.wait(lambda: health_state(observer) == "ready")

        # The store breaks under the running gateway (a bad manual migration, a store file
        # restored from another version): its jobs table is gone.
        db = sqlite3.connect(tmp_path / "gateway.sqlite3", timeout=30)
        db.execute("ALTER TABLE jobs RENAME TO jobs_elsewhere")
        db.commit()
        db.close()

        assert proc.proc is not None
        code = await asyncio.to_thread(proc.proc.wait, 60)
        assert code == ExitCode.FAILURE
        log = proc.log()
        assert "ERROR gateway.daemon: task purge ended unexpectedly" in log
        assert "no such table: jobs" in log
    finally:
        proc.stop()

    # A monitor connecting now reads what happened from the retained topics.
    async with Observer(broker) as fresh:
        await fresh.wait(lambda: fresh.on("/gateway/test/health"))
        await fresh.wait(lambda: fresh.on("/gateway/test/availability"))
        health = fresh.on("/gateway/test/health")[-1].json()
        assert health["state"] == "failed"
        assert health["failure"]["task"] == "purge"
        assert fresh.on("/gateway/test/availability")[-1].payload == b"offline"


async def test_requested_stop_exits_0_and_reads_stopped(
    gateway: GatewayFactory, observer: Observer
) -> None:
    proc = gateway()
    await observer.wait(lambda: health_state(observer) == "ready")
    assert await asyncio.to_thread(proc.terminate) == ExitCode.OK
    await observer.wait(lambda: health_state(observer) == "stopped")
    await observer.wait(lambda: last(observer, "/gateway/test/availability").payload == b"offline")


async def test_after_kill_9_health_is_offline_not_ready(
    gateway: GatewayFactory, broker: Mosquitto, observer: Observer
) -> None:
    proc = gateway()
    await observer.wait(lambda: health_state(observer) == "ready")
    boot_id = last(observer, "/gateway/test/health").json()["boot_id"]
    proc.kill()

    async with Observer(broker) as fresh:

        def offline() -> bool:
            health = last(fresh, "/gateway/test/health")
            availability = last(fresh, "/gateway/test/availability")
            return (
                health is not None
                and health.json()["state"] == "offline"
                and availability is not None
                and availability.payload == b"offline"
            )

        await fresh.wait(offline, timeout=30)
        health = last(fresh, "/gateway/test/health").json()
        assert health["boot_id"] == boot_id  # the will of the very process that died
        assert health["node"] == "test"
