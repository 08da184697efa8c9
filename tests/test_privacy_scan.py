"""No full phone number or e-mail address leaves the store: everything the daemon logged
(at DEBUG) and published on MQTT during jobs, its metrics, and a purged store are scanned."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt

from gateway.config import JobsConfig
from gateway.domain import DeliveryState, JobState
from gateway.jobs import content_hash, parse_job
from gateway.privacy import mask_phone, scrub
from gateway.simulator_process import free_port
from gateway.store import SqlStore, Store
from tests.conftest import GatewayFactory
from tests.fixtures import (
    GatewayProcess,
    Mosquitto,
    Observer,
    Seen,
    SmtpServer,
    email_job,
    gateway_config,
    members,
)
from tests.sms_fixtures import SmscProcess, sms_job
from tests.test_metrics import http_get
from tests.voice_fixtures import AsteriskProcess, voice_job
from tests.voice_fixtures import member as voice_member


def needles(recipients: list[dict[str, str]]) -> set[str]:
    """Each member's address and number, also as the digits someone might log."""
    out: set[str] = set()
    for r in recipients:
        out |= {r["email"], r["email"].split("@")[0] + "@", r["phone"], r["phone"][1:]}
        out.add("0" + r["phone"][3:])  # Belgian national form
    return out


@contextlib.asynccontextmanager
async def record_everything(broker: Mosquitto, seen: list[Seen]):  # type: ignore[no-untyped-def]
    async def run() -> None:
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.subscribe("#", qos=1)
            ready.set()
            async for m in client.messages:
                assert isinstance(m.payload, bytes)
                seen.append(Seen(str(m.topic), m.payload, m.retain))

    ready = asyncio.Event()
    task = asyncio.create_task(run())
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_logs_mqtt_and_metrics_hold_no_full_address(
    gateway: GatewayFactory,
    observer: Observer,
    smtp: SmtpServer,
    broker: Mosquitto,
    tmp_path: Path,
) -> None:
    recipients = members(6, domain="leden.example.be")
    refused, retried = recipients[1]["email"], recipients[2]["email"]
    # Mail servers like to quote the address back: that text must not escape either.
    smtp.script.replies = {refused: [f"550 5.1.1 <{refused}>: no such user"], retried: [
        f"451 4.3.0 <{retried}> try again later"
    ]}  # fmt: skip
    later = members(1, domain="later.example.be")  # still retrying when it is cancelled
    smtp.script.replies[later[0]["email"]] = ["451 4.3.0 busy"] * 4
    typo = {"ref": "m-typo", "email": "piet.peeters@@example.be", "phone": "+32471000999"}
    recipients.append({**typo, "lang": "nl"})
    bad = members(2, domain="weg.example.be")  # in a job refused as a whole
    port = free_port()
    proc = gateway(f"[metrics]\nenabled = true\nport = {port}\n")
    seen: list[Seen] = []
    async with record_everything(broker, seen):
        await observer.publish_job(email_job("privacy-1", recipients))
        await observer.publish_job(email_job("privacy-bad", bad, priority="urgent"))
        await observer.publish_job(email_job("privacy-2", later))
        await observer.wait(
            lambda: "retrying" in {e["state"] for e in observer.events("privacy-2")}
        )
        await observer.publish("plp/jobs/privacy-2/cancel", b'{"reason": "call +32470999888"}')
        await observer.wait_job("privacy-1", "done")
        await observer.wait_job("privacy-2", "cancelled")
        await observer.wait(observer.rejections)
        _, _, metrics = await http_get(port, "/metrics")
        await asyncio.to_thread(proc.terminate)
        await observer.wait(lambda: any(s.payload == b"offline" for s in seen))

    from_gateway = [s for s in seen if s.topic != "plp/jobs" and not s.topic.endswith("/cancel")]
    assert {s.topic for s in from_gateway} >= {
        "plp/jobs/privacy-1/status",
        "plp/jobs/privacy-1/deliveries",
        "plp/jobs/rejected",
        "plp/gateway/test/health",
        "plp/gateway/test/availability",
    }
    log = proc.log()
    assert "DEBUG" in log and "smtp_550" in log and "retrying" in log and "invalid_email" in log
    texts = {
        "log": log,
        "metrics": metrics.decode(),
        **{f"mqtt {s.topic} #{i}": s.payload.decode() for i, s in enumerate(from_gateway)},
    }
    leaks = [
        (where, needle)
        for needle in needles(recipients + bad + later) | {"+32470999888", "piet.peeters"}
        for where, text in texts.items()
        if needle in text
    ]
    assert not leaks, leaks
    info_and_up = [line for line in log.splitlines() if " DEBUG " not in line]
    texts_of_job = email_job("x", [])["message"].values()
    assert not [line for line in info_and_up for t in texts_of_job if t[:20] in line]
    # Masked forms are what appears instead.
    assert "m***@leden.example.be" in log
    assert re.search(r"\+32470\*{4}88", log), "the number in the cancel reason is masked"


def test_purge_leaves_no_address_in_the_database_files(tmp_path: Path) -> None:
    recipients = members(50, domain="purged.example.be")
    payload = json.dumps(email_job("gone-1", recipients)).encode()
    job, _ = parse_job(payload, JobsConfig(), frozenset({"email"}))
    store = Store(tmp_path / "gw.sqlite3")
    try:
        store.add_job(job, content_hash(payload), frozenset({"email"}))
        store.close_job("gone-1", JobState.CANCELLED, DeliveryState.CANCELLED, "drill over")
        assert store.purge(float("inf")) == 1
    finally:
        store.close()
    addresses = [r["email"] for r in recipients] + [r["phone"] for r in recipients]
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("gw."))
    assert not [a for a in addresses if a.encode() in raw]


async def test_sms_job_and_replies_leave_no_full_number(
    gateway: GatewayFactory, observer: Observer, broker: Mosquitto, smsc: SmscProcess
) -> None:
    recipients = members(5, domain="sms.example.be")
    await smsc.ctl("fault", undeliver=[recipients[0]["phone"]])
    await smsc.ctl("fault", reject={recipients[1]["phone"]: "ESME_RINVDSTADR"})
    proc = gateway(smsc.config())
    seen: list[Seen] = []
    async with record_everything(broker, seen):
        await observer.publish_job(sms_job("privacy-sms", recipients))
        await observer.wait_job("privacy-sms", "done")
        await smsc.ctl("mo", source=recipients[2]["phone"], text="OK bien reçu")
        await smsc.ctl("mo", source="+32475123987", text="qui est-ce ? +32475123987")
        await observer.wait(lambda: len(observer.on("/inbound/sms")) == 2)
        await asyncio.to_thread(proc.terminate)
        await observer.wait(lambda: any(s.payload == b"offline" for s in seen))
    from_gateway = [s for s in seen if s.topic != "plp/jobs"]
    log = proc.log()
    assert "sent via sim" in log and "sms reply from" in log
    texts = {"log": log, **{f"mqtt {s.topic} #{i}": s.payload.decode() for i, s in
                            enumerate(from_gateway)}}  # fmt: skip
    numbers = {r["phone"] for r in recipients} | {r["phone"][1:] for r in recipients}
    numbers |= {"+32475123987", "32475123987"}
    leaks = [(w, n) for n in numbers for w, t in texts.items() if n in t]
    assert not leaks, leaks
    # A reply is relayed to dispatch with its sender masked, and numbers in its text too.
    stranger = next(m.json() for m in observer.on("/inbound/sms") if m.json()["job_id"] is None)
    assert stranger["from"] == "+32475****87"
    assert stranger["text"] == "qui est-ce ? +32475****87"


# -- numbers in any format (issue 12, finding 12) -----------------------------------------

SPELLINGS = ("0470 12 34 12", "32470123412", "+32 470 12 34 12")  # one number, as people write it


def clear_forms(phone: str) -> set[str]:
    """The digits of an E.164 number in the forms a leak would take."""
    national = phone[3:]
    return {phone, phone[1:], "0" + national, national}


def test_scrub_masks_every_spelling_and_leaves_ids_dates_and_counters() -> None:
    for spelling in (*SPELLINGS, "0032470123412", "0470/12.34.12", "Local/32470123412@plp"):
        assert "+32470****12" in scrub(f"rappel: {spelling}, merci"), spelling
        assert "470123412" not in scrub(spelling)
    assert scrub("+33 6 12 34 56 78 et 33612345678") == "+33612****78 et +33612****78"
    assert scrub("an.peeters@example.be") == "a***@example.be"
    assert scrub(scrub("tel 0470 12 34 12")) == scrub("tel 0470 12 34 12")  # idempotent
    for kept in (
        "job zone5344-2026-000123 attempt=2",
        "on 2026-11-29 at 12:00:01.123 from 127.0.0.1:1883",
        "Uniqueid: 1732870000.123 ActionID: 17",
        "stored 1500 deliveries in 12.5 ms",
    ):
        assert scrub(kept) == kept
    assert mask_phone("0470 12 34 12") == mask_phone("32470123412") == "+32470****12"


async def test_numbers_in_any_format_leave_no_topic_nor_log_line_in_clear(
    gateway: GatewayFactory,
    broker: Mosquitto,
    observer: Observer,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    # One member unanswered (retried, then cancelled), the AMI traffic logged at DEBUG.
    callee = voice_member(0, 3, "fr")
    retry = "no_answer = { delay = 120, max_attempts = 3 }"
    proc = gateway(smsc.config() + asterisk.config(tmp_path / "sounds", retry=retry))
    texts = " / ".join(SPELLINGS)
    seen: list[Seen] = []
    async with record_everything(broker, seen):
        await observer.publish_job(voice_job("fmt-1", [callee]))
        await observer.wait(lambda: "retrying" in {e["state"] for e in observer.events("fmt-1")})
        reason = json.dumps({"reason": f"fausse alerte, rappeler {texts}"})
        await observer.publish("plp/jobs/fmt-1/cancel", reason)
        status = await observer.wait_job("fmt-1", "cancelled")
        await smsc.ctl("mo", source=callee["phone"], text=f"OK mon autre numero: {texts}")
        await smsc.ctl("mo", source="32470123412", text="qui est-ce ?")
        await observer.wait(lambda: len(observer.on("/inbound/sms")) == 2)
        await asyncio.to_thread(proc.terminate)
        await observer.wait(lambda: any(s.payload == b"offline" for s in seen))
    log = proc.log()
    assert "Newchannel" in log and "Exten=" in log, "AMI traffic (panoramisk) is logged at DEBUG"
    assert status["reason"].count("+32470****12") == 3, status["reason"]
    replies = [m.json() for m in observer.on("/inbound/sms")]
    assert replies[0]["text"].count("+32470****12") == 3, replies
    assert replies[1]["from"] == "+32470****12"
    from_gateway = [s for s in seen if s.topic != "plp/jobs" and not s.topic.endswith("/cancel")]
    where = {"log": log, **{f"{s.topic} #{i}": s.payload.decode() for i, s in
                            enumerate(from_gateway)}}  # fmt: skip
    needles = {*SPELLINGS, "470123412", "470 12 34 12"} | clear_forms(callee["phone"])
    leaks = [(w, n) for n in needles for w, text in where.items() if n in text]
    assert not leaks, leaks


# -- file modes, purge and retained statuses (issue 12, findings 13 and 14) ------------------


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Processes started inside get this umask (a shell's usual 0022, not systemd's 0077)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def start_gateway(tmp_path: Path, broker: Mosquitto, smtp: SmtpServer, extra: str,
                  store: str) -> GatewayProcess:  # fmt: skip
    """The gateway as a process under umask 0022, with `store` lines in its `[store]`."""
    config = gateway_config(tmp_path, broker, smtp, extra)
    config.write_text(config.read_text().replace("[store]\n", "[store]\n" + store, 1))
    proc = GatewayProcess(config, tmp_path)
    with umask(0o022):
        proc.start()
    proc.wait_log("connected to MQTT broker")
    return proc


async def retained_statuses(broker: Mosquitto) -> dict[str, bytes]:
    """What a fresh subscriber to every job status gets: the retained messages. The broker
    sends them before a message published after subscribing, so the marker ends the list."""
    found: dict[str, bytes] = {}
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe("plp/jobs/+/status", qos=1)
        await client.subscribe("privacy-test/marker", qos=1)
        await client.publish("privacy-test/marker", b"end", qos=1)
        async with asyncio.timeout(10):
            async for m in client.messages:
                if str(m.topic) == "privacy-test/marker":
                    return found
                assert isinstance(m.payload, bytes)
                found[str(m.topic)] = m.payload
    raise AssertionError("unreachable")


def cleared(observer: Observer, job_id: str) -> bool:
    """The gateway emptied the job's retained status (an empty retained message)."""
    return any(not s.payload for s in observer.on(f"/jobs/{job_id}/status"))


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


async def test_personal_files_are_private_and_cli_purge_leaves_no_audio_nor_status(
    broker: Mosquitto,
    observer: Observer,
    smtp: SmtpServer,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    sounds = tmp_path / "sounds"
    proc = start_gateway(tmp_path, broker, smtp, asterisk.config(sounds), "purge_interval = 0.2\n")
    try:
        await observer.publish_job(voice_job("drill-1", [voice_member(0, 1, "fr")]))
        await observer.wait_job("drill-1", "done")
        audio = modes(sounds)
        assert audio and set(audio.values()) == {0o640}, audio
        store = {k: v for k, v in modes(tmp_path).items() if k.startswith("gateway.sqlite3")}
        assert set(store) == {"gateway.sqlite3", "gateway.sqlite3-wal", "gateway.sqlite3-shm"}
        assert set(store.values()) == {0o600}, store

        # After the drill: purge by hand. The command removes the audio; the running
        # gateway clears the job's retained status (the command has no broker connection).
        with umask(0o022):
            out = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "gateway", "purge", "--config", str(proc.config),
                 "--older-than-days", "0"],
                capture_output=True, text=True, check=True, timeout=60,
            )  # fmt: skip
        assert "purged 1 finished jobs" in out.stdout, out
        assert not modes(sounds), "the purged job's audio is gone"
        await observer.wait(lambda: cleared(observer, "drill-1"))
        assert "plp/jobs/drill-1/status" not in await retained_statuses(broker)
    finally:
        proc.stop()


async def test_retained_statuses_of_purged_and_rejected_jobs_are_cleared(
    broker: Mosquitto,
    observer: Observer,
    smtp: SmtpServer,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    sounds = tmp_path / "sounds"
    retention = "retention_days = 0.00002\npurge_interval = 0.2\n"  # ~1.7 s after the end
    proc = start_gateway(tmp_path, broker, smtp, asterisk.config(sounds), retention)
    try:
        await observer.publish_job(voice_job("old-1", [voice_member(0, 1, "nl")]))
        await observer.publish_job(email_job("junk-1", []))  # rejected: no recipients
        await observer.wait_job("old-1", "done")
        # "rejected", retained (on a slow machine it may already be cleared when we look)
        await observer.wait(lambda: any(m.payload for m in observer.on("/jobs/junk-1/status")))
        assert modes(sounds), "audio made for the call"
        await observer.wait(lambda: cleared(observer, "old-1") and cleared(observer, "junk-1"))
        assert not modes(sounds), "the purged job's audio went with it"
        retained = await retained_statuses(broker)
        assert not {"plp/jobs/old-1/status", "plp/jobs/junk-1/status"} & set(retained), retained
    finally:
        proc.stop()


def test_retained_clear_queue_spares_a_rejected_id_accepted_later(any_store: SqlStore) -> None:
    store = any_store
    try:
        store.note_rejected(["fixed-1", "junk-2"], clear_after=100.0)
        assert store.due_retained_clears(now=50.0) == []
        payload = json.dumps(email_job("fixed-1", members(1))).encode()  # corrected, accepted
        job, _ = parse_job(payload, JobsConfig(), frozenset({"email"}))
        store.add_job(job, content_hash(payload), frozenset({"email"}))
        assert store.due_retained_clears(now=200.0) == ["junk-2"]
        store.retained_cleared(["junk-2"])
        store.close_job("fixed-1", JobState.CANCELLED, DeliveryState.CANCELLED, "drill over")
        assert store.purge(float("inf")) == 1
        assert store.due_retained_clears(now=0.0) == ["fixed-1"]  # purged: cleared at once
    finally:
        store.close()
