"""A job published on MQTT ends as e-mails in the right language, with status on MQTT."""

from __future__ import annotations

from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer, email_job, members


async def test_job_becomes_emails_in_each_members_language(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    gateway()
    recipients = members(8)
    await observer.publish_job(email_job("zone5344-2026-000123", recipients))

    status = await observer.wait_job("zone5344-2026-000123", "done")
    assert status["totals"] == {"delivered": 8}
    mails = await smtp.await_for(lambda box: len(box) == 8)
    by_rcpt = {m.rcpts[0]: m for m in mails}
    for r in recipients:
        mail = by_rcpt[r["email"]]
        expected = {
            "fr": "cambriolages",
            "nl": "Inbraakgolf",
            "de": "Einbruchsserie",
            "en": "Burglaries",
        }
        assert expected[r["lang"]] in mail.body
        assert mail.message["Content-Language"] == r["lang"]
        assert (
            mail.message["Message-ID"] == f"<plp.zone5344-2026-000123.{r['ref']}@police.example.be>"
        )
    events = observer.events("zone5344-2026-000123")
    for r in recipients:
        states = [e["state"] for e in events if e["ref"] == r["ref"]]
        assert states == ["queued", "sending", "delivered"]
    assert all("@" not in e["address"] or "***" in e["address"] for e in events)
    retained = observer.on("/jobs/zone5344-2026-000123/status")
    assert retained and retained[-1].json()["state"] == "done"


async def test_health_and_availability_are_retained(
    gateway: GatewayFactory, observer: Observer
) -> None:
    gateway()
    await observer.wait(lambda: observer.on("/gateway/test/availability"))
    assert observer.on("/gateway/test/availability")[-1].payload == b"online"
    health = await observer.wait(lambda: observer.on("/gateway/test/health"))
    body = health[-1].json()
    assert body["state"] in ("ready", "degraded")
    assert body["links"]["broker"]["state"] == "up"
    assert "email" in body["queues"]
