"""Only authorised dispatch cancels a job: signed cancels bound to the job id when signatures
are required, never a bad signature, never a retained cancel. Each refused cancel is published
on plp/jobs/rejected with its code, and the job goes on."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.signing import sign, sign_cancel
from gateway.simulator_process import free_port
from tests.fixtures import ROOT, GatewayProcess, Mosquitto, Observer, email_job, gateway_config

KEY = b"dispatch-1-key-0123456789abcdef0123456789"
OTHER_KEY = b"dispatch-2-key-0123456789abcdef0123456789"


def security(require: bool) -> str:
    return (
        f"[security]\nrequire_signature = {str(require).lower()}\nreplay_window = 60\n"
        f'[security.keys]\ndispatch-1 = "{KEY.decode()}"\ndispatch-2 = "{OTHER_KEY.decode()}"\n'
    )


def stuck_email() -> str:
    """E-mail to a port nobody listens on, retried in a minute: jobs stay running."""
    return (
        f'[email]\nenabled = true\nhost = "127.0.0.1"\nport = {free_port()}\ntimeout = 5\n'
        "[email.retry]\nmax_attempts = 100\ninitial_delay = 60\nmax_delay = 60\n"
    )


@pytest.fixture
def start(tmp_path: Path, broker: Mosquitto) -> Iterator[Any]:
    """Start (or restart) the gateway with e-mail that never gets through."""
    procs: list[GatewayProcess] = []
    email = stuck_email()

    def run(require: bool) -> GatewayProcess:
        config = gateway_config(tmp_path, broker, None, email + security(require))
        proc = GatewayProcess(config, tmp_path)
        offset = len(proc.log())
        proc.start()
        procs.append(proc)
        proc.wait_log("connected to MQTT broker", after=offset)
        return proc

    yield run
    for p in procs:
        p.stop()


def job(job_id: str) -> dict[str, Any]:
    return email_job(job_id, [{"ref": "m-1", "email": f"a@{job_id}.example.be"}])


async def cancel(observer: Observer, job_id: str, payload: bytes | dict[str, Any]) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await observer.publish(f"plp/jobs/{job_id}/cancel", data)


def codes(observer: Observer, job_id: str) -> list[tuple[str, str]]:
    return [
        (e["path"], e["code"])
        for r in observer.rejections()
        if r["job_id"] == job_id
        for e in r["errors"]
    ]


async def test_cancel_must_be_signed_for_its_own_job_when_signatures_are_required(
    start: Any, observer: Observer, tmp_path: Path
) -> None:
    proc = start(require=True)
    now = datetime.now(UTC)
    await observer.publish_job(sign(job("guarded"), "dispatch-1", KEY, now))
    await observer.wait_job("guarded", "running")

    await cancel(observer, "guarded", b"")  # unsigned and empty
    await cancel(observer, "guarded", {"reason": "unsigned"})
    # Properly signed, but for another job: moved onto this job's topic.
    await cancel(observer, "guarded", sign_cancel("other", "dispatch-1", KEY, now))
    # The job id bound in, but the MAC made with another key.
    await cancel(observer, "guarded", sign_cancel("guarded", "dispatch-1", OTHER_KEY, now))
    # A signed job is not a cancel (no `cancel` member naming the job).
    await cancel(observer, "guarded", sign({"id": "guarded"}, "dispatch-1", KEY, now))

    # What an integrator runs: `plp-gateway sign --cancel`.
    (tmp_path / "key").write_text(KEY.decode() + "\n")
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "sign", "--kid", "dispatch-1",
         "--key-file", str(tmp_path / "key"), "--cancel", "guarded", "--reason", "fausse alerte"],
        capture_output=True, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    signed_cancel = result.stdout.strip()
    await cancel(observer, "guarded", signed_cancel)
    status = await observer.wait_job("guarded", "cancelled")
    # The first cancel applied is the signed one: none of the refused ones cancelled it.
    assert status["reason"] == "cancelled: fausse alerte"
    await cancel(observer, "guarded", signed_cancel)  # replayed byte for byte

    await observer.wait(lambda: len(codes(observer, "guarded")) == 6 or None)
    assert codes(observer, "guarded") == [
        ("sig", "unsigned"),
        ("sig", "unsigned"),
        ("$.cancel", "wrong_job"),
        ("sig", "bad_signature"),
        ("$.cancel", "wrong_job"),
        ("sig", "replayed"),
    ]
    assert "job guarded cancelled (signed)" in proc.log()


async def test_unsigned_cancels_still_work_when_not_required_but_a_bad_signature_never(
    start: Any, observer: Observer
) -> None:
    start(require=False)
    now = datetime.now(UTC)
    for job_id in ("plain", "forged"):
        await observer.publish_job(job(job_id))
        await observer.wait_job(job_id, "running")

    await cancel(observer, "plain", b"")
    await observer.wait_job("plain", "cancelled")
    await cancel(observer, "forged", sign_cancel("forged", "dispatch-1", OTHER_KEY, now))
    await cancel(observer, "forged", {"cancel": "plain", "reason": "names another job"})
    await cancel(observer, "forged", sign_cancel("forged", "dispatch-2", OTHER_KEY, now, "ok"))
    status = await observer.wait_job("forged", "cancelled")
    assert status["reason"] == "cancelled: ok"
    await observer.wait(lambda: len(codes(observer, "forged")) == 2 or None)
    assert codes(observer, "forged") == [("sig", "bad_signature"), ("$.cancel", "wrong_job")]
    assert codes(observer, "plain") == []


async def test_a_retained_cancel_never_cancels_a_job_published_after_it(
    start: Any, observer: Observer, broker: Mosquitto
) -> None:
    proc = start(require=False)
    async with aiomqtt.Client(broker.host, broker.port) as dispatch:
        # (Not empty: an empty retained message clears the topic's retained message.)
        payload = b'{"reason": "published too early"}'
        await dispatch.publish("plp/jobs/later/cancel", payload, qos=1, retain=True)
    # The gateway gets it live first: no such job yet.
    await observer.wait(lambda: codes(observer, "later") == [("$", "unknown_job")] or None)
    await observer.publish_job(job("later"))
    await observer.wait_job("later", "running")

    # Restarted, the gateway subscribes again and the broker hands it the retained cancel.
    proc.kill()
    start(require=False)

    def outcome() -> str | None:
        if codes(observer, "later")[1:]:
            return "refused"
        status = observer.status("later")
        return "cancelled" if status is not None and status["state"] == "cancelled" else None

    assert await observer.wait(outcome) == "refused"
    assert codes(observer, "later") == [("$", "unknown_job"), ("$", "retained_cancel")]
    assert observer.status("later")["state"] == "running"  # type: ignore[index]
