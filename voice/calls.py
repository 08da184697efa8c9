"""Correlation of Asterisk's global AMI event stream to the gateway's calls.

Pure logic, no sockets: feed every AMI event (in wire order) to `CallTracker.feed`; it
returns a `CallResult` when one of the calls it follows has ended.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .outcomes import (
    REASON_ANSWERED,
    CallOutcome,
    CallResult,
    classify_failure,
    recorded_result,
)

__all__ = [
    "Call",
    "CallOutcome",
    "CallResult",
    "CallTracker",
    "Origin",
    "classify_answered",
    "classify_failure",
    "recorded_result",
]

Event = Mapping[str, object]

# How long the outcome of a call an earlier process placed (an orphan) is kept for the attempt
# that adopts it, after the call ended. The scheduler retries an interrupted attempt at once
# after a restart; past this, the attempt reads the call's AstDB record instead (or dials
# again a call that never connected, as it would have anyway).
ORPHAN_KEEP_S = 600.0


class Origin(enum.Enum):
    """Who placed a call the tracker follows."""

    PLACED = "placed"  # this process (expect())
    ORPHAN = "orphan"  # an earlier process (killed); followed, no attempt of ours has it yet
    ADOPTED = "adopted"  # an earlier process's call that an attempt of this process took over


@dataclass
class Call:
    """What the tracker knows about one originated call."""

    action_id: str
    delivery: str
    ack_wanted: bool = True
    channels: set[str] = field(default_factory=set)
    uniqueids: set[str] = field(default_factory=set)
    primary_uniqueid: str | None = None  # the originated channel (the ";1" half of Local)
    primary_channel: str | None = None
    response: str | None = None  # OriginateResponse Response: Success / Failure
    reason: str | None = None
    answered: bool = False
    playback: str | None = None  # PLPPlayed PlaybackStatus
    digit: str | None = None
    read_status: str | None = None
    causes: list[str] = field(default_factory=list)
    origin: Origin = Origin.PLACED
    # Answered before this process followed it (found Up): the dialplan may have played the
    # message, unseen, before then.
    answer_unseen: bool = False
    result: CallResult | None = None  # how an orphan ended, kept for the attempt adopting it
    ended_at: float | None = None  # an orphan's result, or its channel's hangup (tracker's clock)

    @property
    def adopted(self) -> bool:
        """Placed by an earlier process (its first events were not seen by this one)."""
        return self.origin is not Origin.PLACED

    @property
    def hangup_channel(self) -> str | None:
        """The channel to hang up to end the whole call (the ";1" half when Local)."""
        if self.primary_channel:
            return self.primary_channel
        for name in sorted(self.channels):
            if not name.endswith(";2"):
                return name
        return None


def _s(event: Event, key: str) -> str:
    value = event.get(key)
    if isinstance(value, list):  # duplicated header: panoramisk gives a list
        return str(value[-1]) if value else ""
    return "" if value is None else str(value)


def _is_primary_name(channel: str) -> bool:
    return not channel.endswith(";2")


def classify_answered(call: Call) -> CallResult:
    """Outcome of a call that was answered and has now hung up.

    Only the dialplan's `PLPPlayed` (SUCCESS) means "heard": Asterisk also sets
    PLAYBACKSTATUS=SUCCESS when the member hangs up in the middle of the message.
    """
    cause = next((c for c in reversed(call.causes) if c and c != "0"), None)
    playback = call.playback
    if playback is None and call.read_status is not None:
        playback = "SUCCESS"  # its PLPPlayed went unseen: the dialplan asks only once played
    guessed = False
    if playback is None:
        # A call found already answered after a restart may have played before we saw it:
        # a normal clearing by our own dialplan is the best evidence we have.
        guessed = call.answer_unseen and cause == "16"
        outcome = CallOutcome.ANSWERED if guessed else CallOutcome.HUNG_UP_EARLY
    elif playback != "SUCCESS":
        outcome, cause = CallOutcome.FAILED, "playback_failed"
    elif call.digit == "1":
        outcome = CallOutcome.ACKNOWLEDGED
    else:
        outcome = CallOutcome.ANSWERED
    return CallResult(
        call.action_id,
        outcome,
        cause,
        answered=True,
        played=playback == "SUCCESS",
        digit=call.digit,
        guessed=guessed,
    )


class CallTracker:
    """Follows the calls the gateway placed through the global AMI event stream, and the
    calls an earlier (killed) process left up, from the first reconcile that finds them."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        orphan_keep: float = ORPHAN_KEEP_S,
    ) -> None:
        self._calls: dict[str, Call] = {}
        self._by_channel: dict[str, Call] = {}
        self._by_uniqueid: dict[str, Call] = {}
        self._by_delivery: dict[str, Call] = {}
        self._orphans: dict[str, Call] = {}  # delivery -> a call of an earlier process
        self._clock = clock
        self._orphan_keep = orphan_keep
        self.ignored = 0  # events that belonged to no call of ours

    def expect(self, action_id: str, delivery: str, *, ack_wanted: bool = True) -> Call:
        """Register a call before its Originate is sent (events may arrive at once)."""
        call = Call(action_id=action_id, delivery=delivery, ack_wanted=ack_wanted)
        self._calls[action_id] = call
        self._by_delivery[delivery] = call
        return call

    def get(self, action_id: str) -> Call | None:
        return self._calls.get(action_id)

    def find_delivery(self, delivery: str) -> Call | None:
        return self._by_delivery.get(delivery)

    def active(self) -> list[Call]:
        return list(self._calls.values())

    def orphans(self) -> list[Call]:
        """The calls of an earlier process that no attempt has adopted yet."""
        self._drop_stale_orphans()
        return list(self._orphans.values())

    def orphan(self, delivery: str) -> Call | None:
        """The call an earlier process placed for `delivery`, live or ended, not adopted."""
        self._drop_stale_orphans()
        return self._orphans.get(delivery)

    def watch(self, action_id: str, delivery: str, channels: Iterable[Mapping[str, str]]) -> Call:
        """Follow a call an earlier process placed (found by a reconcile): every event of it
        is applied from now on, so that the attempt adopting it starts from its state."""
        call = Call(action_id=action_id, delivery=delivery, origin=Origin.ORPHAN)
        self._calls[action_id] = call
        self._orphans[delivery] = call
        self._by_delivery.setdefault(delivery, call)
        self._take_channels(call, channels)
        return call

    def adopt(
        self, action_id: str, delivery: str, channels: Iterable[Mapping[str, str]] = ()
    ) -> Call:
        """An attempt of this process takes over a call an earlier process placed: the
        watched orphan with its state so far (`result` set if it has already ended), or,
        if it was not watched, a call followed from now on."""
        call = self._calls.get(action_id)
        if call is not None and call.origin is Origin.ORPHAN:
            if self._orphans.get(call.delivery) is call:
                del self._orphans[call.delivery]
        else:
            call = self.expect(action_id, delivery)
        call.origin = Origin.ADOPTED
        self._by_delivery[delivery] = call
        self._take_channels(call, channels)
        return call

    def _take_channels(self, call: Call, channels: Iterable[Mapping[str, str]]) -> None:
        """Link the channels a `Status` listed for a call found alive after a restart."""
        for ch in channels:
            name, uid = ch.get("Channel", ""), ch.get("Uniqueid", "")
            self._link(call, name, uid)
            if _is_primary_name(name):
                call.primary_channel = call.primary_channel or name
                call.primary_uniqueid = call.primary_uniqueid or uid
                if ch.get("ChannelStateDesc") == "Up" and not call.answered:
                    call.answered = call.answer_unseen = True

    def _drop_stale_orphans(self) -> None:
        """Orphans no attempt adopted within `orphan_keep` after they ended are forgotten
        (also one whose hangup came without a result: nothing would end it otherwise)."""
        horizon = self._clock() - self._orphan_keep
        for call in list(self._calls.values()):
            ended = call.ended_at
            if call.origin is Origin.ORPHAN and ended is not None and ended < horizon:
                self.forget(call.action_id)

    def forget(self, action_id: str) -> None:
        call = self._calls.pop(action_id, None)
        if call is None:
            return
        if self._orphans.get(call.delivery) is call:
            del self._orphans[call.delivery]
        for name in call.channels:
            if self._by_channel.get(name) is call:
                del self._by_channel[name]
        for uid in call.uniqueids:
            if self._by_uniqueid.get(uid) is call:
                del self._by_uniqueid[uid]
        if self._by_delivery.get(call.delivery) is call:
            del self._by_delivery[call.delivery]

    def _link(self, call: Call, channel: str, uniqueid: str) -> None:
        if channel:
            call.channels.add(channel)
            self._by_channel[channel] = call
        if uniqueid and uniqueid != "<unknown>":
            call.uniqueids.add(uniqueid)
            self._by_uniqueid[uniqueid] = call

    def _find(self, event: Event) -> Call | None:
        uid = _s(event, "Uniqueid")
        if uid and uid in self._by_uniqueid:
            return self._by_uniqueid[uid]
        channel = _s(event, "Channel")
        if channel and channel in self._by_channel:
            return self._by_channel[channel]
        linked = _s(event, "Linkedid")
        if linked and linked in self._by_uniqueid:
            return self._by_uniqueid[linked]
        return None

    def feed(self, event: Event) -> CallResult | None:
        """Apply one event; return the result when it ends one of our calls.

        An orphan's result is also kept on it (`Call.result`) for the attempt that adopts it.
        """
        result = self._apply(event)
        if result is None:
            if _s(event, "Event") == "Hangup":  # an orphan's end, should no result follow
                call = self._find(event)
                if (
                    call is not None
                    and call.origin is Origin.ORPHAN
                    and call.ended_at is None
                    and _s(event, "Channel") == call.primary_channel
                ):
                    call.ended_at = self._clock()
            return None
        call = self._calls.get(result.action_id)
        if call is not None and call.origin is Origin.ORPHAN:
            if call.result is not None:
                return None  # already ended (counted once)
            call.result = result
            if call.ended_at is None:
                call.ended_at = self._clock()
            self._drop_stale_orphans()
        return result

    def _apply(self, event: Event) -> CallResult | None:
        name = _s(event, "Event")
        if name == "OriginateResponse":
            return self._originate_response(event)
        if name == "VarSet":
            var = _s(event, "Variable")
            if var in ("PLP_CALL", "DELIVERY_ID"):
                value = _s(event, "Value")
                call = self._calls.get(value) if var == "PLP_CALL" else self._by_delivery.get(value)
                if call is not None:
                    self._link(call, _s(event, "Channel"), _s(event, "Uniqueid"))
                    return None
        if name == "UserEvent":
            return self._user_event(event)
        call = self._find(event)
        if call is None:
            if _s(event, "Uniqueid"):
                self.ignored += 1  # a channel event of a call that is not ours
            return None
        self._link(call, _s(event, "Channel"), _s(event, "Uniqueid"))
        if name == "Hangup":
            return self._hangup(call, event)
        if (
            name == "Newstate"
            and _s(event, "ChannelStateDesc") == "Up"
            and call.primary_channel is not None
            and _s(event, "Channel") == call.primary_channel
        ):
            call.answered = True  # an orphan's answer, should its OriginateResponse not come
        return None

    def _originate_response(self, event: Event) -> CallResult | None:
        call = self._calls.get(_s(event, "ActionID"))
        if call is None:
            self.ignored += 1
            return None
        call.response = _s(event, "Response")
        call.reason = _s(event, "Reason")
        if call.response == "Success" and call.reason == REASON_ANSWERED:
            call.answered = True
            uid = _s(event, "Uniqueid")
            channel = _s(event, "Channel")
            self._link(call, channel, uid)
            call.primary_uniqueid = uid or None
            call.primary_channel = channel or None
            return None
        outcome, cause = classify_failure(call.reason, call.causes)
        return CallResult(call.action_id, outcome, cause)

    def _user_event(self, event: Event) -> CallResult | None:
        call = self._find(event)
        if call is None:
            call = self._by_delivery.get(_s(event, "Delivery"))
        if call is None:
            self.ignored += 1
            return None
        kind = _s(event, "UserEvent")
        if kind == "PLPPlayed":
            call.playback = _s(event, "PlaybackStatus") or "UNKNOWN"
        elif kind == "PLPAck":
            call.digit = _s(event, "Digit")
            call.read_status = _s(event, "ReadStatus")
        return None

    def _hangup(self, call: Call, event: Event) -> CallResult | None:
        call.causes.append(_s(event, "Cause"))
        heard = call.playback is not None or call.digit is not None
        if call.adopted and not call.answered and heard:
            # Found ringing after a restart, its answer unseen (e.g. in an AMI outage): the
            # dialplan's own events after the answer (played, a digit) say it was answered.
            call.answered = True
        if not call.answered:
            return None  # a failed call ends with its OriginateResponse
        uid = _s(event, "Uniqueid")
        channel = _s(event, "Channel")
        if uid == call.primary_uniqueid or channel == call.primary_channel:
            return classify_answered(call)
        return None

    def reconcile(
        self, live: Iterable[Mapping[str, str]], only: Iterable[str] | None = None
    ) -> list[CallResult]:
        """After a (re)connect: `live` are the channels Asterisk still has (Status events).

        Calls with a live channel go on (their next events will end them); the others
        ended while the link was down and are resolved from what was seen before.
        `only` limits the resolution to these calls (those placed before the reconnect).
        Live channels of calls nobody here knows (`PLP_CALL` and `DELIVERY_ID` among their
        variables) are an earlier process's: watched from now on (`watch`). An orphan gone
        without an end seen (it ended in an outage) is dropped: its attempt asks AstDB.
        """
        subset = set(self._calls) if only is None else set(only)
        alive: set[str] = set()
        unknown: dict[str, tuple[str, list[Mapping[str, str]]]] = {}
        for ch in live:
            name, uid = ch.get("Channel", ""), ch.get("Uniqueid", "")
            call = self._by_uniqueid.get(uid) or self._by_channel.get(name)
            found = dict(
                p.partition("=")[::2] for p in ch.get("Variables", "").split(",") if "=" in p
            )
            aid = found.get("PLP_CALL", "")
            if call is None and aid in self._calls:
                call = self._calls[aid]
            if call is None:
                if aid and found.get("DELIVERY_ID"):
                    unknown.setdefault(aid, (found["DELIVERY_ID"], []))[1].append(ch)
                continue
            self._link(call, name, uid)
            if ch.get("ChannelStateDesc") == "Up" and _is_primary_name(name):
                call.answered = True
                call.primary_channel = call.primary_channel or name
                call.primary_uniqueid = call.primary_uniqueid or uid
            alive.add(call.action_id)
        results = []
        for call in list(self._calls.values()):
            if call.action_id in alive:
                continue
            if call.origin is Origin.ORPHAN:
                if call.result is None:
                    self.forget(call.action_id)
                continue
            if call.action_id not in subset:
                continue
            if call.answered and call.playback is not None:
                results.append(classify_answered(call))
            else:
                results.append(CallResult(call.action_id, CallOutcome.LOST, None, call.answered))
        for aid, (delivery, channels) in unknown.items():
            self.watch(aid, delivery, channels)
        self._drop_stale_orphans()
        return results
