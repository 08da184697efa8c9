"""One payload must never stop the gateway (issue 12, part A): hostile ids, nesting, numbers,
sizes and characters are each answered on plp/jobs/rejected with their own reason code, no
traceback, nothing published outside the job's own subtree, and the next alert goes out."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from gateway.config import MqttConfig
from gateway.errors import InvalidJobId
from gateway.job_id import valid_job_id
from gateway.mqtt import MqttLink, Outgoing
from gateway.signing import sign
from gateway.status import Topics
from gateway.tasks import cancel_all
from tests.conftest import GatewayFactory
from tests.fixtures import GatewayProcess, Mosquitto, Observer, SmtpServer, email_job, members
from tests.test_signed_jobs import KEY, SECURITY, now


def job(job_id: str, **changes: Any) -> dict[str, Any]:
    base = email_job(job_id, members(1, domain=f"{job_id}.example.be"))
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def codes(rejection: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["path"], e["code"]) for e in rejection["errors"]]


@contextlib.asynccontextmanager
async def every_topic(broker: Mosquitto) -> AsyncIterator[list[str]]:
    """The topic of every message on the broker, `#` from its root (Observer sees plp/#)."""
    topics: list[str] = []

    async def run() -> None:
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.subscribe("#", qos=1)
            ready.set()
            async for m in client.messages:
                topics.append(str(m.topic))

    ready = asyncio.Event()
    task = asyncio.create_task(run())
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield topics
    finally:
        assert not await cancel_all([task])


def assert_alive(proc: GatewayProcess) -> None:
    assert proc.proc is not None and proc.proc.poll() is None, proc.log()[-3000:]
    assert "Traceback" not in proc.log()


async def hot_job_goes_out(observer: Observer, smtp: SmtpServer, job_id: str) -> None:
    before = len(smtp.mailbox)
    await observer.publish_job(job(job_id))
    await observer.wait_job(job_id, "done")
    assert len(smtp.mailbox) == before + 1


HOSTILE_IDS = ["a+b", "a#", "#", "+", "victim-1/deliveries", "a/b/c/d", "..", ".", "",
               "$SYS", "x\n", "-rf", "\u202eevil", "ab\x00c", "x" * 129]  # fmt: skip


async def test_ids_that_break_the_rule_are_reported_on_rejected_only(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer, broker: Mosquitto
) -> None:
    proc = gateway()
    async with every_topic(broker) as topics:
        await observer.publish_job(job("victim-1"))
        await observer.wait_job("victim-1", "done")
        for job_id in HOSTILE_IDS:
            await observer.publish_job(job(job_id))
        await observer.wait(lambda: len(observer.rejections()) >= len(HOSTILE_IDS))
        await hot_job_goes_out(observer, smtp, "after-ids")

    rejections = observer.rejections()
    assert all(r["job_id"] is None and ("$.id", "invalid_format") in codes(r) for r in rejections)
    allowed = {"plp/jobs", "plp/jobs/rejected", "plp/gateway/test/availability",
               "plp/gateway/test/health"}  # fmt: skip
    for topic in topics:
        if topic in allowed:
            continue
        _, _, job_id, *rest = topic.split("/")
        assert valid_job_id(job_id) and job_id in {"victim-1", "after-ids"}, topic
        assert rest in (["status"], ["deliveries"]), topic
    victim = observer.on("/jobs/victim-1/deliveries")
    assert [json.loads(m.payload)["job_id"] for m in victim] == ["victim-1"] * len(victim)
    assert_alive(proc)


async def test_cancels_with_hostile_ids_are_answered(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    proc = gateway()
    # (mosquitto itself refuses control characters in a topic: those never arrive.)
    bad = ["a b", "\u202eevil", "$x", "..", "x" * 200]
    for job_id in bad:
        await observer.publish(f"plp/jobs/{job_id}/cancel", b'{"reason": "' + b"[" * 5000 + b'"}')
    await observer.publish("plp/jobs/nope-1/cancel", b"[" * 5000)
    await observer.wait(lambda: len(observer.rejections()) >= len(bad) + 1)
    rejections = observer.rejections()
    assert [codes(r) for r in rejections[: len(bad)]] == [[("topic", "invalid_format")]] * len(bad)
    assert codes(rejections[-1]) == [("$", "unknown_job")]
    assert all(r["job_id"] in (None, "nope-1") for r in rejections)
    assert rejections[1]["topic"] == "plp/jobs/\\u202eevil/cancel"  # escaped: no bidi override
    await hot_job_goes_out(observer, smtp, "after-cancels")
    assert_alive(proc)


async def test_a_cancel_reason_is_kept_as_one_safe_line(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    """A cancel's free-text reason reaches the retained status and the logs: no terminal
    escape, line break or bidi override from outside goes with it."""
    proc = gateway()
    # The member's server says "try later" for a while: the job is still running.
    pending = job("cancel-reason", ttl=600)
    address = pending["recipients"][0]["email"]
    smtp.script.replies[address] = ["451 4.3.0 try later"] * 1000
    await observer.publish_job(pending)
    await observer.wait(lambda: smtp.handler.attempts.get(address, 0) >= 1, timeout=30)
    reason = "fin\x1b[31m\nde l'alerte \u202eevil\u2028ok"
    await observer.publish("plp/jobs/cancel-reason/cancel", json.dumps({"reason": reason}).encode())
    status = await observer.wait_job("cancel-reason", "cancelled", timeout=30)
    assert status["reason"] == "cancelled: fin [31m de l'alerte  evil ok"
    assert "\x1b" not in proc.log() and "\u202e" not in proc.log()


def test_topics_refuse_an_id_that_breaks_the_rule() -> None:
    topics = Topics("plp", "test")
    assert topics.job_status("zone5344-2026:01.a_b") == "plp/jobs/zone5344-2026:01.a_b/status"
    for job_id in HOSTILE_IDS:
        with pytest.raises(InvalidJobId):
            topics.job_status(job_id)
        with pytest.raises(InvalidJobId):
            topics.job_deliveries(job_id)


async def test_the_mqtt_writer_drops_a_publication_paho_refuses(
    broker: Mosquitto, observer: Observer
) -> None:
    link = MqttLink(
        MqttConfig(host=broker.host, port=broker.port), "writer-test", [],
        Outgoing("plp/writer/availability", b"offline"),
    )  # fmt: skip
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        link.publish("plp/jobs/a+b/status", b"{}")
        link.publish("plp/jobs/#/status", b"{}")
        link.publish("plp/writer/next", b"still here")
        await observer.wait(lambda: observer.on("/writer/next"))
        assert not task.done()
        # (The link's own `online`, beside its will, is not the writer's.)
        topics = [s.topic for s in observer.seen if s.topic != "plp/writer/availability"]
        assert topics == ["plp/writer/next"]
    finally:
        assert not await cancel_all([task])


def deep(levels: int) -> bytes:
    return b'{"id": "deep-1", "x": ' + b"[" * levels + b"]" * levels + b"}"


async def test_nesting_and_numbers_are_clean_rejections(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    proc = gateway(SECURITY.format(require="false"))
    no_ttl = {"ttl": None}
    signed = sign(job("signed-1"), "dispatch-1", KEY, now())
    cases: list[tuple[bytes, tuple[str, str]]] = [
        (deep(5000), ("$", "too_deep")),
        (b"[" * 100_000, ("$", "invalid_json")),
        (json.dumps(job("ttl-1", ttl=1e300)).encode(), ("$.ttl", "out_of_range")),
        (json.dumps(job("exp-1", **no_ttl, expires_at="0001-01-01T00:00:00+01:00")).encode(),
         ("$.expires_at", "out_of_range")),
        (json.dumps(job("exp-2", **no_ttl, expires_at="9999-12-31T23:59:59-01:00")).encode(),
         ("$.expires_at", "out_of_range")),
        (b'{"id": "nan-1", "ttl": NaN}', ("$", "invalid_number")),
        (b'{"id": "inf-1", "ttl": -Infinity}', ("$", "invalid_number")),
    ]  # fmt: skip
    for raw in (b"NaN", b"1e400", b"9" * 400):
        forged = json.dumps(signed).replace('"v": 1', f'"v": {raw.decode()}').encode()
        cases.append((forged, ("$", "out_of_range" if raw != b"NaN" else "invalid_number")))
    for payload, _ in cases:
        await observer.publish("plp/jobs", payload)
    await observer.wait(lambda: len(observer.rejections()) >= len(cases))
    got = [codes(r) for r in observer.rejections()]
    assert got == [[expected] for _, expected in cases]
    assert (await observer.wait_job("exp-1", "rejected"))["id"] == "exp-1"  # a valid id: its status
    await hot_job_goes_out(observer, smtp, "after-numbers")
    assert_alive(proc)


async def test_huge_payloads_are_refused_cheaply_with_a_short_error_list(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    proc = gateway()
    # 16 MB of 1.2 M invalid recipients: refused before it is parsed.
    head = b'{"id": "huge-1", "priority": "hot", "channels": ["email"], "recipients": ['
    huge = head + b",".join([b'{"x":1}'] * 1_200_000) + b"]}"
    # Few values each, but more members than max_recipients: refused before one is validated.
    many = json.dumps(job("many-1", recipients=[1] * 100_001)).encode()
    # 20,000 invalid members within the limits: the first errors and the count.
    invalid = json.dumps(job("invalid-1", recipients=[{"colour": i} for i in range(20_000)]))
    for payload in (huge, many, invalid.encode()):
        await observer.publish("plp/jobs", payload)
    await observer.wait(lambda: len(observer.rejections()) >= 3)
    huge_r, many_r, invalid_r = observer.rejections()
    assert codes(huge_r) == [("$", "too_many_values")] and huge_r["job_id"] is None
    assert codes(many_r) == [("$.recipients", "too_many_recipients")]
    assert many_r["job_id"] == "many-1"
    assert len(invalid_r["errors"]) == 20 and invalid_r["errors_total"] == 20_000
    assert codes(invalid_r)[0] == ("$.recipients[0].colour", "unknown_field")
    assert all(len(m.payload) < 10_000 for m in observer.on("/jobs/rejected"))
    await hot_job_goes_out(observer, smtp, "after-huge")
    assert_alive(proc)


async def test_control_characters_are_refused_with_their_place(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    proc = gateway()
    subject = {"fr": "Alerte\r\nBcc: intruder@evil.example", "nl": "BIN"}
    refused = [
        (job("crlf-1", subject=subject), ("$.subject.fr", "invalid_characters")),
        (job("esc-1", message={"fr": "Fermez\x1b[2J tout"}), ("$.message.fr", "invalid_characters")),
        (job("nul-1", message={"fr": "a\x00b"}), ("$.message.fr", "invalid_characters")),
        (job("bel-1", message={"en": "ring\x07"}), ("$.message.en", "invalid_characters")),
        (job("bidi-1", message={"nl": "Bel \u202e0474"}), ("$.message.nl", "invalid_characters")),
        (job("voice-1", voice={"plp_name": "PLP\u2066x"}), ("$.voice.plp_name", "invalid_characters")),
    ]  # fmt: skip
    for payload, _ in refused:
        await observer.publish_job(payload)
    await observer.wait(lambda: len(observer.rejections()) >= len(refused))
    assert [codes(r) for r in observer.rejections()] == [[code] for _, code in refused]
    assert "U+000D at character 6" in observer.rejections()[0]["errors"][0]["message"]

    text = "Cambriolages rue des Tilleuls.\nFermez portes et fenêtres.\tMerci."
    accepted = job("lines-1", message={"fr": text}, subject={"fr": "Alerte PLP"})
    accepted["recipients"][0]["lang"] = "fr"
    await observer.publish_job(accepted)
    await observer.wait_job("lines-1", "done")
    mail = smtp.mailbox[-1]
    assert mail.message["Subject"] == "Alerte PLP" and mail.message["Bcc"] is None
    assert "Fermez portes" in mail.body
    assert_alive(proc)
