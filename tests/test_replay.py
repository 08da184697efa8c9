"""What proves a job or a signature was seen outlives purge and restart for the replay
window: a signed job replayed after `plp-gateway purge` and a restart does not run again."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.signing import sign
from tests.conftest import GatewayFactory
from tests.fixtures import ROOT, Observer, SmtpServer, email_job, members

KEY = b"dispatch-1-key-0123456789abcdef0123456789"
SECURITY = f"""
[security]
require_signature = true
replay_window = 60
[security.keys]
dispatch-1 = "{KEY.decode()}"
"""


async def purge_now(config: Path) -> str:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "purge", "-c", str(config), "--older-than-days", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout


async def test_a_signed_job_replayed_after_purge_and_restart_does_not_run_again(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    job = email_job("once", members(2, domain="once.example.be"))
    signed = sign(job, "dispatch-1", KEY, datetime.now(UTC))
    proc = gateway(SECURITY)
    await observer.publish_job(signed)
    await observer.wait_job("once", "done")
    assert proc.terminate() == 0
    assert "purged 1 finished jobs" in await purge_now(proc.config)

    proc = gateway(SECURITY)
    offset = len(proc.log())
    await observer.publish_job(signed)  # byte for byte, within the window
    # The same job signed again (new nonce): the purged id is still known, same content.
    await observer.publish_job(sign(job, "dispatch-1", KEY, datetime.now(UTC)))
    # Other content under the purged id.
    other = email_job("once", members(1, domain="other.example.be"))
    await observer.publish_job(sign(other, "dispatch-1", KEY, datetime.now(UTC)))
    await observer.publish_job(
        sign(email_job("after", members(1)), "dispatch-1", KEY, datetime.now(UTC))
    )
    await observer.wait_job("after", "done")

    rejected = [(r["job_id"], e["code"]) for r in observer.rejections() for e in r["errors"]]
    assert rejected == [("once", "replayed"), ("once", "duplicate_id")]
    proc.wait_log("job once received again: already known, not run twice", after=offset)
    assert sorted(m.rcpts[0] for m in smtp.mailbox) == [
        "member0@example.be",
        "member0@once.example.be",
        "member1@once.example.be",
    ]
