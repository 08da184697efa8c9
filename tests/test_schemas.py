"""The JSON Schemas integrators get: docs/schemas/ is what `plp-gateway schema NAME` prints,
each is a valid draft 2020-12 schema, and every payload seen on `plp/#` in real runs (e-mail,
SMS and voice against the simulators, signed and unsigned jobs and cancels, an SMS reply,
rejections, a clean stop and a kill) validates against the schema of its topic."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway import cli, schemas
from gateway.signing import sign, sign_cancel
from tests.conftest import GatewayFactory
from tests.fixtures import (
    ROOT,
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
from tests.voice_fixtures import AsteriskProcess, member, voice_job

DOCS = ROOT / "docs" / "schemas"
KEY = b"dispatch-1-key-0123456789abcdef0123456789"
SECURITY = (
    "[security]\nrequire_signature = false\nreplay_window = 60\n"
    f'[security.keys]\ndispatch-1 = "{KEY.decode()}"\n'
)
# Short enough for a test; a member who does not answer waits 30 s: the job stays running.
RETRY = "no_answer = { delay = 30, max_attempts = 2 }"
# Payloads with no JSON body that the API documents: an empty cancel, a cleared status.
EMPTY_ALLOWED = {"cancel", "job-status"}


def validators() -> dict[str, Draft202012Validator]:
    return {name: Draft202012Validator(schemas.schema(name)) for name in schemas.NAMES}


def check(seen: list[Seen], refused_on_purpose: set[bytes]) -> dict[str, list[Any]]:
    """Validate every message against its topic's schema; the payloads by schema name."""
    checkers = validators()
    by_name: dict[str, list[Any]] = {}
    problems = []
    for msg in seen:
        name = schemas.for_topic(msg.topic)
        assert name is not None, f"no schema for topic {msg.topic}"
        if (msg.payload in refused_on_purpose and name == "job") or not msg.payload:
            assert msg.payload or name in EMPTY_ALLOWED, f"empty payload on {msg.topic}"
            continue
        body = msg.payload.decode() if name == "availability" else json.loads(msg.payload)
        by_name.setdefault(name, []).append(body)
        for error in checkers[name].iter_errors(body):
            problems.append(f"{msg.topic}: {error.json_path}: {error.message}\n  {body}")
    assert not problems, "\n".join(problems)
    return by_name


def health_states(observer: Observer) -> set[str]:
    return {s.json()["state"] for s in observer.on("/gateway/test/health") if s.payload}


# -- the files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", schemas.NAMES)
def test_docs_schema_is_what_the_cli_prints(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema", name]) == 0
    printed = capsys.readouterr().out
    assert (DOCS / f"{name}.json").read_text(encoding="utf-8") == printed, (
        f"docs/schemas/{name}.json is stale: `plp-gateway schema {name} > docs/schemas/{name}.json`"
    )
    Draft202012Validator.check_schema(json.loads(printed))


def test_every_schema_file_is_listed_and_the_job_is_the_default() -> None:
    assert sorted(p.stem for p in DOCS.glob("*.json")) == sorted(schemas.NAMES)
    default = subprocess.run(
        [sys.executable, "-m", "gateway", "schema"],
        capture_output=True, cwd=ROOT, timeout=60, check=True, text=True,
    )  # fmt: skip
    assert default.stdout == (DOCS / "job.json").read_text(encoding="utf-8")
    listed = subprocess.run(
        [sys.executable, "-m", "gateway", "schema", "--list"],
        capture_output=True, cwd=ROOT, timeout=60, check=True, text=True,
    )  # fmt: skip
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(schemas.NAMES)


def test_each_schema_says_which_name_the_job_id_has() -> None:
    for name in schemas.NAMES:
        if name != "availability":
            assert schemas.schema(name)["description"].count("`job_id`") >= 1, name


def test_a_topic_outside_the_api_has_no_schema() -> None:
    assert schemas.for_topic("plp/jobs/a-1/status") == "job-status"
    assert schemas.for_topic("plp/jobs/a-1/deliveries/batch") == "delivery-batch"
    assert schemas.for_topic("plp/jobs/rejected") == "rejected"
    assert schemas.for_topic("plp/gateway/gw-1/availability") == "availability"
    assert schemas.for_topic("plp/jobs/a-1/other") is None
    assert schemas.for_topic("plp/jobs/a/b/status") is None
    assert schemas.for_topic("other/jobs") is None


def test_documented_health_states_a_run_does_not_reach() -> None:
    """`conflict` and `failed` need a second gateway or a crash: their documented shapes."""
    base = {
        "node": "gw-2", "version": "0.1.0", "boot_id": "b" * 32,
        "started_at": "2026-11-23T14:00:00.000Z", "uptime_s": 1.5, "links": {},
        "queues": {}, "counters": {}, "time": "2026-11-23T14:00:01.500Z",
    }  # fmt: skip
    health = Draft202012Validator(schemas.schema("health"))
    health.validate({**base, "state": "conflict", "conflict": {"node": "gw-1", "boot_id": "a"}})
    health.validate({**base, "state": "failed", "failure": {"task": "purge", "error": "x"}})
    assert not health.is_valid({**base, "state": "sleeping"})
    assert not health.is_valid({**base, "state": "ready", "surprise": 1})


# -- real runs ---------------------------------------------------------------------------


async def test_every_payload_of_a_run_with_every_channel_validates(
    gateway: GatewayFactory,
    observer: Observer,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    proc = gateway(smsc.config() + asterisk.config(tmp_path / "sounds", retry=RETRY) + SECURITY)
    now = datetime.now(UTC)
    refused: set[bytes] = set()

    async def publish_bad(topic: str, payload: bytes) -> None:
        refused.add(payload)
        await observer.publish(topic, payload)

    # A signed job on every channel: one member presses 1, one answers the SMS.
    caller = {**member(1, 1), "email": "m1@example.be"}
    replier = {"ref": "m-2", "phone": "+32470555552", "lang": "nl", "channels": ["sms"]}
    job = email_job("schemas-a", [caller, replier], channels=["email", "sms", "voice"])
    job["voice"] = {"ack": True}
    signed = sign(job, "dispatch-1", KEY, now)
    await observer.publish_job(signed)
    await smsc.wait(lambda s: s["counters"].get("accepted", 0) >= 2)
    await smsc.ctl("mo", source=replier["phone"], text="OK")
    await smsc.ctl("mo", source="+32470999999", text="wrong number")
    await observer.wait_job("schemas-a", "done", timeout=60)

    # Jobs that wait for a call back, cancelled signed, with a reason, and empty.
    def retrying(job_id: str) -> bool:
        return any(e["state"] == "retrying" for e in observer.events(job_id))

    for job_id in ("schemas-b", "schemas-c", "schemas-d"):
        await observer.publish_job(voice_job(job_id, [member(2, 3)], priority="cold"))
        await observer.wait(functools.partial(retrying, job_id))
    await observer.publish(
        "plp/jobs/schemas-b/cancel",
        json.dumps(sign_cancel("schemas-b", "dispatch-1", KEY, now, "fausse alerte")),
    )
    await observer.publish("plp/jobs/schemas-c/cancel", json.dumps({"reason": "exercice"}))
    await observer.publish("plp/jobs/schemas-d/cancel", b"")
    for job_id in ("schemas-b", "schemas-c", "schemas-d"):
        await observer.wait_job(job_id, "cancelled")

    # Refusals: a cancel for no job, a bad job, not JSON, a forged signature, a late replay.
    await observer.publish("plp/jobs/schemas-nope/cancel", b"")
    await publish_bad("plp/jobs", json.dumps({**sms_job("schemas-bad", [replier])}).replace(
        '"hot"', '"warm"').encode())  # fmt: skip
    await publish_bad("plp/jobs", b"not json")
    forged = sign(email_job("schemas-forged", [caller]), "dispatch-1", b"k" * 32, now)
    await observer.publish_job(forged)
    await observer.publish_job(signed)
    await observer.wait(lambda: len(observer.rejections()) >= 5)
    await observer.wait_job("schemas-bad", "rejected")

    assert proc.terminate() == 0
    await observer.wait(
        lambda: any(s.payload == b"offline" for s in observer.on("/gateway/test/availability"))
    )
    await observer.wait(lambda: health_states(observer) >= {"stopping", "stopped"})

    by_name = check(observer.seen, refused)
    assert set(by_name) == set(schemas.NAMES) - {"delivery-batch"}, sorted(by_name)
    assert {e["channel"] for e in by_name["delivery-event"]} == {"email", "sms", "voice"}
    assert {h["state"] for h in by_name["health"]} >= {"ready", "stopping", "stopped"}
    assert {i["job_id"] for i in by_name["inbound-sms"]} == {"schemas-a", None}
    assert any("sig" in j for j in by_name["job"])
    assert {s["state"] for s in by_name["job-status"]} >= {"done", "cancelled", "rejected"}
    codes = {e["code"] for r in by_name["rejected"] for e in r["errors"]}
    assert codes >= {"unknown_job", "invalid_value", "invalid_json", "bad_signature", "replayed"}


async def test_every_payload_of_a_batched_run_and_a_killed_gateway_validates(
    broker: Mosquitto, smtp: SmtpServer, observer: Observer, tmp_path: Path
) -> None:
    config = gateway_config(tmp_path, broker, smtp)
    text = config.read_text().replace("[status]\n", '[status]\ndelivery_events = "batch"\n')
    config.write_text(text)
    proc = GatewayProcess(config, tmp_path)
    proc.start()
    try:
        proc.wait_log("connected to MQTT broker")
        await observer.publish_job(email_job("schemas-batch", members(3)))
        await observer.wait_job("schemas-batch", "done")
        await observer.wait(lambda: observer.on("/jobs/schemas-batch/deliveries/batch"))
        proc.kill()  # no goodbye: the broker publishes both last wills
        await observer.wait(
            lambda: any(
                s.payload and s.json()["state"] == "offline"
                for s in observer.on("/gateway/test/health")
            )
        )
    finally:
        proc.stop()

    by_name = check(observer.seen, set())
    events = [e for b in by_name["delivery-batch"] for e in b["events"]]
    assert {e["state"] for e in events} >= {"sending", "delivered"}
    assert "delivery-event" not in by_name
    assert by_name["health"][-1]["state"] == "offline"


def test_every_payload_of_the_demo_validates(tmp_path: Path) -> None:
    """`plp-gateway demo` as a user runs it (e-mail, SMS and voice to 20 members, a reply, a
    clean stop): every message it put on the broker validates against its topic's schema."""
    workdir = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", str(workdir)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = (workdir / "mqtt.jsonl").read_text(encoding="utf-8").splitlines()
    seen = [Seen(m["topic"], m["payload"].encode(), m["retain"]) for m in map(json.loads, lines)]
    by_name = check(seen, set())
    assert {"job", "job-status", "delivery-event", "health", "availability", "inbound-sms"} <= set(
        by_name
    ), sorted(by_name)
    assert len(by_name["delivery-event"]) >= 60  # 20 members x 3 channels, each several changes
