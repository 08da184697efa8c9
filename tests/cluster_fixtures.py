"""Cluster nodes for tests and benchmarks: the same configuration on each node but `node`,
one PostgreSQL store, one broker, one shared group. The `node` fixture (registered in
tests/conftest.py) starts them and checks that each speaks MQTT 5."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures import Connection, GatewayProcess, Mosquitto, SmtpServer, gateway_config

GROUP = "plp-nodes"
LEASE = 3.0  # a short lease, so that a takeover comes quickly in a test

NodeFactory = Callable[..., GatewayProcess]


def node_config(
    workdir: Path,
    broker: Mosquitto,
    smtp: SmtpServer | None,
    store_url: str,
    name: str,
    extra: str = "",
    lease: float = 3.0,
    claim_batch: int = 50,
    protocol: str | None = None,
) -> Path:
    """Write node `name`'s configuration in `workdir`; returns its path. `protocol`: the
    `[mqtt] protocol` (default: MQTT 5, as with any shared group)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = gateway_config(
        workdir,
        broker,
        smtp,
        f"[cluster]\nlease = {lease}\npoll_interval = 0.2\nclaim_batch = {claim_batch}\n" + extra,
        node=name,
        store=f'url = "{store_url}"\n',
    )
    mqtt = f'shared_group = "{GROUP}"\n' + (f'protocol = "{protocol}"\n' if protocol else "")
    text = config.read_text().replace(
        "reconnect_initial_delay", mqtt + "reconnect_initial_delay", 1
    )
    config.write_text(text)
    return config


def start_node(config: Path, wait_ready: bool = True) -> GatewayProcess:
    proc = GatewayProcess(config, config.parent)
    offset = len(proc.log())
    proc.start()
    if wait_ready:
        proc.wait_log("connected to MQTT broker", after=offset)
    return proc


def claimed(proc: GatewayProcess) -> int:
    """Deliveries the node claimed from the shared store (its debug log says so)."""
    return sum(int(n) for n in re.findall(r"cluster: claimed (\d+) ", proc.log()))


def node_connections(broker: Mosquitto, name: str, timeout: float = 10) -> dict[str, Connection]:
    """Node `name`'s latest connections as the broker logged them, by role: `jobs` (its
    session, `plp-gateway-<node>`), `status` (`-status`) and `health` (`-health-<boot>`);
    waits until all three are there."""
    jobs = f"plp-gateway-{name}"
    deadline = time.monotonic() + timeout
    while True:
        seen: dict[str, Connection] = {}
        for c in broker.connections():
            if c.client_id == jobs:
                seen["jobs"] = c
            elif c.client_id == f"{jobs}-status":
                seen["status"] = c
            elif c.client_id.startswith(f"{jobs}-health-"):
                seen["health"] = c
        if len(seen) == 3 or time.monotonic() > deadline:
            return seen
        time.sleep(0.02)


def assert_mqtt5(broker: Mosquitto, name: str) -> None:
    """Every connection of the node speaks MQTT 5; its jobs session is kept (Clean Start
    off), the others are clean."""
    seen = node_connections(broker, name)
    assert {role: c.protocol for role, c in seen.items()} == dict.fromkeys(
        ("jobs", "status", "health"), "5"
    ), seen
    assert not seen["jobs"].clean and seen["status"].clean and seen["health"].clean, seen


@pytest.fixture
def node(tmp_path: Path, broker: Mosquitto, smtp: SmtpServer, pg_url: str) -> Iterator[NodeFactory]:
    """Start a cluster node `name` as a process (same store, broker and group as the others);
    once it is ready, check that it speaks MQTT 5."""
    started: list[GatewayProcess] = []

    def start(name: str, extra: str = "", wait_ready: bool = True) -> GatewayProcess:
        config = node_config(tmp_path / name, broker, smtp, pg_url, name, extra, lease=LEASE)
        proc = start_node(config, wait_ready)
        started.append(proc)
        if wait_ready:
            assert_mqtt5(broker, name)
        return proc

    yield start
    for p in started:
        p.stop()
