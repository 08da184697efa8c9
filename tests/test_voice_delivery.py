"""Voice through the daemon: MQTT job -> synthesized audio -> Originate at the AMI simulator
(a separate process, over TCP) -> outcomes, retries, SMS fallback, acknowledgements."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.conftest import GatewayFactory
from tests.fixtures import Observer
from tests.sms_fixtures import SmscProcess
from tests.voice_fixtures import AsteriskProcess, member, voice_job

# Delays (s) short enough for a test, long enough to tell the intervals apart.
RETRY = "\n".join(
    [
        "busy = { delay = 0.5, max_attempts = 3 }",
        "no_answer = { delay = 3.0, max_attempts = 2 }",
        "congestion = { delay = 0.3, max_attempts = 2 }",
        "unreachable = { delay = 0.3, max_attempts = 2 }",
        "hung_up_early = { delay = 0.4, max_attempts = 2 }",
        "not_acknowledged = { delay = 0.6, max_attempts = 2 }",
        "failed = { delay = 0.3, max_attempts = 2 }",
    ]
)


def final_states(observer: Observer, job_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The last event per (member ref, channel)."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for e in observer.events(job_id):
        last[(e["ref"], e["channel"])] = e
    return last


def calls_by_number(record: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in sorted(record, key=lambda e: float(e["start"])):
        out[str(entry["number"])].append(entry)
    return out


async def test_every_outcome_ends_right_with_retries_fallback_and_acknowledgements(
    gateway: GatewayFactory,
    observer: Observer,
    smsc: SmscProcess,
    asterisk: AsteriskProcess,
    tmp_path: Path,
) -> None:
    gateway(smsc.config() + asterisk.config(tmp_path / "sounds", retry=RETRY))
    cases = {  # last digit -> (final voice state, reason/detail, calls, SMS fallback)
        1: ("acknowledged", "acknowledged", 1, False),
        6: ("delivered", "answered, not acknowledged", 2, False),
        2: ("failed", "busy", 3, True),
        3: ("failed", "no_answer", 2, True),
        4: ("failed", "congestion", 2, True),
        5: ("failed", "hung_up_early", 2, True),
        7: ("failed", "unreachable", 2, True),
        8: ("failed", "invalid_number", 1, True),
    }
    langs = ("fr", "nl", "de", "en")
    recipients = [member(d, d, langs[d % 4]) for d in cases]
    # Acknowledges by SMS reply after the first (unanswered) call: never called again.
    replier = member(20, 3, "nl", channels=["voice", "sms"])
    recipients.append(replier)
    job = voice_job("v-all", recipients, fallback={"voice": "sms"})
    await observer.publish_job(job)

    def voice_event(ref: str, state: str) -> bool:
        return any(
            e["ref"] == ref and e["channel"] == "voice" and e["state"] == state
            for e in observer.events("v-all")
        )

    await observer.wait(lambda: voice_event(replier["ref"], "retrying"), timeout=30)
    await smsc.wait(lambda s: s["counters"].get("accepted", 0) >= 1)
    await smsc.ctl("mo", source=replier["phone"], text="OK")
    status = await observer.wait_job("v-all", "done", timeout=60)

    final = final_states(observer, "v-all")
    record = await asterisk.record()
    calls = calls_by_number(record)
    sms_counts = await smsc.counts()
    for r in recipients[:-1]:
        digit = int(r["phone"][-1])
        state, why, n_calls, fallback = cases[digit]
        voice = final[(r["ref"], "voice")]
        assert voice["state"] == state, (digit, voice)
        assert why in (voice.get("reason"), voice.get("detail")), (digit, voice)
        assert len(calls[r["phone"][1:]]) == n_calls, (digit, calls[r["phone"][1:]])
        assert voice["attempt"] == n_calls, (digit, voice)
        if fallback:
            assert final[(r["ref"], "sms")]["state"] == "delivered", digit
            assert sms_counts.get(r["phone"][1:]) == 1, digit
        else:
            assert (r["ref"], "sms") not in final, digit
            assert r["phone"][1:] not in sms_counts, digit
    # The member who acknowledged by SMS was called once, and not again after the reply.
    assert len(calls[replier["phone"][1:]]) == 1
    assert final[(replier["ref"], "voice")]["state"] in ("cancelled", "acknowledged")
    assert "acknowledged" in {final[(replier["ref"], ch)]["state"] for ch in ("voice", "sms")}

    # Intervals: the next call follows the outcome after the rule's delay (never earlier).
    delays = {2: 0.5, 3: 3.0, 4: 0.3, 5: 0.4, 6: 0.6, 7: 0.3}
    for digit, delay in delays.items():
        entries = calls[recipients[list(cases).index(digit)]["phone"][1:]]
        for before, after in itertools.pairwise(entries):
            gap = float(after["start"]) - float(before["end"])
            assert delay - 0.05 <= gap <= delay + 3.0, (digit, gap)
    assert status["totals"]["failed"] == 6
    # Privacy: no full number in what the gateway publishes.
    for seen in observer.seen:
        if seen.topic == "plp/jobs":
            continue
        for r in recipients:
            assert r["phone"] not in seen.payload.decode(errors="replace")
    health = observer.on("/gateway/test/health")[-1].json()
    voice_health = health["links"]["voice"]
    assert voice_health["state"] == "up"
    assert voice_health["tts"]["syntheses"] == 4  # fr, nl, de, en
    assert json.dumps(voice_health).count("+32") == 0
