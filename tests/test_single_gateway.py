"""One gateway per prefix: a second gateway on a prefix that a live gateway serves takes no
job, says so (health `conflict`, an error in its log) and takes over when the first dies."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import (
    GatewayProcess,
    Mosquitto,
    Observer,
    SmtpServer,
    email_job,
    gateway_config,
    members,
)

Start = Callable[[str, str], GatewayProcess]


@pytest.fixture
def start(tmp_path: Path, broker: Mosquitto, smtp: SmtpServer) -> Iterator[Start]:
    """`start(name, node)`: a gateway process in its own directory (store, log), prefix plp."""
    procs: list[GatewayProcess] = []

    def run(name: str, node: str) -> GatewayProcess:
        workdir = tmp_path / name
        workdir.mkdir()
        proc = GatewayProcess(gateway_config(workdir, broker, smtp, node=node), workdir)
        proc.start()
        procs.append(proc)
        return proc

    yield run
    for p in procs:
        p.stop()


def health(observer: Observer, node: str) -> dict[str, Any] | None:
    msgs = observer.on(f"/gateway/{node}/health")
    return msgs[-1].json() if msgs else None


def state(observer: Observer, node: str) -> str | None:
    h = health(observer, node)
    return None if h is None else str(h["state"])


async def test_second_gateway_stands_by_then_takes_over(
    start: Start, observer: Observer, smtp: SmtpServer
) -> None:
    first = start("a", "gw-a")
    await observer.wait(lambda: state(observer, "gw-a") == "ready")
    second = start("b", "gw-b")
    await observer.wait(lambda: state(observer, "gw-b") == "conflict")
    conflict = health(observer, "gw-b")
    assert conflict is not None and conflict["conflict"]["node"] == "gw-a"
    second.wait_log("ERROR gateway.presence: another live gateway serves prefix plp: node gw-a")

    # One job, delivered once: only the first gateway takes it.
    recipients = members(5)
    await observer.publish_job(email_job("one-1", recipients))
    await observer.wait_job("one-1", "done")
    await smtp.await_for(lambda box: len(box) == 5)
    assert "one-1" not in second.log()
    assert state(observer, "gw-b") == "conflict"

    # The first dies: the standby takes the next job.
    first.kill()
    await observer.wait(lambda: state(observer, "gw-b") == "ready")
    await observer.publish_job(email_job("two-1", recipients))
    await observer.wait_job("two-1", "done")
    mails = await smtp.await_for(lambda box: len(box) == 10)
    assert Counter(m.rcpts[0] for m in mails) == {r["email"]: 2 for r in recipients}
    assert "two-1" in second.log()


async def test_two_gateways_starting_together_one_serves(start: Start, observer: Observer) -> None:
    start("a", "gw-a")
    start("b", "gw-b")
    settled = ("ready", "conflict")
    await observer.wait(
        lambda: state(observer, "gw-a") in settled and state(observer, "gw-b") in settled
    )
    states = sorted([state(observer, "gw-a"), state(observer, "gw-b")], key=str)
    assert states == ["conflict", "ready"]


async def test_same_node_twice_the_second_process_keeps_off_its_topics(
    start: Start, observer: Observer, smtp: SmtpServer
) -> None:
    first = start("a", "gw")
    await observer.wait(lambda: state(observer, "gw") == "ready")
    boot = health(observer, "gw")
    assert boot is not None
    second = start("b", "gw")
    second.wait_log("ERROR gateway.presence: another live gateway serves prefix plp: node gw")
    # The serving process's health stands (the second one's claim is overwritten at once),
    # and the second never opens the jobs session it would take from the first.
    await observer.wait(
        lambda: (h := health(observer, "gw")) is not None and h["boot_id"] == boot["boot_id"]
    )
    await observer.publish_job(email_job("same-1", members(3)))
    await observer.wait_job("same-1", "done")
    assert "connected to MQTT broker" not in second.log()

    first.kill()
    second.wait_log("connected to MQTT broker")
    await observer.wait(
        lambda: (
            (h := health(observer, "gw")) is not None
            and h["boot_id"] != boot["boot_id"]
            and h["state"] == "ready"
        )
    )
    await observer.publish_job(email_job("same-2", members(3)))
    await observer.wait_job("same-2", "done")
    await smtp.await_for(lambda box: len(box) == 6)
