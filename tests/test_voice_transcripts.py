"""The reference transcripts of a real Asterisk 22: replayed through the call tracker, and
reproduced by the simulator (event names, order and key fields)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.voice_fixtures import load_transcript, with_originate_response
from voice.calls import CallOutcome, CallTracker
from voice.simulator import AsteriskSimulator, SimConfig
from voice.simulator_calls import DEFAULT_PLAYBACK_S

EXPECTED = {
    "answer_ack": CallOutcome.ACKNOWLEDGED,
    "answer_silent": CallOutcome.ANSWERED,
    "hangup_early": CallOutcome.HUNG_UP_EARLY,
    "busy": CallOutcome.BUSY,
    "no_answer": CallOutcome.NO_ANSWER,
    "congestion": CallOutcome.CONGESTION,
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_transcript_replays_to_its_outcome(case: str) -> None:
    action_response, events = load_transcript(f"{case}.jsonl")
    tracker = CallTracker()
    tracker.expect(f"job42-{case}", f"d-{case}")
    results = [
        r for e in with_originate_response(action_response[1], events) if (r := tracker.feed(e))
    ]
    assert [r.outcome for r in results] == [EXPECTED[case]]


def test_interleaved_calls_each_get_their_outcome_once() -> None:
    action_response, events = load_transcript("six-calls-interleaved.jsonl")
    tracker = CallTracker()
    for case in EXPECTED:
        tracker.expect(f"job42-{case}", f"d-{case}")
    stream = with_originate_response(action_response[1], events)
    results = [r for e in stream if (r := tracker.feed(e))]
    got = {r.action_id.removeprefix("job42-"): r.outcome for r in results}
    assert got == EXPECTED
    assert len(results) == 6  # both Local halves hang up; each call counted once


def test_events_of_unknown_calls_are_ignored() -> None:
    _, events = load_transcript("six-calls-interleaved.jsonl")
    tracker = CallTracker()
    tracker.expect("job42-busy", "d-busy")  # only one call is ours
    results = [r for e in events if (r := tracker.feed(e))]
    assert [r.outcome for r in results] == [CallOutcome.BUSY]
    assert tracker.ignored > 0


def test_playback_status_varset_alone_is_not_heard() -> None:
    # hangup_early: Asterisk sets PLAYBACKSTATUS=SUCCESS although the member hung up.
    _, events = load_transcript("hangup_early.jsonl")
    assert any(e.get("Variable") == "PLAYBACKSTATUS" and e["Value"] == "SUCCESS" for e in events)
    assert not any(e.get("UserEvent") == "PLPPlayed" for e in events)


# -- the simulator reproduces the transcripts ---------------------------------------------

_DIGIT = {
    "answer_ack": "1",
    "busy": "2",
    "no_answer": "3",
    "congestion": "4",
    "hangup_early": "5",
    "answer_silent": "6",
}
_NOISE = {"FullyBooted", "DeviceStateChange", "HangupRequest", "SoftHangupRequest"}


def _key(e: dict[str, Any]) -> tuple[str, ...]:
    channel = str(e.get("Channel") or e.get("DestChannel") or "")
    half = channel[-2:] if channel.endswith((";1", ";2")) else ""
    fields = (
        *("Application", "Variable", "ChannelStateDesc", "Cause", "DialStatus", "UserEvent"),
        *("PlaybackStatus", "Digit", "ReadStatus", "Reason", "Response"),
    )
    return (str(e["Event"]), half, *(f"{f}={e[f]}" for f in fields if f in e))


def _shipped_addition(e: dict[str, Any], key: tuple[str, ...]) -> bool:
    """What the shipped plp-alert adds to the recorded one: one GotoIf (ack wanted? played?)
    and the AstDB record of the result (Set PLP_RESULT, Set DB(...), the `h` extension)."""
    if key[:2] == ("Newexten", ";1") and (
        e.get("Extension") == "h" or key[2] in ("Application=GotoIf", "Application=Set")
    ):
        return True
    return key[:3] == ("VarSet", ";1", "Variable=PLP_RESULT")


def _projection(events: list[dict[str, Any]]) -> dict[str, list[tuple[str, ...]]]:
    """Significant events per channel half (";1", ";2", "" for bridge/dial events):
    within one channel Asterisk's order is fixed; across the two halves it depends on
    thread scheduling (the transcripts themselves differ there)."""
    out: dict[str, list[tuple[str, ...]]] = {}
    for e in events:
        if e["Event"] in _NOISE or e["Event"] == "OriginateResponse":
            continue
        key = _key(e)
        if _shipped_addition(e, key):
            continue
        out.setdefault(key[1], []).append(key)
    return out


_SPEED = 25.0


async def _record(case: str, alert: str) -> list[dict[str, Any]]:
    """Place the transcript's call on the simulator. Its events get `_t`: call seconds since
    the call's first event, read from the Timestamp header (`timestampevents`), which carries the
    call's scripted clock: a late wake-up of a busy machine does not move it."""
    sim = AsteriskSimulator(
        SimConfig(
            speed=_SPEED,
            check_files=False,
            playback_s=DEFAULT_PLAYBACK_S,
            timestamp_events=True,
        )
    )
    await sim.start()
    seen: list[dict[str, Any]] = []
    reader, writer = await asyncio.open_connection(sim.host, sim.port)
    try:
        await reader.readline()  # banner
        writer.write(b"Action: Login\r\nUsername: plp-gateway\r\nSecret: secret\r\n\r\n")
        variables = f"ALERT_FILE={alert}, DELIVERY_ID=d-{case}"
        writer.write(
            (
                "Action: Originate\r\nActionID: job42-x\r\nAsync: true\r\n"
                f"Channel: Local/3247000000{_DIGIT[case]}@plp-phones\r\nTimeout: 15000\r\n"
                'Context: plp-alert\r\nExten: s\r\nPriority: 1\r\nCallerID: "Police PLP" <101>\r\n'
                f"Variable: {variables}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        started: float | None = None
        current: dict[str, Any] = {}
        async with asyncio.timeout(10):
            while True:
                line = (await reader.readline()).decode().rstrip("\r\n")
                if line:
                    k, _, v = line.partition(": ")
                    current[k] = v
                    continue
                if "Timestamp" in current:  # FullyBooted, sent at login, has none
                    at = float(current["Timestamp"])
                    started = at if started is None else started
                    current["_t"] = at - started
                if "Event" in current:
                    seen.append(current)
                current = {}
                if sum(1 for e in seen if e["Event"] == "Hangup") == 2 and not sim.live_calls():
                    break
    finally:
        writer.close()
        await sim.stop()
    return seen


@pytest.mark.parametrize("case", sorted(_DIGIT))
async def test_simulator_reproduces_transcript(case: str) -> None:
    action_response, reference = load_transcript(f"{case}.jsonl")
    reference = with_originate_response(action_response[1], reference)
    alert = "/var/lib/asterisk/sounds/plp/alert-fr"
    produced = await _record(case, alert)
    ref_keys = _projection(reference)
    got_keys = _projection(produced)
    # Same significant events per channel, in the same order, with the same key fields.
    assert got_keys == ref_keys
    # The OriginateResponse says the same thing (its position depends on Asterisk's threads).
    ref_or = [_key(e) for e in reference if e["Event"] == "OriginateResponse"]
    got_or = [_key(e) for e in produced if e["Event"] == "OriginateResponse"]
    assert got_or == ref_or
    # And every event name of the reference appears (DeviceStateChange and friends too).
    assert {e["Event"] for e in produced} >= {e["Event"] for e in reference}
    # Same timing: the call ends when the real one did (answer ~1 s, no answer = Timeout),
    # on the call's own clock (how fast the machine runs the script is not the question).
    ref_end = max(e["_t"] for e in reference if e["Event"] == "Hangup")
    got_end = max(e["_t"] for e in produced if e["Event"] == "Hangup")
    assert abs(got_end - ref_end) <= max(1.5, 0.1 * ref_end), (got_end, ref_end)


def test_an_adopted_call_whose_answer_came_before_its_adoption_still_ends() -> None:
    """Killed while the call rang: the new process finds it ringing (Status), and its answer
    comes before the call is adopted (events of a call not yet ours are dropped). The
    dialplan's events after the answer (played, the digit) tell it was answered: its hangup
    ends it, acknowledged, instead of leaving it to the call timeout and a second call."""
    action_response, events = load_transcript("answer_ack.jsonl")
    stream = with_originate_response(action_response[1], events)
    answer = next(i for i, e in enumerate(stream) if e["Event"] == "OriginateResponse")
    ringing = [
        {**e, "ChannelStateDesc": "Ringing"} for e in stream[:answer] if e["Event"] == "Newchannel"
    ]
    assert ringing, "the transcript's channels, as a Status after the restart lists them"
    tracker = CallTracker()
    tracker.adopt("job42-answer_ack", "d-answer_ack", ringing)
    results = [r for e in stream[answer + 1 :] if (r := tracker.feed(e))]
    assert [r.outcome for r in results] == [CallOutcome.ACKNOWLEDGED]
