"""Signed jobs end to end: only authentic, fresh, first-seen jobs are run. A refused one is
published on plp/jobs/rejected with path "sig" and its reason, gets no job status, sends
nothing, and is acknowledged (not redelivered)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.signing import sign
from tests.conftest import GatewayFactory
from tests.fixtures import ROOT, Observer, SmtpServer, email_job, members

KEY = b"dispatch-1-key-0123456789abcdef0123456789"
OTHER_KEY = b"dispatch-2-key-0123456789abcdef0123456789"
SECURITY = f"""
[security]
require_signature = {{require}}
replay_window = 60
sign_with = "dispatch-1"
[security.keys]
dispatch-1 = "{KEY.decode()}"
dispatch-2 = "{OTHER_KEY.decode()}"
"""


def now() -> datetime:
    return datetime.now(UTC)


def job(job_id: str, n: int = 2) -> dict[str, Any]:
    return email_job(job_id, members(n, domain=f"{job_id}.example.be"))


def rejections_by_job(observer: Observer) -> dict[str | None, list[dict[str, str]]]:
    return {r["job_id"]: r["errors"] for r in observer.rejections()}


async def cli_send(config: str, job_id: str) -> None:
    """`plp-gateway send` as an operator runs it: it signs with [security] sign_with."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "send", "-c", config, "--id", job_id,
         "--text", "fr=Exercice", "--to", f"a@{job_id}.example.be", "--no-follow"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


async def test_only_authentic_fresh_jobs_run_when_signatures_are_required(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    proc = gateway(SECURITY.format(require="true"))
    valid = sign(job("valid"), "dispatch-1", KEY, now())
    await observer.publish_job(valid)
    await observer.wait_job("valid", "done")
    await observer.publish_job(valid)  # replayed, byte for byte

    tampered = sign(job("tampered"), "dispatch-1", KEY, now())
    tampered["recipients"][0]["email"] = "intruder@evil.example"
    forged = {
        "bad-key": sign(job("bad-key"), "dispatch-1", OTHER_KEY, now()),
        "unknown-kid": sign(job("unknown-kid"), "dispatch-9", KEY, now()),
        "stale": sign(job("stale"), "dispatch-1", KEY, now() - timedelta(minutes=5)),
        "future": sign(job("future"), "dispatch-1", KEY, now() + timedelta(minutes=5)),
        "unsigned": job("unsigned"),
        "malformed": {**job("malformed"), "sig": {"v": 1, "alg": "none"}},
        "tampered": tampered,
    }
    for payload in forged.values():
        await observer.publish_job(payload)
    await cli_send(str(proc.config), "by-cli")  # after the forged ones: processed in order
    await observer.wait_job("by-cli", "done")

    expected = {
        "valid": "replayed",
        "bad-key": "bad_signature",
        "unknown-kid": "unknown_key",
        "stale": "stale",
        "future": "stale",
        "unsigned": "unsigned",
        "malformed": "malformed_signature",
        "tampered": "bad_signature",
    }
    rejected = await observer.wait(lambda: len(observer.rejections()) == len(expected) or None)
    assert rejected
    by_job = rejections_by_job(observer)
    assert {k: [(e["path"], e["code"]) for e in v] for k, v in by_job.items()} == {
        k: [("sig", reason)] for k, reason in expected.items()
    }
    for job_id in forged:
        assert observer.status(job_id) is None, f"{job_id} got a job status"
    # Only the valid job (once) and the CLI's job were sent.
    assert sorted(m.rcpts[0].split("@")[1] for m in smtp.mailbox) == [
        "by-cli.example.be",
        "valid.example.be",
        "valid.example.be",
    ]
    assert observer.status("valid")["totals"] == {"delivered": 2}  # type: ignore[index]
    assert "rejected payload on plp/jobs (job tampered): sig bad_signature" in proc.log()


async def test_signatures_optional_unsigned_runs_but_a_bad_signature_never(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    gateway(SECURITY.format(require="false"))
    bad = sign(job("bad"), "dispatch-1", OTHER_KEY, now())
    await observer.publish_job(bad)
    await observer.publish_job(job("plain"))
    await observer.publish_job(sign(job("signed"), "dispatch-2", OTHER_KEY, now()))
    await observer.wait_job("plain", "done")
    await observer.wait_job("signed", "done")
    assert rejections_by_job(observer) == {
        "bad": [
            {
                "path": "sig",
                "code": "bad_signature",
                "message": "signature by 'dispatch-1' does not match",
            }
        ]
    }
    assert observer.status("bad") is None
    assert len(smtp.mailbox) == 4
