"""What proves a job or a signature was seen outlives purge and restart for the replay
window: a signed job replayed after `plp-gateway purge` and a restart does not run again."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import JobsConfig
from gateway.domain import DeliveryState, JobState
from gateway.jobs import content_hash, parse_job
from gateway.rows import AddResult
from gateway.signing import SeenNonce, sign
from gateway.store import TOMBSTONE_SECONDS, SqlStore
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


def test_purge_keeps_unexpired_nonces_and_purged_ids_for_the_window(
    any_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = json.dumps(email_job("gone", members(2))).encode()
    job, _ = parse_job(payload, JobsConfig(), frozenset({"email"}))
    other = json.dumps(email_job("gone", members(3))).encode()
    now = datetime.now(UTC)
    fresh = SeenNonce("dispatch-1", "fresh-nonce-0123456789", now + timedelta(seconds=60))
    old = SeenNonce("dispatch-1", "old-nonce-000123456789", now - timedelta(seconds=1))
    store = any_store
    try:
        store.remember_nonces([fresh, old])
        store.add_job(job, content_hash(payload), frozenset({"email"}))
        store.close_job("gone", JobState.CANCELLED, DeliveryState.CANCELLED, "drill over")
        assert store.purge(float("inf")) == 1
        assert [(n.kid, n.nonce) for n in store.seen_nonces()] == [("dispatch-1", fresh.nonce)]
        assert store.job_row("gone") is None
        emails = frozenset({"email"})
        assert store.add_job(job, content_hash(payload), emails)[0] is AddResult.DUPLICATE
        assert store.add_job(job, content_hash(other), emails)[0] is AddResult.CONFLICT

        # Past the longest replay window the purged id is forgotten: the id is free again.
        later = time.time() + TOMBSTONE_SECONDS + 1
        monkeypatch.setattr("gateway.store.time.time", lambda: later)
        store.purge(0)
        assert store.seen_nonces() == []
        assert store.add_job(job, content_hash(payload), emails)[0] is AddResult.NEW
    finally:
        store.close()
