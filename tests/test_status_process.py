"""The status child (gateway.status_child): what the gateway reports is published by a process
of its own. Nothing handed to it is lost when it dies (given again to the next child, a
repeat possible, a gap never), it leaves with the gateway (kill -9 included) and never fights
a restarted gateway for the status connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench import procstat
from gateway import status_process
from gateway.config import MqttConfig
from gateway.mqtt import MqttLink, Outgoing
from gateway.mqtt_connect import Broker
from gateway.status import dumps
from gateway.status_wire import (
    ChildSetup,
    Decoder,
    WireError,
    encode,
    read_setup,
    setup_frame,
)
from gateway.tasks import cancel_all
from tests.conftest import GatewayFactory
from tests.fixtures import Mosquitto, Observer, email_job, members


def test_frames_cross_in_any_pieces_with_their_qos_retain_and_bytes() -> None:
    messages = [
        Outgoing("plp/jobs/a/deliveries", b'{"state":"sent"}'),
        Outgoing("plp/jobs/a/status", b"", qos=1, retain=True),
        Outgoing("plp/x", bytes(range(256)) * 40, qos=0),
        Outgoing("plp/\udcff/bad", b"paho refuses this topic, the pipe carries it"),
        Outgoing("plp/é/ü", b"\x00"),
    ]
    data = encode(messages) * 3
    rng = random.Random(7)
    for _ in range(20):
        decoder, got, pos = Decoder(), [], 0
        while pos < len(data):
            step = rng.randint(1, 700)
            got += decoder.feed(data[pos : pos + step])
            pos += step
        assert got == messages * 3


def test_the_setup_crosses_whole_and_never_shows_the_password() -> None:
    cfg = MqttConfig(username="gw", password="s3cret", host="broker.example", port=8883)
    setup = ChildSetup(Broker.of(cfg), "plp-gateway-a-status", 0.5, 30.0, "INFO", "json")
    frame = setup_frame(setup)
    data = frame + b"after"  # the first message frames may come in the same read
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    got, rest = read_setup(iter(pieces))
    assert got == setup and got.broker.password == "s3cret"
    assert rest == b"after"[: len(rest)] and rest
    assert "s3cret" not in repr(got)
    with pytest.raises(WireError):
        read_setup(iter([b"\x00\x00\x00\x02{}"]))
    with pytest.raises(WireError):
        read_setup(iter([frame[:-1]]))


@contextlib.asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[None]:
    """The link, both its connections up (a cancellation that lands while the job connection
    is being set up can be lost in Python 3.11's `asyncio.wait_for`, inside aiomqtt)."""
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 30)
        await asyncio.wait_for(link.status_connected.wait(), 30)
        yield
    finally:
        assert not await cancel_all([task])


def link_to(broker: Mosquitto, name: str) -> MqttLink:
    cfg = MqttConfig(host=broker.host, port=broker.port, reconnect_initial_delay=0.1)
    return MqttLink(cfg, name, [], Outgoing(f"plp/will/{name}", b""), status_process=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by its parent) is gone for our purpose.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] != "Z"


async def test_a_child_killed_mid_stream_loses_nothing_and_a_new_one_takes_over(
    broker: Mosquitto,
) -> None:
    link = link_to(broker, "kill-child")
    async with Observer(broker, topics=("stream",)) as obs, running(link):
        first = link.status_pid
        assert first is not None and alive(first)
        for i in range(3000):
            link.publish("plp/stream", str(i))
        await obs.wait(lambda: len(obs.on("/stream")) >= 300, 30)
        os.kill(first, signal.SIGKILL)
        for i in range(3000, 6000):
            link.publish("plp/stream", str(i))
        await obs.wait(lambda: {s.payload for s in obs.on("/stream")} >= {b"5999"}, 60)
        assert await link.flush(30)
        assert link.status_pid not in (None, first)
    got = [int(s.payload) for s in obs.on("/stream")]
    # Each message at least once; in order but for the repeats of those the killed child
    # had not reported finished.
    assert set(got) == set(range(6000))
    assert list(dict.fromkeys(got)) == list(range(6000))
    assert len(got) - 6000 <= 1024  # at most what one child holds


async def test_a_stuck_child_is_replaced_and_what_it_held_goes_out(
    broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_process, "STALL_S", 1.5)
    monkeypatch.setattr(status_process, "STOP_GRACE", 1.0)
    link = link_to(broker, "stuck")
    async with Observer(broker, topics=("stuck",)) as obs, running(link):
        first = link.status_pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)  # alive, connected, and reading nothing
        try:
            for i in range(100):
                link.publish("plp/stuck", str(i))
            await obs.wait(lambda: len({s.payload for s in obs.on("/stuck")}) == 100, 60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(first, signal.SIGKILL)
        assert link.status_pid not in (None, first)
        assert await link.flush(30)


async def test_paho_refusals_in_the_child_are_finished_and_the_rest_goes_on(
    broker: Mosquitto,
) -> None:
    link = link_to(broker, "refused")
    async with Observer(broker, topics=("refused/#",)) as obs, running(link):
        link.publish("plp/refused/a+b", b"{}")
        link.publish("plp/refused/#", b"{}")
        link.publish("plp/refused/\udcff", b"{}")
        link.publish("plp/refused/next", b"still here")
        await obs.wait(lambda: obs.on("/refused/next"), 30)
        assert await link.flush(30)  # the refused three count as finished
    assert [s.topic for s in obs.seen] == ["plp/refused/next"]


async def test_a_broker_outage_keeps_the_queue_for_the_next_connection(
    broker: Mosquitto,
) -> None:
    link = link_to(broker, "outage")
    async with running(link):
        broker.stop()
        await asyncio.wait_for(_cleared(link), 30)
        for i in range(500):
            link.publish("plp/outage", str(i), retain=False)
        broker.start()
        async with Observer(broker, topics=("outage",)) as obs:
            await obs.wait(lambda: len({s.payload for s in obs.on("/outage")}) == 500, 60)
            assert await link.flush(30)
        assert link.last_error is None


async def _cleared(link: MqttLink) -> None:
    while link.status_connected.is_set():  # noqa: ASYNC110 - the test's own wait
        await asyncio.sleep(0.05)


async def test_the_child_leaves_with_a_killed_gateway_and_a_restart_is_not_fought(
    gateway: GatewayFactory, observer: Observer, broker: Mosquitto
) -> None:
    proc = gateway()
    assert proc.proc is not None
    async with asyncio.timeout(30):
        while not (children := procstat.children(proc.proc.pid)):  # noqa: ASYNC110 - /proc
            await asyncio.sleep(0.05)
    proc.kill()
    for child in children:
        async with asyncio.timeout(30):
            while alive(child):  # noqa: ASYNC110 - polling another process
                await asyncio.sleep(0.05)
    proc.start()
    await observer.publish_job(email_job("after-restart", members(3)))
    await observer.wait_job("after-restart", "done", timeout=60)
    status = [c for c in broker.connections() if c.client_id.endswith("-status")]
    assert len(status) == 2, status  # one per start: no child came back to take it over


def test_status_payloads_are_the_bytes_json_wrote_and_what_orjson_refuses_still_goes() -> None:
    def old(obj: object) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    event = {
        "job_id": "zone5344-2026-000123",
        "delivery_id": 17,
        "ref": "m-é-😀",
        "channel": "sms",
        "address": "+32470****12",
        "lang": "nl",
        "state": "delivered",
        "previous": "sent",
        "attempt": 2,
        "reason": None,
        "time": "2026-12-07T10:00:00.123Z",
        "detail": '\x00\x1f\x7f\b\f\n\r\t"\\/\u2028',
        "provider_id_hash": ["ab12cd"],
        "possibly_sent": True,
        "counts": {"sms": {"delivered": 10_000, "failed": 0}},
    }
    assert dumps(event) == old(event)
    for refused in ({1: "int key"}, {"n": 2**70}):
        assert dumps(refused) == old(refused)
    with pytest.raises(UnicodeEncodeError):  # as before: a lone surrogate is never published
        dumps({"ref": "\udcff"})
