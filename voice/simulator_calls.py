"""How the AMI simulator plays out one call: the event sequences of a real Asterisk 22.

Modelled on the reference transcripts (tests/voice_transcripts/): an Originate to a
`Local/<number>@...` channel whose callee behaves by the number's last digit, landing in
the gateway's `plp-alert` dialplan (configs/asterisk/extensions.conf), including the
result it records in AstDB (`plp/${PLP_CALL}`) and its `h` extension.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .simulator_astdb import AstDB

# emit(event name, fields, call clock): the clock is the event's time as the real call would
# have it (see SimCall.clock), for the Timestamp header of `timestampevents`.
Emit = Callable[[str, list[tuple[str, str]], float], None]

STATE_DESC = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up", 7: "Busy"}
CAUSE_TXT = {
    "0": "Unknown",
    "1": "Unallocated (unassigned) number",
    "16": "Normal Clearing",
    "17": "User busy",
    "19": "User alerting, no answer",
    "20": "Subscriber absent",
    "34": "Circuit/channel congestion",
}
# Last digit -> callee behaviour. 1-6 as in the transcripts; 7, 8 are simulator extras.
BEHAVIOUR = {
    "1": "ack",
    "2": "busy",
    "3": "noanswer",
    "4": "congest",
    "5": "early",
    "6": "silent",
    "7": "absent",
    "8": "unallocated",
}
_GOTO_ORDER = ["ack", "busy", "noanswer", "congest", "early", "silent"]
_LABEL_PRIORITY = {"ack": 8, "busy": 16, "noanswer": 18, "congest": 21, "silent": 23, "early": 28}
DEFAULT_PLAYBACK_S = 10.33  # the transcripts' message, used when the file's length is unknown
_FORMATS = (".sln", ".wav", ".ulaw", ".alaw", ".gsm", ".sln16", "")


def playback_seconds(alert_file: str) -> float | None:
    """Length of what Playback(alert_file) would play, or None when no such file exists."""
    for ext in _FORMATS:
        path = Path(alert_file + ext)
        if not path.is_file():
            continue
        if ext == ".wav":
            try:
                with wave.open(str(path), "rb") as w:
                    return w.getnframes() / float(w.getframerate() or 8000)
            except (wave.Error, EOFError):
                return DEFAULT_PLAYBACK_S
        if ext == ".sln":
            return path.stat().st_size / 16000.0
        if ext in (".ulaw", ".alaw"):
            return path.stat().st_size / 8000.0
        return DEFAULT_PLAYBACK_S
    return None


@dataclass
class Half:
    """One half of a Local channel (";1" runs plp-alert, ";2" is the simulated phone)."""

    name: str
    uniqueid: str
    linkedid: str
    state: int
    exten: str
    context: str = "plp-phones"
    priority: int = 1
    cid: tuple[str, str] = ("<unknown>", "<unknown>")
    connected: tuple[str, str] = ("<unknown>", "<unknown>")
    variables: dict[str, str] = field(default_factory=dict)

    def fields(self, prefix: str = "") -> list[tuple[str, str]]:
        return [
            (prefix + "Channel", self.name),
            (prefix + "ChannelState", str(self.state)),
            (prefix + "ChannelStateDesc", STATE_DESC.get(self.state, "Unknown")),
            (prefix + "CallerIDNum", self.cid[0]),
            (prefix + "CallerIDName", self.cid[1]),
            (prefix + "ConnectedLineNum", self.connected[0]),
            (prefix + "ConnectedLineName", self.connected[1]),
            (prefix + "Language", "en"),
            (prefix + "AccountCode", ""),
            (prefix + "Context", self.context),
            (prefix + "Exten", self.exten),
            (prefix + "Priority", str(self.priority)),
            (prefix + "Uniqueid", self.uniqueid),
            (prefix + "Linkedid", self.linkedid),
        ]


@dataclass
class SimCall:
    """One originated call and the script that plays it out."""

    action_id: str
    dial: str  # the Originate Channel, e.g. Local/32470000001@plp-phones
    number: str
    one: Half
    two: Half
    variables: list[tuple[str, str]]
    caller_id: tuple[str, str]
    context: str
    exten: str
    timeout_s: float
    emit: Emit
    sleep: Callable[[float], Awaitable[None]]
    early_hangup_s: float = 2.5
    answered: bool = False
    ended: bool = False
    hangup_cause: str | None = None  # set by the AMI Hangup action
    hangup_event: asyncio.Event = field(default_factory=asyncio.Event)
    astdb: AstDB | None = None  # where the dialplan's Set(DB(plp/...)) writes
    speed: float = 1.0  # the simulator's time scale (call seconds per wall second)
    # The call's own clock: its wall start plus the call seconds its script has played.
    # At speed 1 it is the wall clock; at speed 25 it reads as if the call had run at real
    # speed, and a stalled event loop does not bend it (scripted waits count as scripted).
    started_at: float = field(default_factory=time.time)
    call_s: float = 0.0

    @property
    def clock(self) -> float:
        return self.started_at + self.call_s

    # -- event helpers -------------------------------------------------------------------
    def _emit(self, name: str, fields: list[tuple[str, str]]) -> None:
        """Every event of the call goes out here, stamped with the call's clock."""
        self.emit(name, fields, self.clock)

    def _ev(self, name: str, h: Half | None, extra: list[tuple[str, str]] | None = None) -> None:
        fields = [("Privilege", "dialplan,all" if name in ("Newexten", "VarSet") else "call,all")]
        if h is not None:
            fields += h.fields()
        self._emit(name, fields + (extra or []))

    def _exten(self, h: Half, prio: int, app: str, data: str | None = None) -> None:
        h.priority = prio
        extra = [("Extension", h.exten), ("Application", app)]
        if data is not None:
            extra.append(("AppData", data))
        self._ev("Newexten", h, extra)

    def _var(self, h: Half, name: str, value: str) -> None:
        h.variables[name] = value
        self._ev("VarSet", h, [("Variable", name), ("Value", value)])

    def _state(self, h: Half, state: int) -> None:
        h.state = state
        self._ev("Newstate", h)

    def _device(self, state: str) -> None:
        self._emit(
            "DeviceStateChange",
            [("Privilege", "call,all"), ("Device", self.dial), ("State", state)],
        )

    def _dial(self, name: str, status: str | None = None, string: str | None = None) -> None:
        extra = [("DialString", string)] if string else []
        if status:
            extra = [("DialStatus", status)]
        self._emit(name, [("Privilege", "call,all"), *self.one.fields("Dest"), *extra])

    def _originate_response(self, ok: bool, reason: str) -> None:
        self._emit(
            "OriginateResponse",
            [
                ("Privilege", "call,all"),
                ("ActionID", self.action_id),
                ("Response", "Success" if ok else "Failure"),
                ("Channel", self.one.name if ok else self.dial),
                ("Context", self.context),
                ("Exten", self.exten),
                ("Reason", reason),
                ("Uniqueid", self.one.uniqueid if ok else "<unknown>"),
                ("CallerIDNum", self.caller_id[0]),
                ("CallerIDName", self.caller_id[1]),
            ],
        )

    def _record(self, prio: int, result: str) -> None:
        """`Set(PLP_RESULT=<result>)` then `Set(DB(plp/${PLP_CALL})=${PLP_RESULT})`."""
        one = self.one
        self._exten(one, prio, "Set", f"PLP_RESULT={result}")
        self._var(one, "PLP_RESULT", result)
        self._db_write(prio + 1, result)

    def _db_write(self, prio: int, value: str) -> None:
        # A function write: a Newexten but no VarSet. An empty PLP_CALL makes DB() refuse.
        key = dict(self.variables).get("PLP_CALL", "")
        self._exten(self.one, prio, "Set", f"DB(plp/{key})={value}")
        if key and self.astdb is not None:
            self.astdb.put("plp", key, value)

    def _h_extension(self) -> None:
        """The shipped plp-alert's `h` extension: runs on ;1 as it hangs up, once answered."""
        one = self.one
        one.exten = "h"
        recorded = bool(one.variables.get("PLP_RESULT"))
        self._exten(one, 1, "GotoIf", f"{int(recorded)}?recorded")
        if not recorded:
            self._db_write(2, "hung_up_early")
        key = dict(self.variables).get("PLP_CALL", "")
        stored = self.astdb.get("plp", key) if self.astdb is not None and key else None
        self._exten(one, 3, "NoOp", f"call {key} ended: {stored or ''}")

    def _hangup(self, h: Half, cause: str) -> None:
        if h is self.one and self.answered and h.exten != "h":
            self._h_extension()
        self._ev("Hangup", h, [("Cause", cause), ("Cause-txt", CAUSE_TXT.get(cause, "Unknown"))])

    def _hangup_both(self, first: Half, cause: str) -> None:
        """A side hangs up: the request crosses the Local bridge, both halves go."""
        other = self.two if first is self.one else self.one
        self._ev("SoftHangupRequest", first, [("Cause", "16")])
        self._ev("HangupRequest", other, [("Cause", "16")])
        self._ev("SoftHangupRequest", other, [("Cause", "16")])
        self._hangup(first, cause)
        self._hangup(other, cause)
        self._device("NOT_INUSE")
        self._device("NOT_INUSE")

    # -- the script ----------------------------------------------------------------------
    async def run(self, playback_s: float | None, behaviour: str) -> None:
        try:
            await self._run(playback_s, behaviour)
        finally:
            self.ended = True

    async def _wait(self, seconds: float) -> bool:
        """Sleep in call time; True when an AMI Hangup ended the call meanwhile."""
        if self.hangup_event.is_set():
            return True
        seconds = max(0.0, seconds)
        began = time.monotonic()
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        waiter = asyncio.ensure_future(self.hangup_event.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()
        if sleeper.done() and not sleeper.cancelled():
            self.call_s += seconds  # the script's time, however late the loop woke
        else:  # cut short by an AMI Hangup: as much call time as really went by
            self.call_s += min(seconds, (time.monotonic() - began) * self.speed)
        return self.hangup_event.is_set()

    async def _run(self, playback_s: float | None, behaviour: str) -> None:
        one, two = self.one, self.two
        self._ev("Newchannel", one)
        self._ev("Newchannel", two)
        self._exten(one, 1, "AppDial2", "(Outgoing Line)")
        for name, value in reversed(self.variables):
            self._var(one, name, value)
        one.cid = self.caller_id
        self._ev(
            "NewCallerid", one, [("CID-CallingPres", "0 (Presentation Allowed, Not Screened)")]
        )
        one.connected = self.caller_id
        self._ev("NewConnectedLine", one)
        for name, value in self.variables:
            self._var(two, name, value)
        two.cid = two.connected = self.caller_id
        self._ev(
            "NewCallerid", two, [("CID-CallingPres", "0 (Presentation Allowed, Not Screened)")]
        )
        self._ev("NewConnectedLine", two)
        bridge = one.fields("LocalOne") + two.fields("LocalTwo")
        bridge += [("Context", two.context), ("Exten", two.exten), ("LocalOptimization", "Yes")]
        self._emit("LocalBridge", [("Privilege", "call,all"), *bridge])
        self._dial("DialBegin", string=self.dial.partition("/")[2])
        self._exten(two, 1, "NoOp", f"phone {self.number}")
        for prio, label in enumerate(_GOTO_ORDER, start=2):
            hit = label == behaviour
            self._exten(two, prio, "GotoIf", f"{int(hit)}?{label}")
            if hit:
                break
        if behaviour in ("busy", "congest"):
            await self._refuse(behaviour)
        elif behaviour in ("absent", "unallocated"):
            await self._refuse_with(behaviour)
        elif behaviour == "noanswer":
            await self._ring_out()
        else:
            await self._answered(playback_s, behaviour)

    async def _refuse(self, behaviour: str) -> None:
        one, two = self.one, self.two
        prio = _LABEL_PRIORITY[behaviour]
        self._exten(two, prio, "Busy" if behaviour == "busy" else "Congestion", "5")
        self._state(two, 7)
        self._dial("DialEnd", "BUSY" if behaviour == "busy" else "CONGESTION")
        self._originate_response(False, "5" if behaviour == "busy" else "8")
        self._ev("HangupRequest", two, [("Cause", "0")])
        self._hangup(one, "0")
        self._device("NOT_INUSE")
        self._device("NOT_INUSE")
        self._ev("SoftHangupRequest", two, [("Cause", "16")])
        self._hangup(two, "17" if behaviour == "busy" else "34")
        self._device("NOT_INUSE")

    async def _refuse_with(self, behaviour: str) -> None:
        cause = "20" if behaviour == "absent" else "1"
        self._exten(self.two, 40, "Hangup", cause)
        self._ev("SoftHangupRequest", self.two, [("Cause", cause)])
        self._ev("HangupRequest", self.one, [("Cause", cause)])
        self._hangup(self.two, cause)
        self._originate_response(False, "1")
        self._hangup(self.one, cause)
        self._device("NOT_INUSE")

    async def _ring(self, label: str) -> None:
        prio = _LABEL_PRIORITY[label]
        self._exten(self.two, prio, "Ringing")
        self._state(self.one, 5)
        wait = "300" if label == "noanswer" else "1"
        self._exten(self.two, prio + 1, "Wait", wait)
        self._dial("DialState", "RINGING")
        self._device("INUSE")

    async def _ring_out(self) -> None:
        await self._ring("noanswer")
        cause = "19"
        if await self._wait(self.timeout_s):
            cause = self.hangup_cause or "16"
        self._ev("HangupRequest", self.two, [("Cause", cause)])
        self._originate_response(False, "3")
        self._hangup(self.one, cause)
        self._ev("SoftHangupRequest", self.two, [("Cause", "16")])
        self._device("NOT_INUSE")
        self._hangup(self.two, cause)
        self._device("NOT_INUSE")

    async def _cancelled_while_ringing(self) -> None:
        cause = self.hangup_cause or "16"
        self._ev("HangupRequest", self.one, [("Cause", cause)])
        self._originate_response(False, "1")
        self._hangup(self.one, cause)
        self._ev("SoftHangupRequest", self.two, [("Cause", "16")])
        self._hangup(self.two, cause)
        self._device("NOT_INUSE")

    async def _answered(self, playback_s: float | None, behaviour: str) -> None:
        one, two = self.one, self.two
        await self._ring(behaviour)
        ring_s = 1.0
        if await self._wait(min(ring_s, self.timeout_s)):
            await self._cancelled_while_ringing()
            return
        prio = _LABEL_PRIORITY[behaviour] + 2
        self._exten(two, prio, "Answer")
        self._state(two, 6)
        self._originate_response(True, "4")
        self.answered = True
        self._state(one, 6)
        self._dial("DialEnd", "ANSWER")
        one.context, one.exten = self.context, self.exten
        alert = dict(self.variables).get("ALERT_FILE", "")
        delivery = dict(self.variables).get("DELIVERY_ID", "")
        self._exten(one, 1, "NoOp", f"alert {alert} delivery {delivery}")
        self._exten(one, 2, "Wait", "0.5")
        self._device("INUSE")
        self._device("INUSE")
        if await self._wait(0.5):
            self._hangup_both(one, self.hangup_cause or "16")
            return
        monitor = f"/var/spool/asterisk/monitor/{self.number}-{two.uniqueid}.wav"
        if behaviour == "silent":
            self._exten(two, prio + 1, "Wait", "60")
        else:
            self._exten(two, prio + 1, "MixMonitor", monitor)
        self._exten(one, 3, "Playback", alert)
        if behaviour != "silent":
            self._var(two, "MIXMONITOR_FILENAME", monitor)
            self._ev("MixMonitorStart", two)
            if behaviour == "early":
                self._exten(two, prio + 2, "Wait", "2")
            else:
                self._exten(two, prio + 2, "WaitForSilence", "1500,1,90")
        status = "SUCCESS" if playback_s is not None else "FAILED"
        heard = playback_s or 0.0
        # The member hangs up 2.5 s into the message (the transcript), or half-way through
        # a shorter one.
        early_s = min(self.early_hangup_s, heard / 2)
        if behaviour == "early" and heard > 0:
            if await self._wait(early_s):
                self._hangup_both(one, self.hangup_cause or "16")
                return
            self._exten(two, prio + 3, "Hangup")
            self._ev("SoftHangupRequest", two, [("Cause", "16")])
            self._ev("HangupRequest", one, [("Cause", "16")])
            self._hangup(two, "16")
            self._device("NOT_INUSE")
            self._var(one, "PLAYBACKSTATUS", "SUCCESS")  # sic: Asterisk says SUCCESS here
            self._ev("SoftHangupRequest", one, [("Cause", "16")])
            self._hangup(one, "16")
            self._device("NOT_INUSE")
            return
        if await self._wait(heard):
            self._hangup_both(one, self.hangup_cause or "16")
            return
        self._var(one, "PLAYBACKSTATUS", status)
        self._exten(one, 4, "UserEvent", f"PLPPlayed,Delivery: {delivery},PlaybackStatus: {status}")
        self._ev(
            "UserEvent",
            one,
            [("UserEvent", "PLPPlayed"), ("Delivery", delivery), ("PlaybackStatus", status)],
        )
        ack_wanted = dict(self.variables).get("ACK_WANTED", "1") != "0"
        digit, read_status = "", "TIMEOUT"
        skip = status != "SUCCESS" or not ack_wanted
        # The shipped dialplan's additions to the recorded one: the AstDB record, one GotoIf.
        self._record(5, "answered" if status == "SUCCESS" else "failed,playback_failed")
        self._exten(one, 7, "GotoIf", f"{int(skip)}?done")
        if not skip:
            self._exten(one, 8, "Read", "ACK,,1,,1,6")
            self._var(one, "READSTATUS", "ERROR")
            if behaviour == "ack":
                if await self._wait(1.488):
                    self._hangup_both(one, self.hangup_cause or "16")
                    return
                self._var(two, "WAITSTATUS", "SILENCE")
                self._exten(two, prio + 3, "SendDTMF", "1")
                await self._wait(0.1)
                dtmf = [("Digit", "1"), ("Direction", "Received")]
                self._ev("DTMFBegin", one, dtmf)
                await self._wait(0.1)
                self._ev("DTMFEnd", one, [("Digit", "1"), ("DurationMs", "100"), *dtmf[1:]])
                digit, read_status = "1", "OK"
                self._var(one, "ACK", "1")
            else:
                if await self._wait(6.006):
                    self._hangup_both(one, self.hangup_cause or "16")
                    return
                self._var(one, "ACK", "")
            self._var(one, "READSTATUS", read_status)
            self._exten(
                one,
                9,
                "UserEvent",
                f"PLPAck,Delivery: {delivery},Digit: {digit},ReadStatus: {read_status}",
            )
            self._ev(
                "UserEvent",
                one,
                [
                    ("UserEvent", "PLPAck"),
                    ("Delivery", delivery),
                    ("Digit", digit),
                    ("ReadStatus", read_status),
                ],
            )
            self._record(10, "acknowledged" if digit == "1" else "answered")
        self._exten(one, 12, "Hangup")
        self._hangup_both(one, "16")
