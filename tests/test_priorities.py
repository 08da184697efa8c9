"""Hot work always goes before cold work, even when a large cold job is already queued."""

from __future__ import annotations

from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer, email_job, members


async def test_hot_job_overtakes_a_large_queued_cold_job(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    gateway("")
    smtp.script.delay = 0.01
    cold = members(300, domain="cold.example.be")
    hot = members(5, domain="hot.example.be")
    await observer.publish_job(email_job("cold-1", cold, priority="cold"))
    await smtp.await_for(lambda box: len(box) >= 20)
    await observer.publish_job(email_job("hot-1", hot, priority="hot"))
    await observer.wait_job("hot-1", "done")
    box = smtp.mailbox
    cold_done_when_hot_finished = sum(1 for m in box if m.rcpts[0].endswith("cold.example.be"))
    assert cold_done_when_hot_finished < 300 - 50, "hot was sent while most cold work waited"
    await observer.wait_job("cold-1", "done", timeout=120)
    order = [m.rcpts[0].split("@")[1] for m in smtp.mailbox]
    last_hot = max(i for i, d in enumerate(order) if d == "hot.example.be")
    assert order[last_hot + 1 :].count("cold.example.be") >= 50
