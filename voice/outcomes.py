"""How a call ended: the outcomes the gateway reports, classified from Asterisk's Originate
reasons and Q.850 hangup causes, or read back from the dialplan's AstDB record.

Pure logic; voice/calls.py follows the calls and classifies answered ones from what it saw.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

# Originate "Reason" codes (Asterisk's enum ast_control_frame_type).
REASON_FAILED = "0"  # the channel could not even be created (no route, trunk down)
REASON_HANGUP = "1"  # the far end hung up before answering
REASON_RING = "2"
REASON_RINGING = "3"  # still ringing when the Originate Timeout expired
REASON_ANSWERED = "4"
REASON_BUSY = "5"
REASON_CONGESTION = "8"

# Q.850 hangup causes, used when the OriginateResponse reason alone says too little.
_CAUSE_BUSY = {"17", "21"}  # user busy, call rejected
_CAUSE_NO_ANSWER = {"18", "19"}  # no user responding, no answer
_CAUSE_CONGESTION = {"34", "38", "41", "42", "44", "47"}
_CAUSE_INVALID = {"1", "3", "28"}  # unallocated number, no route, invalid number format
_CAUSE_UNREACHABLE = {"20", "27"}  # subscriber absent, destination out of order


class CallOutcome(enum.StrEnum):
    """How one call ended, as the dispatcher would describe it."""

    ANSWERED = "answered"  # message played to the end (no key 1, or no ack asked)
    ACKNOWLEDGED = "acknowledged"  # message played and the member pressed 1
    HUNG_UP_EARLY = "hung_up_early"  # answered, but hung up before the end of the message
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CONGESTION = "congestion"
    UNREACHABLE = "unreachable"  # switched off, out of coverage, no route
    INVALID_NUMBER = "invalid_number"  # the network says the number does not exist
    FAILED = "failed"  # anything else; `cause` says what
    LOST = "call_lost"  # AMI link lost and the call no longer exists after reconnecting


@dataclass(frozen=True)
class CallResult:
    action_id: str
    outcome: CallOutcome
    cause: str | None = None  # Q.850 cause, "playback_failed", ...
    answered: bool = False
    played: bool = False
    digit: str | None = None
    recorded: bool = False  # read back from the dialplan's AstDB record, not seen live
    # Inferred, not seen: answered before the gateway followed it, ended without a dialplan
    # event (cause 16 taken for "played"); the call's AstDB record, if any, knows better.
    guessed: bool = False


def classify_failure(reason: str, causes: Iterable[str]) -> tuple[CallOutcome, str | None]:
    """Outcome of a failed Originate from its Reason and any hangup causes seen."""
    known = [c for c in causes if c and c != "0"]
    cause = known[-1] if known else None
    if reason == REASON_BUSY:
        return CallOutcome.BUSY, cause or "17"
    if reason in (REASON_RINGING, REASON_RING):
        return CallOutcome.NO_ANSWER, cause or "19"
    if reason == REASON_CONGESTION:
        return CallOutcome.CONGESTION, cause or "34"
    if cause in _CAUSE_BUSY:
        return CallOutcome.BUSY, cause
    if cause in _CAUSE_NO_ANSWER:
        return CallOutcome.NO_ANSWER, cause
    if cause in _CAUSE_CONGESTION:
        return CallOutcome.CONGESTION, cause
    if cause in _CAUSE_INVALID:
        return CallOutcome.INVALID_NUMBER, cause
    if cause in _CAUSE_UNREACHABLE or reason == REASON_FAILED:
        return CallOutcome.UNREACHABLE, cause
    return CallOutcome.FAILED, cause or f"reason_{reason or 'unknown'}"


# What the shipped dialplan records in AstDB (`plp/${PLP_CALL}` = "<outcome>[,<detail>]")
# once the call has entered plp-alert, i.e. was answered; see configs/asterisk/extensions.conf.
_RECORDED = {
    "answered": CallOutcome.ANSWERED,
    "acknowledged": CallOutcome.ACKNOWLEDGED,
    "hung_up_early": CallOutcome.HUNG_UP_EARLY,
    "failed": CallOutcome.FAILED,
}


def recorded_result(action_id: str, value: str) -> CallResult | None:
    """The result of an answered call from its AstDB record; None if the value is unknown
    (a dialplan changed without the gateway: better to call again than to guess)."""
    outcome_name, _, detail = value.strip().partition(",")
    outcome = _RECORDED.get(outcome_name.strip())
    if outcome is None:
        return None
    detail = detail.strip()
    played = outcome in (CallOutcome.ANSWERED, CallOutcome.ACKNOWLEDGED)
    if outcome is CallOutcome.FAILED:
        detail = detail or "failed"
    return CallResult(
        action_id,
        outcome,
        detail or None,
        answered=True,
        played=played,
        digit="1" if outcome is CallOutcome.ACKNOWLEDGED else None,
        recorded=True,
    )
