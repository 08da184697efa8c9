"""The example broker configuration (configs/mosquitto/) enforces TLS, logins and roles:
only `dispatch` can get a job to the gateway; monitoring never sees a job."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest

from tests.fixtures import GatewayProcess, SmtpServer, email_job, members
from tests.mqtt_tls_fixtures import TlsBroker, tls_broker

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    with tls_broker(tmp_path_factory.mktemp("tls-broker")) as b:
        yield b


@asynccontextmanager
async def connect(
    broker: TlsBroker,
    user: str | None,
    *,
    cert: bool = True,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
    identifier: str | None = None,
) -> AsyncIterator[aiomqtt.Client]:
    creds = broker.users[user] if user else None
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        username=user,
        password=password if password is not None else (creds.password if creds else None),
        tls_context=tls or broker.tls_context(user if cert else None),
        identifier=identifier,
        timeout=TIMEOUT,
    )
    async with client:
        yield client


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async def first() -> aiomqtt.Message:
        async for msg in client.messages:
            return msg
        raise AssertionError("connection closed")

    return await asyncio.wait_for(first(), TIMEOUT)


async def test_dispatch_job_reaches_gateway_over_tls_and_status_comes_back(
    broker: TlsBroker,
) -> None:
    async with connect(broker, "gateway") as gw, connect(broker, "dispatch") as dispatch:
        await gw.subscribe("plp/jobs", qos=1)
        await dispatch.subscribe("plp/jobs/+/status", qos=1)
        await dispatch.publish("plp/jobs", b'{"id": "job-1"}', qos=1)
        msg = await next_message(gw)
        assert (str(msg.topic), msg.payload) == ("plp/jobs", b'{"id": "job-1"}')
        await gw.publish("plp/jobs/job-1/status", b'{"state": "done"}', qos=1)
        msg = await next_message(dispatch)
        assert str(msg.topic) == "plp/jobs/job-1/status"


@pytest.mark.parametrize("intruder", ["monitoring", "stranger", "gateway"])
async def test_only_dispatch_can_get_a_job_or_cancel_to_the_gateway(
    broker: TlsBroker, intruder: str
) -> None:
    async with (
        connect(broker, "gateway") as gw,
        connect(broker, intruder, identifier=f"intruder-{intruder}") as other,
        connect(broker, "dispatch") as dispatch,
    ):
        await gw.subscribe("plp/jobs", qos=1)
        await gw.subscribe("plp/jobs/+/cancel", qos=1)
        # The broker has handled each QoS 1 publish (and dropped it) when publish() returns.
        await other.publish("plp/jobs", f'{{"id": "forged-by-{intruder}"}}'.encode(), qos=1)
        await other.publish("plp/jobs/job-1/cancel", b"", qos=1)
        await dispatch.publish("plp/jobs", b'{"id": "marker"}', qos=1)
        msg = await next_message(gw)
        # The first thing the gateway gets is dispatch's marker: the forged ones never came.
        assert (str(msg.topic), msg.payload) == ("plp/jobs", b'{"id": "marker"}')
    assert f"Denied PUBLISH from intruder-{intruder} (d0, q1, r0, m1, 'plp/jobs'" in broker.log()


async def test_monitoring_reads_status_but_never_a_job(broker: TlsBroker) -> None:
    async with (
        connect(broker, "monitoring") as mon,
        connect(broker, "dispatch") as dispatch,
        connect(broker, "gateway") as gw,
    ):
        await mon.subscribe("plp/#", qos=1)
        # A job holds recipients' numbers and addresses: monitoring must not receive it.
        await dispatch.publish("plp/jobs", b'{"id": "job-2", "recipients": []}', qos=1)
        await gw.publish("plp/gateway/gw1/health", b'{"state": "ready"}', qos=1)
        msg = await next_message(mon)
        assert str(msg.topic) == "plp/gateway/gw1/health"


async def test_only_the_gateway_reads_a_directory_list_and_only_directory_sync_sends_one(
    broker: TlsBroker,
) -> None:
    async with (
        connect(broker, "gateway") as gw,
        connect(broker, "dispatch") as dispatch,
        connect(broker, "monitoring") as mon,
        connect(broker, "directory-sync") as central,
    ):
        await gw.subscribe("plp/directory/+/sync", qos=1)
        await dispatch.subscribe("plp/#", qos=1)
        await mon.subscribe("plp/#", qos=1)
        await central.subscribe("plp/directory/+/result", qos=1)
        # A list holds members' data: neither dispatch nor monitoring may read it (or forge one).
        await dispatch.publish("plp/directory/a/sync", b'{"forged": 1}', qos=1)
        await central.publish("plp/directory/a/sync", b'{"plp": "a"}', qos=1)
        msg = await next_message(gw)
        assert (str(msg.topic), msg.payload) == ("plp/directory/a/sync", b'{"plp": "a"}')
        await gw.publish("plp/directory/a/result", b'{"ok": true}', qos=1)
        assert str((await next_message(central)).topic) == "plp/directory/a/result"
        await gw.publish("plp/gateway/gw1/health", b'{"state": "ready"}', qos=1)
        assert str((await next_message(dispatch)).topic) == "plp/gateway/gw1/health"
        assert str((await next_message(mon)).topic) == "plp/gateway/gw1/health"


async def test_the_certificate_not_the_login_names_the_user(broker: TlsBroker) -> None:
    """Another user's name and password with one's own certificate give one's own rights:
    a monitoring certificate with the gateway's login still never reads a job."""
    gateway = broker.users["gateway"]
    async with (
        connect(
            broker, "gateway", tls=broker.tls_context("monitoring"), password=gateway.password
        ) as c,
        connect(broker, "dispatch") as dispatch,
        connect(broker, "gateway") as gw,
    ):
        await c.subscribe("plp/jobs", qos=1)
        await c.subscribe("plp/gateway/#", qos=1)
        await dispatch.publish("plp/jobs", b'{"id": "job-3"}', qos=1)
        await gw.publish("plp/gateway/gw1/health", b'{"state": "ready"}', qos=1)
        msg = await next_message(c)
        # The job never came: the broker treats this client as `monitoring`.
        assert str(msg.topic) == "plp/gateway/gw1/health"


def connect_packet(client_id: str, username: str, password: str) -> bytes:
    """A raw MQTT 3.1.1 CONNECT with user name and password (clean session)."""

    def field(text: str) -> bytes:
        data = text.encode()
        return len(data).to_bytes(2, "big") + data

    body = field("MQTT") + bytes([4, 0xC2, 0, 30]) + field(client_id)
    body += field(username) + field(password)
    assert len(body) < 128  # one-byte remaining length
    return bytes([0x10, len(body)]) + body


async def test_no_client_certificate_is_refused(broker: TlsBroker) -> None:
    # With TLS 1.3 the server checks the client certificate after the client's side of the
    # handshake is done: the refusal arrives as an alert where the CONNACK would be.
    creds = broker.users["dispatch"]

    async def attempt() -> bytes:
        reader, writer = await asyncio.open_connection(
            broker.host, broker.port, ssl=broker.tls_context(None)
        )
        try:
            writer.write(connect_packet("no-cert", creds.username, creds.password))
            await writer.drain()
            return await reader.read(4)
        finally:
            writer.close()

    try:
        answer = await asyncio.wait_for(attempt(), TIMEOUT)
    except ssl.SSLError as exc:
        assert "CERTIFICATE_REQUIRED" in exc.reason or "HANDSHAKE_FAILURE" in exc.reason, exc
    except ConnectionResetError:
        pass
    else:
        assert answer == b"", f"got {answer!r} instead of a refusal"


async def test_raw_connect_with_certificate_is_accepted(broker: TlsBroker) -> None:
    """Control for the test above: the same raw CONNECT with a certificate gets CONNACK 0."""
    creds = broker.users["dispatch"]
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(broker.host, broker.port, ssl=broker.tls_context("dispatch")),
        TIMEOUT,
    )
    try:
        writer.write(connect_packet("with-cert", creds.username, creds.password))
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"\x20\x02\x00\x00"
    finally:
        writer.close()


async def test_server_is_not_trusted_without_our_ca(broker: TlsBroker) -> None:
    untrusting = broker.tls_context(None, trust_ca=False)
    with pytest.raises(aiomqtt.MqttError):
        async with connect(broker, "dispatch", tls=untrusting):
            pass


def test_fixture_hands_out_what_the_end_to_end_test_needs(broker: TlsBroker) -> None:
    assert broker.host == "127.0.0.1" and broker.port > 0 and broker.ca.is_file()
    for name in ("gateway", "dispatch", "monitoring"):
        creds = broker.users[name]
        assert creds.password and Path(creds.cert).is_file() and Path(creds.key).is_file()


def tls_gateway(
    broker: TlsBroker, smtp: SmtpServer, tmp_path: Path, extra: str = ""
) -> GatewayProcess:
    """The real daemon configured for the example broker (its login is sent, and ignored)."""
    creds = broker.users["gateway"]
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'node = "tls"\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'username = "gateway"\npassword = "file:{tmp_path / "mqtt-password"}"\n'
        "reconnect_initial_delay = 0.1\nreconnect_max_delay = 1.0\n"
        f'[mqtt.tls]\nca_file = "{broker.ca}"\ncert_file = "{creds.cert}"\n'
        f'key_file = "{creds.key}"\n'
        f'[store]\npath = "{tmp_path}/gateway.sqlite3"\n'
        f'[email]\nenabled = true\nhost = "127.0.0.1"\nport = {smtp.port}\n' + extra
    )
    (tmp_path / "mqtt-password").write_text(creds.password + "\n")
    proc = GatewayProcess(config, tmp_path)
    proc.start()
    return proc


async def test_batched_delivery_events_reach_dispatch_and_monitoring(
    broker: TlsBroker, smtp: SmtpServer, tmp_path: Path
) -> None:
    """`[status] delivery_events = "batch"` through the example ACL: dispatch and monitoring
    get the events on plp/jobs/<id>/deliveries/batch."""
    proc = tls_gateway(broker, smtp, tmp_path, '[status]\ndelivery_events = "batch"\n')
    try:
        proc.wait_log(f"connected to MQTT broker {broker.host}:{broker.port}")
        async with (
            connect(broker, "dispatch", identifier="dispatch-batch") as dispatch,
            connect(broker, "monitoring", identifier="monitoring-batch") as mon,
        ):
            for client in (dispatch, mon):
                await client.subscribe("plp/jobs/+/deliveries/batch", qos=1)
            await dispatch.publish("plp/jobs", json.dumps(email_job("batched", members(2))))
            for client in (dispatch, mon):
                msg = await next_message(client)
                assert str(msg.topic) == "plp/jobs/batched/deliveries/batch"
    finally:
        proc.stop()


async def test_gateway_over_tls_runs_only_dispatch_jobs(
    broker: TlsBroker, smtp: SmtpServer, tmp_path: Path
) -> None:
    """The real daemon with the example broker: TLS with a client certificate;
    jobs published by anyone but dispatch never reach it (no e-mail, no status)."""
    proc = tls_gateway(broker, smtp, tmp_path)
    try:
        proc.wait_log(f"connected to MQTT broker {broker.host}:{broker.port}")
        async with connect(broker, "dispatch", identifier="dispatch-e2e") as dispatch:
            await dispatch.subscribe("plp/jobs/+/status", qos=1)
            for intruder in ("monitoring", "stranger"):
                async with connect(broker, intruder) as other:
                    await other.publish(
                        "plp/jobs", json.dumps(email_job(f"by-{intruder}", members(1))), qos=1
                    )
            await dispatch.publish("plp/jobs", json.dumps(email_job("by-dispatch", members(2))))

            async def done() -> set[str]:
                seen: set[str] = set()
                async for msg in dispatch.messages:
                    assert isinstance(msg.payload, bytes)
                    if msg.retain:  # left by an earlier test on this broker
                        continue
                    seen.add(str(msg.topic))
                    if json.loads(msg.payload)["state"] == "done":
                        return seen
                raise AssertionError("connection closed")

            topics = await asyncio.wait_for(done(), 30)
        assert topics == {"plp/jobs/by-dispatch/status"}
        assert sorted(m.rcpts[0] for m in smtp.mailbox) == [
            "member0@example.be",
            "member1@example.be",
        ]
        assert "job by-dispatch accepted" in proc.log()
        assert "by-monitoring" not in proc.log() and "by-stranger" not in proc.log()
    finally:
        proc.stop()
