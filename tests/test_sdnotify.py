"""systemd notifications over a fake NOTIFY_SOCKET: readiness, status, reload, stop, watchdog."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sdnotify import Notifier, Watchdog, monotonic_usec
from tests.sdnotify_fixtures import FakeSystemd, fake_systemd


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    with fake_systemd() as fake:
        yield fake


async def test_ready_status_reload_stopping(systemd: FakeSystemd) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": systemd.address})
    assert n.enabled
    assert n.ready("broker connected,\nstore open")
    assert await systemd.recv() == {"READY": "1", "STATUS": "broker connected, store open"}
    assert n.status("degraded: smtp down")
    assert await systemd.recv() == {"STATUS": "degraded: smtp down"}
    before = monotonic_usec()
    assert n.reloading("reloading configuration")
    msg = await systemd.recv()
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= monotonic_usec()
    assert n.stopping()
    assert await systemd.recv() == {"STOPPING": "1"}
    assert n.extend_timeout(2.5)
    assert await systemd.recv() == {"EXTEND_TIMEOUT_USEC": "2500000"}
    assert n.sent == 5
    n.close()


async def test_abstract_namespace_socket() -> None:
    fake = FakeSystemd(f"@plp-test-{uuid.uuid4().hex}")
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": fake.address})
        assert n.watchdog()
        assert await fake.recv() == {"WATCHDOG": "1"}
        n.close()
    finally:
        fake.close()


def test_not_under_systemd_is_a_silent_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready()
    assert n.watchdog_interval() is None


def test_missing_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not n.ready()
    assert n.sent == 0


def test_watchdog_interval_from_env() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(env).watchdog_interval() == 15.0
    env_ours = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(env_ours).watchdog_interval() == 15.0
    env_other = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(env_other).watchdog_interval() is None
    assert Notifier.from_env({**env, "WATCHDOG_USEC": "0"}).watchdog_interval() is None


async def test_watchdog_pings_only_while_healthy(systemd: FakeSystemd) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "40000"})
    assert n.watchdog_interval() == 0.02
    healthy = True
    dog = Watchdog(n, lambda: healthy)
    dog.start()
    try:
        for _ in range(3):
            assert await systemd.recv() == {"WATCHDOG": "1"}
        healthy = False
        # Drain what was sent before the switch, then expect silence for several intervals.
        while True:
            try:
                await systemd.recv(wait=0.2)
            except TimeoutError:
                break
        with pytest.raises(TimeoutError):
            await systemd.recv(wait=0.2)
        healthy = True
        assert await systemd.recv() == {"WATCHDOG": "1"}
    finally:
        await dog.stop()
    assert not dog.active
    assert dog.pings >= 4


async def test_watchdog_async_check_that_hangs_counts_as_unhealthy(systemd: FakeSystemd) -> None:
    n = Notifier(systemd.address, watchdog_usec=40_000)
    release = asyncio.Event()

    async def check() -> bool:
        await release.wait()
        return True

    dog = Watchdog(n, check)
    dog.start()
    try:
        with pytest.raises(TimeoutError):
            await systemd.recv(wait=0.2)
        release.set()
        assert await systemd.recv() == {"WATCHDOG": "1"}
    finally:
        await dog.stop()


async def test_watchdog_disabled_without_watchdog_usec(systemd: FakeSystemd) -> None:
    dog = Watchdog(Notifier(systemd.address), lambda: True)
    dog.start()
    assert not dog.active
    await dog.stop()
