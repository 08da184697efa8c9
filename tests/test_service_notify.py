"""The daemon under systemd (Type=notify): ready only once the broker is connected, watchdog
pings from the event loop, RELOADING/READY around SIGHUP, STOPPING at SIGTERM."""

from __future__ import annotations

import asyncio
import signal

from tests.conftest import GatewayFactory
from tests.fixtures import Mosquitto
from tests.sdnotify_fixtures import FakeSystemd, fake_systemd

WATCHDOG_USEC = "200000"  # pings every 0.1 s


async def nothing_received(systemd: FakeSystemd) -> list[dict[str, str]]:
    """Every message already waiting on the socket, without waiting for more."""
    got = []
    while True:
        try:
            got.append(await systemd.recv(0.01))
        except TimeoutError:
            return got


async def test_ready_watchdog_reload_and_stopping(
    gateway: GatewayFactory, broker: Mosquitto
) -> None:
    broker.stop()
    with fake_systemd() as systemd:
        proc = gateway(
            wait_ready=False,
            env={"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": WATCHDOG_USEC},
        )
        proc.wait_log("MQTT link down")
        early = await nothing_received(systemd)
        assert not any("READY" in m for m in early), "ready before the broker was connected"
        assert any("WATCHDOG" in m for m in early) or await systemd.wait_for("WATCHDOG", 5)

        broker.start()
        ready = await systemd.wait_for("READY")
        assert "connected to MQTT broker" in proc.log()
        assert ready["STATUS"].startswith(("ready:", "degraded:")), ready
        assert "broker up" in ready["STATUS"]

        # Pings keep coming at the rate systemd asked for.
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(5):
            await systemd.wait_for("WATCHDOG", 5)
        assert loop.time() - started < 3

        proc.send_signal(signal.SIGHUP)
        reloading = await systemd.wait_for("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        again = await systemd.wait_for("READY")
        assert "refused" not in again["STATUS"]

        proc.send_signal(signal.SIGTERM)
        stopping = await systemd.wait_for("STOPPING")
        assert stopping["STATUS"].startswith("stopping")
        assert proc.proc is not None
        assert await asyncio.to_thread(proc.proc.wait, 30) == 0
