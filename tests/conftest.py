"""Shared fixtures: a real mosquitto per test, a real SMTP server, the gateway process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures import GatewayProcess, Mosquitto, Observer, SmtpServer, gateway_config
from tests.sms_fixtures import SmscProcess
from tests.voice_fixtures import AsteriskProcess

# The session's PostgreSQL (`postgres_server`) and a fresh database per test (`pg_url`);
# cluster nodes on it (`node`).
pytest_plugins = ["tests.pg_fixtures", "tests.cluster_fixtures"]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = Mosquitto(workdir)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def observer(broker: Mosquitto) -> AsyncIterator[Observer]:
    async with Observer(broker) as obs:
        yield obs


GatewayFactory = Callable[..., GatewayProcess]


@pytest.fixture
def gateway_store_toml() -> str:
    """More `[store]` keys for the `gateway` fixture: none (SQLite); a test module overrides
    it to run the daemon on PostgreSQL (`url = ...`, tests/test_restart_recovery.py)."""
    return ""


@pytest.fixture
def gateway(
    tmp_path: Path, broker: Mosquitto, smtp: SmtpServer, gateway_store_toml: str
) -> Iterator[GatewayFactory]:
    """Start the gateway (e-mail enabled) as a process: `gateway(extra_toml="")`."""
    started: list[GatewayProcess] = []

    def start(
        extra: str = "", wait_ready: bool = True, env: dict[str, str] | None = None
    ) -> GatewayProcess:
        config = gateway_config(tmp_path, broker, smtp, extra, store=gateway_store_toml)
        proc = GatewayProcess(config, tmp_path)
        offset = len(proc.log())
        proc.start(env)
        started.append(proc)
        if wait_ready:
            proc.wait_log("connected to MQTT broker", after=offset)
        return proc

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def smsc(tmp_path: Path) -> Iterator[SmscProcess]:
    """The SMSC simulator as its own process (`plp-gateway simulate smsc`)."""
    sim = SmscProcess(tmp_path)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def asterisk(tmp_path: Path) -> Iterator[AsteriskProcess]:
    """The AMI simulator as its own process (`plp-gateway simulate asterisk`), 20x speed."""
    sim = AsteriskProcess(tmp_path)
    sim.start()
    yield sim
    sim.stop()
