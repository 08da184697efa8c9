"""SIGHUP during a running job: a valid new configuration takes effect, an invalid one is
refused with a clear log line and the previous one stays; no e-mail lost or sent twice."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer, email_job, members


def email_slots(observer: Observer) -> Any:
    health = observer.on("/gateway/test/health")
    return health[-1].json()["queues"]["email"]["slots"] if health else None


async def test_reload_valid_then_invalid_during_a_job(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer, tmp_path: Path
) -> None:
    smtp.script.delay = 0.03  # long enough that both reloads land while the job runs
    proc = gateway()
    config = tmp_path / "gateway.toml"
    original = config.read_text()
    recipients = members(160)
    await observer.publish_job(email_job("reload-1", recipients))
    await smtp.await_for(lambda box: len(box) >= 20)

    config.write_text(original.replace("concurrency = 4", "concurrency = 2\nrate = 500.0"))
    offset = len(proc.log())
    proc.send_signal(signal.SIGHUP)
    proc.wait_log("configuration reloaded", after=offset)
    # Twice as many attempts as connections: 2 connections, 4 attempts at a time.
    await observer.wait(lambda: email_slots(observer) == 4)

    config.write_text(original.replace("concurrency = 4", "concurrency = 0"))
    offset = len(proc.log())
    proc.send_signal(signal.SIGHUP)
    end = proc.wait_log("reload refused, configuration unchanged:", after=offset)
    line = proc.log()[end:].splitlines()[0]
    assert f"{config}: email.concurrency:" in line
    assert len(smtp.mailbox) < len(recipients), "both reloads must happen while the job runs"

    status = await observer.wait_job("reload-1", "done", timeout=120)
    assert status["totals"] == {"delivered": 160}
    counts = Counter(m.rcpts[0] for m in smtp.mailbox)
    assert counts == Counter({r["email"]: 1 for r in recipients})
    assert email_slots(observer) == 4, "the refused file must not have replaced the valid one"
    assert proc.proc is not None and proc.proc.poll() is None
