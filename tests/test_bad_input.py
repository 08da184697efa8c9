"""Bad input gets a clear, machine-readable error on plp/jobs/rejected; the daemon lives on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import JobsConfig
from gateway.jobs import JobRejected, parse_job
from gateway.payload import value_bound
from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer, email_job, members

ENABLED = frozenset({"email"})


def job(**changes: Any) -> dict[str, Any]:
    base = email_job("bad-1", members(2))
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def codes(payload: bytes, limits: JobsConfig | None = None) -> list[tuple[str, str]]:
    with pytest.raises(JobRejected) as info:
        parse_job(payload, limits or JobsConfig(), ENABLED)
    return [(e.path, e.code) for e in info.value.errors]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"not json {", ("$", "invalid_json")),
        (b"[1, 2]", ("$", "not_an_object")),
        (json.dumps(job(priority=None)).encode(), ("$.priority", "missing_field")),
        (json.dumps(job(colour="red")).encode(), ("$.colour", "unknown_field")),
        (json.dumps(job(test="yes")).encode(), ("$.test", "wrong_type")),
        (json.dumps(job(id="zone 5344")).encode(), ("$.id", "invalid_format")),
        (json.dumps(job(id="x" * 10_000)).encode(), ("$.id", "invalid_format")),
        (json.dumps(job(message={"xx": "hello"})).encode(), ("$.message.xx", "unknown_language")),
        (json.dumps(job(recipients=[])).encode(), ("$.recipients", "too_short")),
        (
            json.dumps(job(ttl=None, expires_at="2020-01-01T00:00:00+01:00")).encode(),
            ("$.expires_at", "expired"),
        ),
        (json.dumps(job(channels=["fax"])).encode(), ("$.channels[0]", "invalid_value")),
        (json.dumps(job(ttl=-5)).encode(), ("$.ttl", "out_of_range")),
        (json.dumps(job(voice={"repeat": 9})).encode(), ("$.voice.repeat", "out_of_range")),
    ],
)
def test_each_bad_payload_has_a_precise_error(payload: bytes, expected: tuple[str, str]) -> None:
    assert expected in codes(payload)


def test_too_many_recipients_and_oversize_payload_are_refused() -> None:
    many = json.dumps(job(recipients=[{"email": f"a{i}@x.be"} for i in range(100_001)])).encode()
    assert ("$.recipients", "too_many_recipients") in codes(many)
    small = JobsConfig(max_payload_bytes=2048)
    big = json.dumps(job(message={"fr": "x" * 3000})).encode()
    assert codes(big, small) == [("$", "payload_too_large")]


def test_the_bound_on_values_counts_each_bracket_comma_and_colon() -> None:
    # Those in strings too (a looser bound), escaped or not; nothing else.
    payload = '{"a": [1, {"b": "x,y:z[{"}], "c\\"": "é"}'.encode()
    assert value_bound(payload) == sum(payload.count(c) for c in b"{[,:") + 1 == 13


def test_invalid_address_fails_only_that_recipient() -> None:
    recipients = [*members(2), {"ref": "bad", "email": "not-an-address", "lang": "fr"}]
    parsed, _ = parse_job(json.dumps(job(recipients=recipients)).encode(), JobsConfig(), ENABLED)
    bad = parsed.recipients[2]
    assert bad.email is None and bad.email_error == "invalid_email"
    assert parsed.recipients[0].email is not None


async def test_daemon_rejects_every_bad_payload_and_keeps_serving(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    proc = gateway()
    bad_payloads: list[bytes] = [
        b"not json",
        b'"just a string"',
        json.dumps(job(id="bad-unknown", colour="red")).encode(),
        json.dumps(job(id="bad-type", test="yes")).encode(),
        json.dumps(job(id="has spaces")).encode(),
        json.dumps(job(id="bad-lang", message={"es": "hola"})).encode(),
        json.dumps(job(id="bad-empty", recipients=[])).encode(),
        json.dumps(job(id="bad-late", ttl=None, expires_at="2020-01-01T00:00:00Z")).encode(),
    ]
    for payload in bad_payloads:
        await observer.publish("plp/jobs", payload)
    await observer.wait(lambda: len(observer.rejections()) >= len(bad_payloads))
    rejections = observer.rejections()
    assert all(
        r["errors"] and {"path", "code", "message"} <= set(r["errors"][0]) for r in rejections
    )
    assert [r["errors"][0]["code"] for r in rejections[:2]] == ["invalid_json", "not_an_object"]
    assert (await observer.wait_job("bad-lang", "rejected"))["state"] == "rejected"

    # A job with one invalid address among valid ones runs for the others.
    recipients = [*members(2), {"ref": "broken", "email": "nobody-at-all", "lang": "nl"}]
    await observer.publish_job(email_job("mixed-1", recipients))
    status = await observer.wait_job("mixed-1", "done")
    assert status["totals"] == {"delivered": 2, "failed": 1}
    failed = [e for e in observer.events("mixed-1") if e["state"] == "failed"]
    assert failed[0]["ref"] == "broken" and failed[0]["reason"] == "invalid_email"

    # Same id again: same content is ignored, other content is rejected and the first stands.
    await observer.publish_job(email_job("mixed-1", recipients))
    await observer.publish_job(email_job("mixed-1", members(1)))
    await observer.wait(
        lambda: any(e["code"] == "duplicate_id" for r in observer.rejections() for e in r["errors"])
    )
    assert observer.status("mixed-1")["state"] == "done"  # type: ignore[index]
    assert len(smtp.mailbox) == 2

    # A cancel for an unknown job is answered, not crashed on.
    await observer.publish("plp/jobs/nope-42/cancel", b"")
    await observer.wait(
        lambda: any(e["code"] == "unknown_job" for r in observer.rejections() for e in r["errors"])
    )
    assert proc.proc is not None and proc.proc.poll() is None
    assert "Traceback" not in proc.log()


async def test_cancel_stops_what_has_not_happened_yet(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    smtp.script.delay = 0.02
    gateway()
    await observer.publish_job(email_job("cancel-1", members(200)))
    await smtp.await_for(lambda box: len(box) >= 10)
    await observer.publish("plp/jobs/cancel-1/cancel", json.dumps({"reason": "suspect caught"}))
    status = await observer.wait_job("cancel-1", "cancelled")
    sent = len(smtp.mailbox)
    assert status["totals"].get("cancelled", 0) >= 100
    assert status["totals"].get("delivered", 0) + status["totals"]["cancelled"] == 200
    assert sent < 200
