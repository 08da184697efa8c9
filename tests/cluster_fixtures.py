"""Cluster nodes for tests and benchmarks: the same configuration on each node but `node`,
one PostgreSQL store, one broker, one shared group."""

from __future__ import annotations

import re
from pathlib import Path

from tests.fixtures import GatewayProcess, Mosquitto, SmtpServer, gateway_config

GROUP = "plp-nodes"


def node_config(
    workdir: Path,
    broker: Mosquitto,
    smtp: SmtpServer | None,
    store_url: str,
    name: str,
    extra: str = "",
    lease: float = 3.0,
    claim_batch: int = 50,
) -> Path:
    """Write node `name`'s configuration in `workdir`; returns its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = gateway_config(
        workdir,
        broker,
        smtp,
        f"[cluster]\nlease = {lease}\npoll_interval = 0.2\nclaim_batch = {claim_batch}\n" + extra,
        node=name,
        store=f'url = "{store_url}"\n',
    )
    text = config.read_text().replace(
        "reconnect_initial_delay", f'shared_group = "{GROUP}"\nreconnect_initial_delay', 1
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
