"""The voice channel: one attempt = one call through Asterisk, ended by its outcome.

Implements gateway.channel.Channel. Audio comes from an `AudioSource` (the TTS
synthesizer); the AMI session is voice/ami.py; outcomes come from voice/calls.py and
voice/outcomes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Collection, Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol

from gateway.channel import Attempt, Limits, Outcome, Reports, RetryPolicy
from gateway.domain import DeliveryState, Job
from gateway.errors import ChannelError, LinkDown, PermanentError, TemporaryError
from gateway.numbers import kind_of_e164, refusal
from gateway.privacy import mask_phone
from gateway.queues import Slots

from .ami import AmiActionError, AmiClient, AmiNotConnected
from .calls import Call, CallOutcome, CallResult, CallTracker, Origin, recorded_result
from .config import VoiceConfig

log = logging.getLogger("voice.calls")

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
ASTDB_FAMILY = "plp"  # the dialplan records each answered call's result at plp/<PLP_CALL>
_TEMPORARY = {
    CallOutcome.BUSY: "busy",
    CallOutcome.NO_ANSWER: "no_answer",
    CallOutcome.CONGESTION: "congestion",
    CallOutcome.UNREACHABLE: "unreachable",
    CallOutcome.HUNG_UP_EARLY: "hung_up_early",
    CallOutcome.LOST: "call_lost",
}


class Rendered(Protocol):
    """What the synthesizer returns (voice.synthesis.RenderedAudio)."""

    @property
    def path(self) -> Path: ...
    @property
    def asterisk_name(self) -> str: ...
    @property
    def duration_s(self) -> float: ...


class AudioSource(Protocol):
    """The part of voice.synthesis.Synthesizer the channel needs.

    The channel owns its audio source's lifecycle: `start()` before the AMI session, `stop()`
    after it, and shows `stats()` in its health (`tts`).
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def stats(self) -> Mapping[str, object]: ...

    async def prepare(self, job: Job) -> Mapping[str, str]: ...

    async def render(
        self, *, text: str, lang: str, options: Mapping[str, object], test: bool
    ) -> Rendered: ...


def _clean(value: str) -> str:
    """A channel variable value: no separators that would split the Variable header."""
    return re.sub(r"[,\r\n|]", "_", value)


def call_id(attempt: Attempt, number: int | None = None) -> str:
    """The ActionID (and `PLP_CALL`) of the call of `attempt`, or of its attempt `number`."""
    return f"plp-{attempt.delivery_id}-{attempt.number if number is None else number}"


def ack_wanted(options: Mapping[str, object]) -> bool:
    voice = options.get("voice")
    return isinstance(voice, Mapping) and bool(voice.get("ack", False))


class VoiceChannel:
    name = "voice"

    def __init__(self, config: VoiceConfig, reports: Reports, audio: AudioSource) -> None:
        self._cfg = config
        self._reports = reports  # calls settle synchronously; kept for late news
        self._audio = audio
        self._tracker = CallTracker()
        self._waiters: dict[str, asyncio.Future[CallResult]] = {}
        self._hangup_wanted: dict[str, bool] = {}  # action id -> Hangup already sent
        self._placed_on: dict[str, int] = {}  # action id -> AMI connection number it went out on
        # Free call channels; the next one goes to a waiting hot call before any cold one.
        self._slots = Slots(config.max_channels)
        self._background: set[asyncio.Task[None]] = set()
        self._ami = AmiClient(config.ami, self._on_event, self._reconcile)
        # Set once the first reconcile after start has run: until then a retried attempt
        # might belong to a call an earlier (killed) process left up, to adopt, not redial.
        self._reconciled = asyncio.Event()
        self.outcomes: Counter[str] = Counter()
        self.active = 0
        self.peak = 0

    # -- Channel protocol ------------------------------------------------------------------
    async def start(self) -> None:
        await self._audio.start()
        await self._ami.start()

    async def stop(self) -> None:
        # Let the hangups of cancelled calls go out first, and the AstDB clean-up that
        # follows once they have ended.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while self._background and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._background), timeout=left)
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._ami.stop()
        await self._audio.stop()

    def share(self, nodes: int) -> None:
        """Several nodes on the same trunk (gateway.cluster): each places at most its share
        of `max_channels`, so that together they never exceed what the trunk has."""
        self._slots.resize(max(1, self._cfg.max_channels // max(1, nodes)))

    def reconfigure(self, config: VoiceConfig) -> None:
        """A configuration reload: limits, retry rules and call keys apply to the next calls;
        changed `[voice.ami]` settings reconnect the session (calls in progress are
        reconciled after the reconnect, like after a dropped link); `[voice.tts]` (templates,
        engine order, loudness) goes to the synthesizer for the next syntheses. `sounds_dir`
        needs a restart."""
        old, self._cfg = self._cfg, config
        if config.max_channels != old.max_channels:
            self._slots.resize(config.max_channels)  # calls in progress keep their channel
        if config.ami != old.ami:
            self._spawn(self._ami.reconfigure(config.ami), "ami-reconfigure")
        if config.tts != old.tts:
            reconfigure = getattr(self._audio, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(config.tts)
        if config.sounds_dir != old.sounds_dir:
            log.warning("reload: [voice] sounds_dir needs a restart; ignored")

    def limits(self) -> Limits:
        retry = self._cfg.retry
        policy = RetryPolicy(
            max_attempts=retry.max_attempts,
            initial_delay=retry.link_down.delay,
            max_delay=max(retry.no_answer.delay, retry.link_down.delay),
        )
        return Limits(self._cfg.max_channels, self._cfg.calls_per_second, policy)

    async def prepare(self, job: Job) -> Mapping[str, str]:
        return await self._audio.prepare(job)

    async def housekeeping(self) -> int:
        """Remove audio unused for `[voice.tts] retention_days` (the daemon's purge loop)."""
        cleanup = getattr(self._audio, "cleanup", None)
        if cleanup is None:
            return 0
        removed: int = await cleanup()
        return removed

    async def forget_audio(self, jobs: Collection[Job], keep: Collection[Job]) -> int:
        """Remove the audio of purged `jobs` unless a job in `keep` uses it (the daemon's
        purge: a purged job leaves no alert text behind)."""
        forget = getattr(self._audio, "forget", None)
        if forget is None:
            return 0
        removed: int = await forget(jobs, keep)
        return removed

    def health(self) -> Mapping[str, object]:
        return {
            **self._ami.health(),
            "active_calls": self.active,
            "peak_calls": self.peak,
            "max_channels": self._cfg.max_channels,
            "outcomes": dict(self.outcomes),
            "unknown_events": self._tracker.ignored,
            "tts": dict(self._audio.stats()),
        }

    async def send(self, attempt: Attempt) -> Outcome:
        if not _E164.match(attempt.address):
            raise PermanentError("invalid_number", "not an E.164 number")
        # Intake refused numbers outside the policy already; this catches any other path.
        problem = refusal(attempt.address, self._cfg.number_policy)
        if problem is not None:
            kind = kind_of_e164(attempt.address)
            log.info(
                "call to %s for job %s refused: %s (%s)",
                mask_phone(attempt.address), attempt.job_id, problem, kind,
            )  # fmt: skip
            raise PermanentError(problem, f"{kind or 'no country code'}: not in the number policy")
        ack = ack_wanted(attempt.options)
        audio = await self._render(attempt)
        if not self._ami.is_up and not await self._ami.wait_up(
            min(5.0, self._cfg.ami.connect_timeout)
        ):
            raise LinkDown("ami_down", self._ami.state, retry_after=self._cfg.retry.link_down.delay)
        if not self._reconciled.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._cfg.ami.action_timeout):
                    await self._reconciled.wait()
        result = self._ended_before_adoption(attempt)
        if result is None:
            result = await self._ended_while_down(attempt)
        if result is None:
            async with self._slots.hold(attempt.priority):
                self.active += 1
                self.peak = max(self.peak, self.active)
                try:
                    result = await self._call(attempt, audio, ack)
                finally:
                    self.active -= 1
        if result.guessed:  # its start was not seen: its record is final at its hangup
            result = await self._ended_unseen(result)
        if result.answered and not result.recorded:
            self._spawn(self._forget_record(result.action_id), f"dbdel-{result.action_id}")
        self.outcomes[result.outcome.value] += 1
        log.info(
            "call %s to %s for job %s: %s%s",
            result.action_id,
            mask_phone(attempt.address),
            attempt.job_id,
            result.outcome.value,
            f" (cause {result.cause})" if result.cause else "",
        )
        return self._settle(attempt, result, ack)

    # -- calls of an earlier process -------------------------------------------------------
    @staticmethod
    def _takes_over(attempt: Attempt, call: Call) -> bool:
        """Whether `attempt` adopts `call`, an orphan of its delivery (placed by another
        process, followed since a reconcile found it live).

        A live one, always: a second call to the member meanwhile is what adoption avoids.
        An ended one only as the outcome of the interrupted attempt that placed it: a
        cluster peer's call is watched too, and once that peer has stored its outcome
        (busy, not acknowledged...) the delivery's next, ordinary retry must call again.
        """
        if call.ended_at is None:
            return True
        return (
            call.result is not None
            and attempt.interrupted
            and call.action_id == call_id(attempt, attempt.number - 1)
        )

    def _ended_before_adoption(self, attempt: Attempt) -> CallResult | None:
        """The outcome of the call an earlier (killed) process placed for this delivery, if
        it ended after this process's first reconcile found it: followed since then."""
        call = self._tracker.orphan(str(attempt.delivery_id))
        if call is None or call.result is None or not self._takes_over(attempt, call):
            return None
        self._tracker.forget(call.action_id)
        log.info(
            "call %s of delivery %s ended before its retry: %s (followed since the restart)",
            call.action_id,
            attempt.delivery_id,
            call.result.outcome.value,
        )
        return call.result

    # -- what Asterisk recorded ------------------------------------------------------------
    async def _ended_while_down(self, attempt: Attempt) -> CallResult | None:
        """The result of the interrupted previous attempt, if its call ended while no
        gateway was following it (killed, stopped) and the dialplan recorded it in AstDB.

        None means "dial": no interruption, the call is still up (adopted by `_call`), or
        nothing was recorded (it never connected: busy, no answer, still ringing at the
        kill; or Asterisk restarted).
        """
        if not attempt.interrupted or attempt.number < 2:
            return None
        orphan = self._tracker.orphan(str(attempt.delivery_id))
        if orphan is not None and orphan.ended_at is None:
            return None  # still up: `_call` adopts it
        # Newest first: the cut-off call is the previous attempt's, unless the retry that
        # should have asked was itself cut off (a second kill) or could not ask (no AMI).
        # Records of calls whose end the gateway saw are deleted, so older ones are rare.
        for earlier in range(attempt.number - 1, 0, -1):
            action_id = call_id(attempt, earlier)
            result = await self._recorded(action_id)
            if result is not None:
                log.info(
                    "call %s of delivery %s ended while the gateway was down: %s (AstDB)",
                    action_id,
                    attempt.delivery_id,
                    result.outcome.value,
                )
                return result
        return None

    async def _recorded(self, action_id: str) -> CallResult | None:
        """Read, and then delete, the call's AstDB record; None if there is none."""
        try:
            value = await self._ami.db_get(ASTDB_FAMILY, action_id)
        except (AmiNotConnected, TimeoutError) as exc:
            # Without an answer, dialling could call the member twice: ask again later. The
            # reason stays "interrupted" so that the next attempt asks again.
            raise LinkDown(
                "interrupted",
                f"DBGet {action_id}: {exc}",
                retry_after=self._cfg.retry.link_down.delay,
            ) from None
        except AmiActionError as exc:  # e.g. no "system" write permission: cannot know
            log.warning("DBGet %s refused (%s): the member may be called twice", action_id, exc)
            return None
        if value is None:
            return None
        result = recorded_result(action_id, value)
        if result is None:
            log.warning("call %s: unknown AstDB record %r, calling again", action_id, value)
        self._spawn(self._forget_record(action_id), f"dbdel-{action_id}")
        return result

    async def _ended_unseen(self, result: CallResult) -> CallResult:
        """A call of this process that ended while the AMI link was down, or one whose start
        was not seen (`guessed`): what the dialplan recorded beats what was seen (or
        `call_lost`)."""
        if result.outcome is not CallOutcome.LOST and not result.answered:
            return result
        try:
            return await self._recorded(result.action_id) or result
        except LinkDown as exc:
            log.info("call %s: no AstDB answer (%s)", result.action_id, exc)
            return result

    async def _forget_record(self, action_id: str) -> None:
        """The gateway knows how the call ended: its AstDB record is no longer needed."""
        try:
            await self._ami.db_del(ASTDB_FAMILY, action_id)
        except (AmiActionError, AmiNotConnected, TimeoutError) as exc:
            log.info("DBDel %s: %s (the record stays in AstDB)", action_id, exc)

    # -- one call --------------------------------------------------------------------------
    async def _render(self, attempt: Attempt) -> Rendered:
        try:
            return await self._audio.render(
                text=attempt.text, lang=attempt.lang, options=attempt.options, test=attempt.test
            )
        except ChannelError:
            raise
        except Exception as exc:  # the synthesizer's own error tree is not ours to know
            log.warning("no audio for job %s (%s): %s", attempt.job_id, attempt.lang, exc)
            raise PermanentError("tts_failed", type(exc).__name__) from exc

    async def _call(self, attempt: Attempt, audio: Rendered, ack: bool) -> CallResult:
        cfg = self._cfg
        delivery = str(attempt.delivery_id)
        orphan = self._tracker.orphan(delivery)
        if orphan is not None and not self._takes_over(attempt, orphan):
            # Ended, and not this attempt's to settle (see _takes_over), or hung up with no
            # outcome seen (no OriginateResponse: it never connected). Call again.
            self._tracker.forget(orphan.action_id)
            orphan = None
        loop = asyncio.get_running_loop()
        if orphan is not None:
            # Placed by an earlier process (killed mid-call), followed since the first
            # reconcile: take it over, from its state so far, instead of calling again.
            action_id = orphan.action_id
            call = self._tracker.adopt(action_id, delivery)
            waiter: asyncio.Future[CallResult] = loop.create_future()
            self._waiters[action_id] = waiter
            if call.result is not None:  # it ended while this attempt waited for a slot
                waiter.set_result(call.result)
            log.info("adopted call %s still in progress for delivery %s", action_id, delivery)
        else:
            action_id = call_id(attempt)
            self._tracker.expect(action_id, delivery, ack_wanted=ack)
            waiter = loop.create_future()
            self._waiters[action_id] = waiter
        budget = cfg.ring_timeout + audio.duration_s + cfg.answer_margin
        budget += cfg.ack_timeout if ack else 0.0
        try:
            if orphan is None:
                await self._originate(attempt, audio, ack, action_id)
            async with asyncio.timeout(budget):  # not wait_for: see AmiClient.action
                return await asyncio.shield(waiter)
        except asyncio.CancelledError:
            if not waiter.done():  # still ringing or playing: end it
                self._request_hangup(action_id)
            raise
        except TimeoutError:
            self._request_hangup(action_id)
            if not self._ami.is_up:  # no news because no link: the outcome is unknown
                return CallResult(action_id, CallOutcome.LOST)
            return CallResult(action_id, CallOutcome.FAILED, "call_timeout")
        except AmiActionError as exc:
            self._forget(action_id)
            raise self._temporary(attempt, "originate_error", exc.message, rule="failed") from None
        finally:
            self._waiters.pop(action_id, None)
            if action_id not in self._hangup_wanted:
                self._forget(action_id)

    async def _originate(
        self, attempt: Attempt, audio: Rendered, ack: bool, action_id: str
    ) -> None:
        cfg = self._cfg
        number = attempt.address.lstrip("+")
        variables = [
            f"ALERT_FILE={_clean(audio.asterisk_name)}",
            f"DELIVERY_ID={attempt.delivery_id}",
            f"JOB_ID={_clean(attempt.job_id)}",
            f"PLP_CALL={action_id}",
            f"ACK_WANTED={int(ack)}",
        ]
        action = {
            "Action": "Originate",
            "ActionID": action_id,
            "Channel": cfg.channel.format(number=number, e164=attempt.address),
            "Context": cfg.context,
            "Exten": cfg.exten,
            "Priority": "1",
            "CallerID": cfg.caller_id,
            "Timeout": str(int(cfg.ring_timeout * 1000)),
            "Async": "true",
            "Variable": variables,
        }
        self._placed_on[action_id] = self._ami.connects
        try:
            await self._ami.action(action, as_list=False)
        except (AmiNotConnected, TimeoutError) as exc:
            # Asterisk may or may not have the call: the reconcile after the reconnect
            # finds it by its PLP_CALL variable, or resolves it as call_lost.
            log.warning("originate %s unconfirmed: %s", action_id, exc)

    def _request_hangup(self, action_id: str) -> None:
        """Hang up now if the call's channel is known, else as soon as it shows up."""
        call = self._tracker.get(action_id)
        if call is None:
            return
        self._hangup_wanted[action_id] = False
        if call.hangup_channel:
            self._hangup_wanted[action_id] = True
            self._spawn_hangup(action_id, call.hangup_channel)

    def _spawn_hangup(self, action_id: str, channel: str) -> None:
        self._spawn(self._hangup(action_id, channel), f"hangup-{action_id}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _hangup(self, action_id: str, channel: str) -> None:
        try:
            await self._ami.action({"Action": "Hangup", "Channel": channel, "Cause": "16"})
            log.info("hung up call %s", action_id)
        except (AmiActionError, AmiNotConnected, TimeoutError) as exc:
            log.info("hangup of call %s: %s", action_id, exc)  # it may have just ended

    def _forget(self, action_id: str) -> None:
        self._hangup_wanted.pop(action_id, None)
        self._placed_on.pop(action_id, None)
        self._tracker.forget(action_id)

    # -- events ----------------------------------------------------------------------------
    def _on_event(self, event: Mapping[str, Any]) -> None:
        name = str(event.get("Event", ""))
        result = self._tracker.feed(event)
        if result is not None:
            self._resolve(result)
            return
        if name in ("VarSet", "Newchannel") and not all(self._hangup_wanted.values()):
            for action_id, sent in list(self._hangup_wanted.items()):
                call = self._tracker.get(action_id)
                if not sent and call is not None and call.hangup_channel:
                    self._hangup_wanted[action_id] = True
                    self._spawn_hangup(action_id, call.hangup_channel)

    def _resolve(self, result: CallResult) -> None:
        waiter = self._waiters.get(result.action_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
        if waiter is None:
            call = self._tracker.get(result.action_id)
            if call is not None and call.origin is Origin.ORPHAN:
                # An earlier process's call: kept, with its AstDB record, for its attempt.
                log.info(
                    "call %s of delivery %s (placed before the restart) ended: %s",
                    result.action_id,
                    call.delivery,
                    result.outcome.value,
                )
                return
            self._forget(result.action_id)  # cancelled or timed out earlier: now it ended
            if result.answered:  # the dialplan's h extension has recorded it: not needed
                self._spawn(self._forget_record(result.action_id), f"dbdel-{result.action_id}")

    async def _reconcile(self) -> None:
        """After every (re)connect: which calls are still up? Resolve the others.

        Only calls placed on an earlier connection are resolved: a call placed on this
        one may not have its channels yet.
        """
        try:
            await self._reconcile_calls()
        finally:
            self._reconciled.set()

    async def _reconcile_calls(self) -> None:
        connection = self._ami.connects
        earlier = {aid for aid, conn in self._placed_on.items() if conn < connection}
        earlier |= {c.action_id for c in self._tracker.active() if c.adopted}
        reply = await self._ami.action(
            {"Action": "Status", "Variables": "PLP_CALL,DELIVERY_ID"}, within=10.0
        )
        live: list[dict[str, str]] = []
        for msg in reply if isinstance(reply, list) else []:
            if str(msg.get("Event", "")) != "Status":
                continue
            raw = msg.get("Variable", [])
            pairs = raw if isinstance(raw, list) else [raw] if raw else []
            live.append(
                {
                    "Channel": str(msg.get("Channel", "")),
                    "Uniqueid": str(msg.get("Uniqueid", "")),
                    "ChannelStateDesc": str(msg.get("ChannelStateDesc", "")),
                    "Variables": ",".join(str(p) for p in pairs),
                }
            )
        # Also starts following the live calls of an earlier (killed) process: every event
        # of theirs counts from now on, for the attempt that adopts one later.
        for result in self._tracker.reconcile(live, only=earlier):
            if result.action_id in self._waiters or result.action_id in self._hangup_wanted:
                self._resolve(await self._ended_unseen(result))
        orphans = self._tracker.orphans()
        if live or orphans:
            log.info(
                "AMI reconcile: %d live channels, %d calls of an earlier run",
                len(live),
                len(orphans),
            )

    # -- outcome -> delivery state ---------------------------------------------------------
    def _temporary(
        self, attempt: Attempt, reason: str, detail: str = "", rule: str | None = None
    ) -> ChannelError:
        policy = self._cfg.retry.rule(rule or reason)
        if attempt.number >= policy.max_attempts:
            return PermanentError(reason, f"gave up after {attempt.number} attempts")
        return TemporaryError(reason, detail, retry_after=policy.delay)

    def _settle(self, attempt: Attempt, result: CallResult, ack: bool) -> Outcome:
        ids = (result.action_id,)
        outcome = result.outcome
        if outcome is CallOutcome.ACKNOWLEDGED:
            return Outcome(DeliveryState.ACKNOWLEDGED, ids, "acknowledged")
        if outcome is CallOutcome.ANSWERED:
            if ack and self._cfg.retry.recall_unacknowledged:
                err = self._temporary(attempt, "not_acknowledged")
                if isinstance(err, TemporaryError):
                    raise err
                return Outcome(DeliveryState.DELIVERED, ids, "answered, not acknowledged")
            return Outcome(DeliveryState.DELIVERED, ids, "answered")
        if outcome is CallOutcome.INVALID_NUMBER:
            raise PermanentError("invalid_number", f"cause {result.cause}")
        if outcome in _TEMPORARY:
            reason = _TEMPORARY[outcome]
            rule = "link_down" if outcome is CallOutcome.LOST else None
            raise self._temporary(attempt, reason, f"cause {result.cause or '-'}", rule=rule)
        cause = result.cause or "failed"
        raise self._temporary(attempt, cause, "", rule="failed")
