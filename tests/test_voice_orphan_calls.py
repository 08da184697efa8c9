"""Calls a killed gateway left up in Asterisk: the new process follows them from its first
reconcile on, so the attempt that adopts one later starts from everything the call did in
between (answered, played, acknowledged, ended). Replayed on the real Asterisk transcripts,
through the call tracker and through `VoiceChannel.send` (with a scripted AMI session)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.channel import Report
from gateway.domain import DeliveryState
from gateway.errors import ChannelError, TemporaryError
from tests.test_voice_transcripts import EXPECTED
from tests.voice_fixtures import (
    FakeAudio,
    attempt,
    load_transcript,
    number,
    wait_for,
    with_originate_response,
)
from voice.ami import AmiActionError
from voice.call_channel import VoiceChannel
from voice.calls import CallOutcome, CallTracker
from voice.config import VoiceConfig

_NOT_YET_ANSWERED = {"Ring", "Ringing", "Down"}


def _stream(case: str) -> list[dict[str, Any]]:
    """The transcript's events in wire order, OriginateResponse included (every AMI session
    sees it: Asterisk sends it as an event to all of them, not only to the one that asked)."""
    action_response, events = load_transcript(f"{case}.jsonl")
    return with_originate_response(action_response[1], events)


def _first_reconcile_at(stream: list[dict[str, Any]]) -> int:
    """Where the restarted gateway's first reconcile falls: the call's channels exist and ring,
    nothing has been answered, refused or hung up yet."""
    return next(
        i
        for i, e in enumerate(stream)
        if e["Event"] in ("OriginateResponse", "Hangup")
        or (e["Event"] == "Newstate" and e["ChannelStateDesc"] not in _NOT_YET_ANSWERED)
    )


def _status(stream: list[dict[str, Any]], at: int, action_id: str, delivery: str) -> list[Any]:
    """The `Status` reply at `at`: each live channel with its state and the gateway's variables
    (what `Status` with `Variables: PLP_CALL,DELIVERY_ID` lists)."""
    channels: dict[str, dict[str, str]] = {}
    for e in stream[:at]:
        if e["Event"] in ("Newchannel", "Newstate"):
            channels[e["Channel"]] = {
                "Channel": e["Channel"],
                "Uniqueid": e["Uniqueid"],
                "ChannelStateDesc": e["ChannelStateDesc"],
                "Variables": f"PLP_CALL={action_id},DELIVERY_ID={delivery}",
            }
    assert channels, "the transcript's channels, as a Status after the restart lists them"
    return list(channels.values())


def _answered_at(stream: list[dict[str, Any]]) -> int:
    """Just after the answer (OriginateResponse, both halves Up): before the dialplan's own
    events (Playback, PLPPlayed ...)."""
    response = next(i for i, e in enumerate(stream) if e["Event"] == "OriginateResponse")
    half = stream[response]["Channel"]
    return 1 + next(
        i
        for i, e in enumerate(stream)
        if i > response and e["Event"] == "Newstate" and e["Channel"] == half
    )


# -- the tracker ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_a_call_that_ends_between_the_first_reconcile_and_its_adoption_keeps_its_outcome(
    case: str,
) -> None:
    stream = _stream(case)
    at = _first_reconcile_at(stream)
    aid, delivery = f"job42-{case}", f"d-{case}"
    tracker = CallTracker()
    assert tracker.reconcile(_status(stream, at, aid, delivery)) == []  # nothing of ours
    for event in stream[at:]:  # the whole call, before any attempt of this process asks
        tracker.feed(event)
    assert tracker.ignored == 0  # every event was the watched call's
    call = tracker.adopt(aid, delivery)
    assert call.result is not None
    assert call.result.outcome is EXPECTED[case]
    assert call.result.action_id == aid


@pytest.mark.parametrize(
    ("case", "outcome"),
    [
        ("hangup_early", CallOutcome.HUNG_UP_EARLY),
        ("answer_silent", CallOutcome.ANSWERED),
        ("answer_ack", CallOutcome.ACKNOWLEDGED),
    ],
)
def test_a_call_answered_before_its_adoption_ends_at_its_hangup(
    case: str, outcome: CallOutcome
) -> None:
    """Ringing at the first reconcile, answered before the attempt adopts it, nothing of the
    dialplan seen yet: its hangup ends it. hangup_early has no dialplan event at all after the
    answer: only the answer seen before the adoption tells the hangup ends an answered call."""
    stream = _stream(case)
    at, answered = _first_reconcile_at(stream), _answered_at(stream)
    aid, delivery = f"job42-{case}", f"d-{case}"
    tracker = CallTracker()
    status = _status(stream, at, aid, delivery)
    tracker.reconcile(status)
    assert not [r for e in stream[at:answered] if (r := tracker.feed(e))]
    call = tracker.adopt(aid, delivery, status)
    assert call.answered and call.result is None
    results = [r for e in stream[answered:] if (r := tracker.feed(e))]
    assert [r.outcome for r in results] == [outcome]


@pytest.mark.parametrize("case", ["answer_ack", "no_answer"])
def test_an_orphan_no_attempt_adopts_is_dropped_some_time_after_it_ended(case: str) -> None:
    """Kept `orphan_keep` after its end for its attempt, then forgotten. no_answer is replayed
    without its OriginateResponse: a hangup without an outcome is an end all the same."""
    stream = [e for e in _stream(case) if case == "answer_ack" or e["Event"] != "OriginateResponse"]
    at = _first_reconcile_at(stream)
    now = [1000.0]
    tracker = CallTracker(clock=lambda: now[0], orphan_keep=600.0)
    tracker.reconcile(_status(stream, at, f"job42-{case}", f"d-{case}"))
    for event in stream[at:]:
        tracker.feed(event)
    now[0] += 599.0
    assert tracker.orphan(f"d-{case}") is not None  # still there for its attempt
    now[0] += 2.0
    assert tracker.orphan(f"d-{case}") is None
    assert tracker.active() == []  # nothing left behind


def test_an_orphan_gone_at_the_next_reconcile_without_an_end_is_dropped() -> None:
    """Its end fell in an AMI outage: the attempt asks the call's AstDB record instead."""
    stream = _stream("answer_ack")
    at = _first_reconcile_at(stream)
    tracker = CallTracker()
    tracker.reconcile(_status(stream, at, "job42-answer_ack", "d-answer_ack"))
    for event in stream[at : _answered_at(stream)]:
        tracker.feed(event)
    assert tracker.reconcile([]) == []  # the link came back: the call is gone
    assert tracker.orphan("d-answer_ack") is None and tracker.active() == []


# -- the channel -----------------------------------------------------------------------------

_AID, _DELIVERY = "plp-42-1", 42


def _as_placed(case: str) -> list[dict[str, Any]]:
    """The transcript as if this gateway's first attempt for delivery 42 had placed it."""
    names = {f"job42-{case}": _AID, f"d-{case}": str(_DELIVERY)}
    return [
        {k: names.get(v, v) if isinstance(v, str) else v for k, v in e.items()}
        for e in _stream(case)
    ]


class ScriptedAmi:
    """The AMI session of a restarted gateway, as far as the channel uses it: logged in, its
    `Status` lists the transcript's channels; an Originate would be a second call."""

    def __init__(self, status: list[Mapping[str, str]]) -> None:
        self.status = status
        self.records: dict[str, str] = {}  # AstDB plp/<PLP_CALL>
        self.originates: list[Mapping[str, Any]] = []
        self.db_gets: list[str] = []
        self.db_dels: list[str] = []
        self.is_up = True
        self.state = "up"
        self.connects = 1

    async def wait_up(self, within: float) -> bool:
        return True

    async def action(
        self, fields: Mapping[str, Any], *, within: float | None = None, as_list: bool | None = None
    ) -> Any:
        if fields["Action"] == "Status":
            return [
                {"Response": "Success"},
                *(
                    {
                        "Event": "Status",
                        "Channel": ch["Channel"],
                        "Uniqueid": ch["Uniqueid"],
                        "ChannelStateDesc": ch["ChannelStateDesc"],
                        "Variable": ch["Variables"].split(","),
                    }
                    for ch in self.status
                ),
                {"Event": "StatusComplete"},
            ]
        if fields["Action"] == "Originate":
            self.originates.append(fields)
            raise AmiActionError("Originate", "dialled a second time")
        return {"Response": "Success"}

    async def db_get(self, family: str, key: str, *, within: float | None = None) -> str | None:
        self.db_gets.append(key)
        # The transcripts' dialplan kept no AstDB record: by default only live events count.
        return self.records.get(key)

    async def db_del(self, family: str, key: str, *, within: float | None = None) -> bool:
        self.db_dels.append(key)
        return False


async def _restarted(
    tmp_path: Path, case: str, *, answered: bool = False
) -> tuple[VoiceChannel, ScriptedAmi, list[Any], int]:
    """A restarted gateway's channel after its first reconcile, which found the call ringing
    (or, `answered`, just answered: its dialplan's events to come)."""
    stream = _as_placed(case)
    at = _answered_at(stream) if answered else _first_reconcile_at(stream)
    cfg = VoiceConfig(
        enabled=True,
        channel="Local/{number}@plp-phones",
        ring_timeout=1.0,
        answer_margin=0.5,
        ack_timeout=1.0,
    )  # a short call budget: a call left to its timeout fails the test quickly
    reports: asyncio.Queue[Report] = asyncio.Queue()
    channel = VoiceChannel(cfg, reports, FakeAudio(tmp_path, seconds=0.5))
    ami = ScriptedAmi(_status(stream, at, _AID, str(_DELIVERY)))
    channel._ami = ami  # type: ignore[assignment]
    await channel._reconcile()
    return channel, ami, stream, at


def _retry(case: str) -> Any:
    digit = {"answer_ack": 1, "no_answer": 3, "hangup_early": 5, "answer_silent": 6}[case]
    return attempt(number(digit), delivery_id=_DELIVERY, number_=2, interrupted=True)


async def test_a_call_acknowledged_and_ended_before_its_adoption_is_not_made_again(
    tmp_path: Path,
) -> None:
    """(a) Answered, played, acknowledged and hung up, all between the first reconcile and
    the retried attempt: that attempt returns `acknowledged` at once, without a new call."""
    channel, ami, stream, at = await _restarted(tmp_path, "answer_ack")
    for event in stream[at:]:
        channel._on_event(event)
    out = await asyncio.wait_for(channel.send(_retry("answer_ack")), 5)
    assert out.state is DeliveryState.ACKNOWLEDGED
    assert out.provider_ids == (_AID,)
    assert ami.originates == [] and ami.db_gets == []  # neither dialled nor asked AstDB
    await wait_for(lambda: ami.db_dels == [_AID])  # the record (if any) is no longer needed
    assert channel._tracker.active() == []


@pytest.mark.parametrize(
    ("case", "ended"),
    [
        ("hangup_early", "hung_up_early"),  # TemporaryError: called again after its delay
        ("answer_silent", "answered, not acknowledged"),  # last allowed attempt: delivered
    ],
)
async def test_a_call_answered_before_its_adoption_ends_at_its_hangup_not_its_timeout(
    tmp_path: Path, case: str, ended: str
) -> None:
    """(b) Answered before the retried attempt adopts it, nothing of the dialplan seen by
    then; it hangs up after the adoption: that hangup ends it, with the call's outcome (not
    `call_timeout` followed by a second call)."""
    channel, ami, stream, at = await _restarted(tmp_path, case)
    answered = _answered_at(stream)
    for event in stream[at:answered]:
        channel._on_event(event)
    send = asyncio.create_task(channel.send(_retry(case)))
    await wait_for(lambda: _AID in channel._waiters)  # adopted, following the call
    for event in stream[answered:]:
        channel._on_event(event)
    try:
        out = await asyncio.wait_for(send, 5)
        got = out.detail
    except TemporaryError as exc:
        got = exc.reason
    assert got == ended
    assert ami.originates == []


async def test_an_orphan_that_hung_up_without_an_outcome_is_called_again(tmp_path: Path) -> None:
    """Its channels hung up unanswered and no OriginateResponse said why: it never connected
    (an answered call would have ended with its outcome), so AstDB is asked, then it dials."""
    channel, ami, stream, at = await _restarted(tmp_path, "no_answer")
    for event in stream[at:]:
        if event["Event"] != "OriginateResponse":
            channel._on_event(event)
    with pytest.raises(TemporaryError) as err:
        await asyncio.wait_for(channel.send(_retry("no_answer")), 5)
    assert err.value.reason == "originate_error"  # ScriptedAmi refuses the new call
    assert ami.db_gets == [_AID] and len(ami.originates) == 1
    assert channel._tracker.active() == []


@pytest.mark.parametrize(
    ("number_", "interrupted", "asked"),
    [
        (2, False, []),  # an ordinary retry: the peer that placed it stored its outcome
        (3, True, ["plp-42-2", _AID]),  # attempt 2 (not watched here) was the cut-off one
    ],
)
async def test_an_ended_orphan_settles_only_the_interrupted_retry_of_its_attempt(
    tmp_path: Path, number_: int, interrupted: bool, asked: list[str]
) -> None:
    """A reconcile also watches the live calls of a cluster peer on the same Asterisk. Such a
    call's outcome belongs to the peer, which follows it and stores it: the delivery's next
    retry on this node (after `not_acknowledged`, `busy`...) calls again."""
    channel, ami, stream, at = await _restarted(tmp_path, "answer_ack")
    for event in stream[at:]:
        channel._on_event(event)
    retry = attempt(number(1), delivery_id=_DELIVERY, number_=number_, interrupted=interrupted)
    with pytest.raises(ChannelError) as err:
        await asyncio.wait_for(channel.send(retry), 5)
    assert err.value.reason == "originate_error"  # dialled (ScriptedAmi refuses the call)
    assert ami.db_gets == asked and len(ami.originates) == 1
    assert channel._tracker.active() == []


def test_a_call_found_answered_whose_played_event_fell_in_the_downtime_is_acknowledged() -> None:
    """Killed during the message; its PLPPlayed came before the restart's first reconcile:
    the PLPAck seen afterwards proves it was played (the dialplan asks only then)."""
    stream = _stream("answer_ack")
    played = next(i for i, e in enumerate(stream) if e.get("UserEvent") == "PLPPlayed")
    tracker = CallTracker()
    tracker.reconcile(_status(stream, played + 1, "job42-answer_ack", "d-answer_ack"))
    for event in stream[played + 1 :]:
        tracker.feed(event)
    call = tracker.adopt("job42-answer_ack", "d-answer_ack")
    assert call.result is not None
    assert (call.result.outcome, call.result.guessed) == (CallOutcome.ACKNOWLEDGED, False)


@pytest.mark.parametrize(
    ("record", "ended"),
    [
        ("hung_up_early", "hung_up_early"),  # the record knows: hung up before the end
        (None, "answered, not acknowledged"),  # no record: a normal clearing, taken as played
    ],
)
async def test_the_guessed_outcome_of_a_call_found_answered_yields_to_its_astdb_record(
    tmp_path: Path, record: str | None, ended: str
) -> None:
    """Found already answered (its start unseen), it ends with cause 16 and no dialplan event
    seen: `answered` is a guess; the call's AstDB record, final at its hangup, decides."""
    channel, ami, stream, at = await _restarted(tmp_path, "hangup_early", answered=True)
    if record is not None:
        ami.records[_AID] = record
    for event in stream[at:]:
        channel._on_event(event)
    try:
        out = await asyncio.wait_for(channel.send(_retry("hangup_early")), 5)
        got = out.detail
    except TemporaryError as exc:
        got = exc.reason
    assert got == ended
    assert ami.db_gets == [_AID] and ami.originates == []
