"""SMTP replies decide: 4xx is retried, 5xx fails at once."""

from __future__ import annotations

from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer, email_job, members


async def test_451_then_250_is_retried_and_delivered(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    recipients = members(2)
    smtp.script.replies[recipients[0]["email"]] = ["451 4.7.1 Try again later"]
    gateway()
    await observer.publish_job(email_job("greylist-1", recipients))
    status = await observer.wait_job("greylist-1", "done")
    assert status["totals"] == {"delivered": 2}
    states = [e["state"] for e in observer.events("greylist-1") if e["ref"] == recipients[0]["ref"]]
    assert states == ["queued", "sending", "retrying", "sending", "delivered"]
    retry = next(e for e in observer.events("greylist-1") if e["state"] == "retrying")
    assert retry["reason"] == "smtp_451"
    assert smtp.handler.attempts[recipients[0]["email"]] == 2


async def test_550_fails_without_retry(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    recipients = members(2)
    smtp.script.replies[recipients[1]["email"]] = ["550 5.1.1 No such user"] * 3
    gateway()
    await observer.publish_job(email_job("nouser-1", recipients))
    status = await observer.wait_job("nouser-1", "done")
    assert status["totals"] == {"delivered": 1, "failed": 1}
    failed = [e for e in observer.events("nouser-1") if e["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["reason"] == "smtp_550" and failed[0]["attempt"] == 1
    assert smtp.handler.attempts[recipients[1]["email"]] == 1


async def test_smtp_server_down_is_retried_until_it_returns(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    smtp.stop()
    proc = gateway()
    await observer.publish_job(email_job("smtpdown-1", members(2)))
    await observer.wait(
        lambda: any(e["state"] == "retrying" for e in observer.events("smtpdown-1"))
    )
    smtp.start()
    status = await observer.wait_job("smtpdown-1", "done", timeout=60)
    assert status["totals"] == {"delivered": 2}
    assert "smtp_unreachable" in proc.log()
