"""The e-mail channel's connection pool across configuration reloads: never runs dry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from gateway.channel import Attempt
from gateway.config import EmailConfig
from gateway.domain import Priority
from gateway.mail import EmailChannel
from tests.fixtures import SmtpServer


def attempt(n: int) -> Attempt:
    return Attempt(
        delivery_id=n, job_id="pool-1", channel="email", ref=f"m-{n}",
        address=f"member{n}@example.be", lang="fr", text="Alerte PLP", subject="Alerte",
        priority=Priority.HOT, number=1, expires_at=datetime.now(UTC) + timedelta(minutes=5),
        test=False,
    )  # fmt: skip


def config(smtp: SmtpServer, concurrency: int) -> EmailConfig:
    return EmailConfig(
        enabled=True, host="127.0.0.1", port=smtp.port, sender="alerte@police.example.be",
        concurrency=concurrency, timeout=5,
    )  # fmt: skip


async def test_reload_while_idle_keeps_connections_available(smtp: SmtpServer) -> None:
    channel = EmailChannel(config(smtp, 4))
    await channel.start()
    try:
        await channel.send(attempt(1))
        channel.reconfigure(config(smtp, 2))  # nothing in flight: every idle client replaced
        async with asyncio.timeout(10):
            await asyncio.gather(*(channel.send(attempt(n)) for n in range(2, 8)))
        channel.reconfigure(config(smtp, 6))
        async with asyncio.timeout(10):
            await asyncio.gather(*(channel.send(attempt(n)) for n in range(8, 20)))
    finally:
        await channel.stop()
    assert len(smtp.mailbox) == 19


async def test_reload_during_sends_replaces_the_busy_connections_when_they_finish(
    smtp: SmtpServer,
) -> None:
    smtp.script.delay = 0.2
    channel = EmailChannel(config(smtp, 3))
    await channel.start()
    try:
        busy = [asyncio.create_task(channel.send(attempt(n))) for n in range(1, 4)]
        async with asyncio.timeout(10):  # the three sends hold their connections
            while len(channel._in_use) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        channel.reconfigure(config(smtp, 1))
        async with asyncio.timeout(10):
            await asyncio.gather(*busy)
            await asyncio.gather(*(channel.send(attempt(n)) for n in range(4, 7)))
        assert channel._clients == 1, "the lowered limit is reached once the busy ones return"
    finally:
        await channel.stop()
    assert len(smtp.mailbox) == 6
