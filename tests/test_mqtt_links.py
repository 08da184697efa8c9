"""The gateway's connections to the broker: jobs on one (persistent session, manual
acknowledgement), what it reports on another (clean session, `<client_id>-status`), so the
broker's acknowledgements of status traffic never sit in front of a job (Nagle on a stock
broker; the latency itself is measured by bench/bench_broker_latency.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import parse_config
from gateway.mqtt import MqttLink, Outgoing
from gateway.tasks import cancel_all
from tests.conftest import GatewayFactory
from tests.fixtures import (
    GatewayProcess,
    Mosquitto,
    Observer,
    SmtpServer,
    email_job,
    gateway_config,
    members,
)

CLIENT_ID = "plp-gateway-test"  # plp-gateway-<node>
STATUS_CLIENT_ID = f"{CLIENT_ID}-status"


async def take_over_status_connection(broker: Mosquitto) -> None:
    """Connect with the gateway's status client id, which makes the broker close the
    gateway's status connection; return once the gateway has taken it back (the broker then
    closes ours)."""
    with contextlib.suppress(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port, identifier=STATUS_CLIENT_ID) as c:
            async with asyncio.timeout(30):  # the gateway never came back: fails the test
                async for _ in c.messages:  # subscribed to nothing: ends when closed
                    pass


async def test_status_connection_lost_mid_job_loses_no_event_and_keeps_the_job_session(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer, broker: Mosquitto
) -> None:
    smtp.script.delay = 0.01  # 200 mails at concurrency 4: the job runs while we cut
    proc = gateway()
    recipients = members(200)
    await observer.publish_job(email_job("cut-1", recipients))
    for _ in range(5):
        await take_over_status_connection(broker)
    await observer.wait_job("cut-1", "done", timeout=90)

    events = observer.events("cut-1")
    for r in recipients:
        # What the broker had not confirmed is sent again: a repeat is possible, a gap not.
        states = list(dict.fromkeys(e["state"] for e in events if e["ref"] == r["ref"]))
        assert states == ["queued", "sending", "delivered"], (r["ref"], states)
    counts = Counter(m.rcpts[0] for m in smtp.mailbox)
    assert len(counts) == 200 and max(counts.values()) == 1
    log = proc.log()
    assert log.count("MQTT link down (status connection)") >= 5
    # The job session never noticed (and the status connection has no will to publish):
    # jobs are not held up by what the gateway reports.
    assert log.count("connected to MQTT broker") == 1
    assert [m.payload for m in observer.on("/gateway/test/availability")] == [b"online"]


async def test_one_node_speaks_3_1_1_unless_told_5_and_keeps_its_session_under_5(
    tmp_path: Path, broker: Mosquitto, smtp: SmtpServer, observer: Observer
) -> None:
    config = gateway_config(tmp_path, broker, smtp)
    proc = GatewayProcess(config, tmp_path)

    def start() -> None:
        offset = len(proc.log())
        proc.start()
        proc.wait_log("connected to MQTT broker", after=offset)

    def protocols() -> set[str]:
        return {c.protocol for c in broker.connections() if c.client_id.startswith(CLIENT_ID)}

    try:
        start()  # as before: MQTT 3.1.1
        assert protocols() == {"3.1.1"}
        assert proc.terminate() == 0
        config.write_text(
            config.read_text().replace(
                "reconnect_initial_delay", 'protocol = "5"\nreconnect_initial_delay', 1
            )
        )
        start()  # MQTT 5 takes the 3.1.1 session over, and keeps it after a clean stop
        assert f"as {CLIENT_ID} (MQTT 5)" in proc.log()
        jobs = [c for c in broker.connections() if c.client_id == CLIENT_ID][-1]
        assert jobs.protocol == "5" and not jobs.clean
        assert proc.terminate() == 0
        await observer.publish_job(email_job("v5-offline-1", members(3)))
        start()
        await observer.wait_job("v5-offline-1", "done")
        assert len(await smtp.await_for(lambda box: len(box) == 3)) == 3
        assert protocols() == {"3.1.1", "5"}
    finally:
        proc.stop()


async def test_a_refused_job_subscription_is_logged_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker without shared subscriptions answers the SUBSCRIBE with a failure (MQTT 5
    reason code 0x9E); the gateway says so rather than waiting for jobs that never come."""

    class Refusing:
        async def subscribe(self, topic: str, qos: int) -> list[ReasonCode]:
            code = 0x9E if topic.startswith("$share/") else qos
            return [ReasonCode(PacketTypes.SUBACK, identifier=code)]

    cfg = parse_config(
        {"node": "a", "mqtt": {"shared_group": "g"}, "store": {"url": "postgresql://h/db"}}
    )
    link = MqttLink(
        cfg.mqtt, cfg.client_id, ["$share/g/plp/jobs", "plp/jobs/+/cancel"], Outgoing("t", b"")
    )
    with caplog.at_level(logging.ERROR, logger="gateway.mqtt"):
        await link._sync_subscriptions(Refusing())  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "the broker refused the subscription to $share/g/plp/jobs:"
        " Shared subscription not supported"
    ]


async def test_a_burst_of_events_arrives_whole_and_in_order_and_a_lone_one_at_once(
    broker: Mosquitto,
) -> None:
    """The status connection writes a burst corked (one segment for many events): every
    event arrives, in order, and the connection is uncorked after each write, so a lone
    event that follows is not held back."""
    cfg = parse_config({"node": "a", "mqtt": {"host": broker.host, "port": broker.port}})
    link = MqttLink(cfg.mqtt, cfg.client_id, [], Outgoing("plp/will", b""))
    task = asyncio.create_task(link.run())
    try:
        async with Observer(broker, topics=("burst",)) as obs:
            await asyncio.wait_for(link.connected.wait(), 30)
            await asyncio.wait_for(link.status_connected.wait(), 30)
            for i in range(500):
                link.publish("plp/burst", str(i))
            await obs.wait(lambda: len(obs.on("/burst")) == 500, 30)
            link.publish("plp/burst", "lone")
            await obs.wait(lambda: len(obs.on("/burst")) == 501, 30)
        assert [s.payload.decode() for s in obs.on("/burst")] == [
            *map(str, range(500)),
            "lone",
        ]
    finally:
        assert not await cancel_all([task])
