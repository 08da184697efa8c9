"""The gateway's connections to the broker: jobs on one (persistent session, manual
acknowledgement), what it reports on another (clean session, `<client_id>-status`), so the
broker's acknowledgements of status traffic never sit in front of a job (Nagle on a stock
broker; the latency itself is measured by bench/bench_broker_latency.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import aiomqtt

from tests.conftest import GatewayFactory
from tests.fixtures import Mosquitto, Observer, SmtpServer, email_job, members

STATUS_CLIENT_ID = "plp-gateway-test-status"  # client_id plp-gateway-<node> + "-status"


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
