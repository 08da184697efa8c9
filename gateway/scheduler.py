"""Moves deliveries from the store through per-channel queues to the channels and records
what happened: retries with backoff, expiry, cancel, fallback, one state per member.

Data flows one way: store -> queue -> channel -> outcome -> store -> status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from .async_store import AsyncStore, Batched, WriteBatch
from .channel import Attempt, Channel, Outcome, Receipt, Reply, Report
from .choices import DirectoryConfig, keyword
from .domain import (
    DeliveryState,
    Job,
    JobState,
    Priority,
    can_transition,
    compose_subject,
    compose_text,
    job_code_word,
)
from .errors import NotSent, PermanentError, StoreError, TemporaryError
from .privacy import mask_phone, scrub
from .queues import ChannelQueue, Slots, make_limiter
from .replies import confirmation, forward
from .rows import AddResult, Change, DeliveryRow
from .status import StatusPublisher, iso

log = logging.getLogger("gateway.scheduler")

# A new job's deliveries that wait for an attempt: queued now, or held until quiet hours end,
# or claimed already by the store (`claims_at_intake`).
_WAITING = (DeliveryState.QUEUED, DeliveryState.HELD, DeliveryState.SENDING)
# A hot job of at most this many deliveries, with room for them in its lanes, is stored with
# its attempts claimed (`claims_at_intake`): one store round trip less before the first send.
CLAIM_AT_INTAKE = 8

# Least wait before a delivery that never reached its provider is tried again: the channel
# usually waits for a link itself, but one that answers at once must not make it spin.
NOT_SENT_MIN_DELAY = 0.2
ANNOUNCE_CHUNK = 100  # deliveries announced per turn of the event loop when a job arrives


@dataclass
class _Lane:
    """One channel: its queue, its parallel slots per priority, its rate.

    Hot and cold attempts each have the channel's concurrency: a hot attempt never waits
    for a cold one to end before entering the channel, where it goes first at every stage
    that holds work (SMS window and pacing, free call channels, pooled connections)."""

    channel: Channel
    queue: ChannelQueue = field(default_factory=ChannelQueue)
    slots: dict[Priority, Slots] = field(default_factory=lambda: {p: Slots(1) for p in Priority})
    limiter: object | None = None
    rate: float = 0.0
    inflight: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    # A channel that claims ahead (`Limits.claim_ahead`, e-mail): its slots hold that many
    # more attempts, and a claimed attempt waits for one of these turns to send and store
    # its outcome (`Scheduler._turn`); delivery id -> the turn it holds.
    claim_ahead: int = 0
    turns: dict[Priority, Slots] = field(default_factory=lambda: {p: Slots(1) for p in Priority})
    held: dict[int, Slots] = field(default_factory=dict)


class Scheduler:
    def __init__(
        self,
        store: AsyncStore,
        channels: Mapping[str, Channel],
        status: StatusPublisher,
        reply_window: float = 24 * 3600,
        link_down_fallback_after: float = 60.0,
        owner: str | None = None,
    ) -> None:
        self._store = store
        # Several nodes (gateway.cluster): this node's boot id, which its claims must hold;
        # deliveries then come from the shared store (`take`), not from this node's intake.
        self._owner = owner
        self.wake = asyncio.Event()  # the cluster feed looks for work at once
        self._taking: dict[str, int] = {}  # channel -> claimed, not yet in its queue
        self._nodes = 1  # live nodes sharing the channels' rates
        # A delivery with a fallback channel waits this long for a link of its own channel,
        # then fails `link_down` so that its fallback starts (`[jobs] link_down_fallback_after`).
        self.link_down_fallback_after = link_down_fallback_after
        self._no_link_since: dict[int, float] = {}  # delivery id -> first wait for a link
        self._status = status
        self._lanes = {name: _Lane(ch) for name, ch in channels.items()}
        self._jobs: dict[str, Job] = {}
        # Attempts the store claimed with their job (`claims_at_intake`), not started yet:
        # delivery id -> the claim, which `_attempt` takes instead of claiming again.
        self._claimed: dict[int, Change] = {}
        self._closed: set[str] = set()
        self._prepared: dict[tuple[str, str], asyncio.Future[Mapping[str, str]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._dispatchers: list[asyncio.Task[None]] = []
        self._stopping = False
        self.directory = DirectoryConfig()  # [directory]: replies STOP/START, coordinators
        self._reply_window = reply_window
        self.counters: dict[str, int] = {
            "attempts": 0,
            "retries": 0,
            "receipts_unknown": 0,
            "not_sent": 0,
        }
        # The hot path's writes, coalesced: one transaction per batch of attempts.
        writes = WriteBatch(store)
        self._claim = Batched(writes, store.store.claim_batch)
        self._record_sent = Batched(writes, store.store.record_sent_batch)
        self._transition = Batched(
            writes, functools.partial(store.store.many, store.store.transition)
        )
        self._receipts = Batched(writes, store.store.apply_receipts_batch)
        for lane in self._lanes.values():
            self._apply_limits(lane)

    @property
    def enabled(self) -> frozenset[str]:
        return frozenset(self._lanes)

    def _apply_limits(self, lane: _Lane) -> None:
        limits = lane.channel.limits()
        lane.claim_ahead = limits.claim_ahead
        for slots in lane.slots.values():
            slots.resize(limits.concurrency + limits.claim_ahead)
        for turns in lane.turns.values():
            turns.resize(limits.concurrency)
        # Several nodes: a channel's rate (e-mail messages/s, calls/s) is for all together.
        rate = limits.rate / self._nodes
        if rate != lane.rate or lane.limiter is None:
            lane.rate = rate
            lane.limiter = make_limiter(rate)

    def set_nodes(self, nodes: int) -> None:
        """How many live nodes share the channels' rates (gateway.cluster)."""
        if nodes != self._nodes:
            self._nodes = max(1, nodes)
            self.reload_limits()

    def reload_limits(self) -> None:
        for lane in self._lanes.values():
            self._apply_limits(lane)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        if self._owner is not None:
            # The shared store feeds this node (gateway.cluster): what a previous boot of it
            # held is freed by the reaper like a dead node's, not taken back here.
            self._start_dispatchers()
            log.info("scheduler started: fed from the shared store")
            return
        interrupted = await self._store.run(self._store.store.recover_interrupted)
        if interrupted:
            log.warning(
                "%d attempts were in flight when the gateway stopped; they will be retried",
                len(interrupted),
            )
        pending = await self._store.run(self._store.store.pending_deliveries)
        by_job: dict[str, list[tuple[DeliveryRow, Priority]]] = {}
        for row, prio in pending:
            by_job.setdefault(row.job_id, []).append((row, prio))
        for job_id, rows in by_job.items():
            job = await self._job(job_id)
            if job is None:
                continue
            self._spawn(self._enqueue_prepared(job, [r for r, _ in rows]))
        self._start_dispatchers()
        log.info("scheduler started: %d pending deliveries in %d jobs", len(pending), len(by_job))

    def _start_dispatchers(self) -> None:
        for name, lane in self._lanes.items():
            for prio in Priority:
                self._dispatchers.append(
                    asyncio.create_task(
                        self._dispatch(lane, prio), name=f"lane-{name}-{prio.label}"
                    )
                )
        self._dispatchers.append(asyncio.create_task(self._expiry_loop(), name="expiry"))

    async def stop(self, grace: float) -> None:
        """Take no new attempts; let running ones finish for `grace` s, then interrupt them."""
        self._stopping = True
        for task in self._dispatchers:
            task.cancel()
        await asyncio.gather(*self._dispatchers, return_exceptions=True)
        running = [t for lane in self._lanes.values() for t in lane.inflight.values()]
        if running:
            log.info("waiting up to %.0fs for %d attempts in flight", grace, len(running))
            _, still = await asyncio.wait(running, timeout=grace)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._give_back_claims()

    async def _give_back_claims(self) -> None:
        """Attempts claimed with their job but not started go back to `queued`, their attempt
        uncounted: a clean stop does not make them `possibly_sent` at the next start."""
        claimed, self._claimed = list(self._claimed.values()), {}
        for change in await self._give_back(claimed):
            if isinstance(change, Change):
                self._status.delivery(change)

    async def _give_back(self, claimed: list[Change]) -> list[Change | Exception | None]:
        """Claimed attempts never sent go back to `queued`, their attempt uncounted (the
        store's changes). On a store error they stay `sending`: the next start retries them
        as possibly sent."""
        if not claimed:
            return []
        store = self._store.store
        calls = [
            ((c.delivery.id, DeliveryState.QUEUED), {"attempts": c.delivery.attempts - 1})
            for c in claimed
        ]
        try:
            changes = await self._store.run(store.many, store.transition, calls)
        except StoreError:
            log.exception("stopping: %d claimed attempts not given back", len(claimed))
            return []
        return changes

    def claims_at_intake(self, job: Job) -> bool:
        """Whether `job` is stored with its attempts claimed (`StoreContract.add_job`'s
        `claim`): a small hot job whose lanes have room for it at once, on a single node
        (several nodes claim from the shared store, fenced by boot: gateway.cluster).

        A claimed attempt must start soon: it is `sending` until then, and a crash in
        between makes it "possibly sent", as for any claimed attempt."""
        if self._owner is not None or job.priority is not Priority.HOT or self._stopping:
            return False
        per_channel: dict[str, int] = {}
        for r in job.recipients:
            for channel in r.channels:
                per_channel[channel] = per_channel.get(channel, 0) + 1
        if sum(per_channel.values()) > CLAIM_AT_INTAKE:
            return False
        for channel, n in per_channel.items():
            lane = self._lanes.get(channel)
            if lane is None:
                continue  # not enabled: stored failed, never claimed
            slots = lane.slots[Priority.HOT]
            if slots.used + lane.queue.depth()["hot"] + n > slots.size:
                return False
            limiter = lane.limiter
            if limiter is not None and not limiter.has_capacity(n):  # type: ignore[attr-defined]
                return False
        return True

    def queue_depths(self) -> dict[str, dict[str, int]]:
        return {
            name: {
                **lane.queue.depth(),
                "inflight": len(lane.inflight),
                "slots": lane.turns[Priority.COLD].size
                if lane.claim_ahead
                else lane.slots[Priority.COLD].size,
            }
            for name, lane in self._lanes.items()
        }

    def queue_waiting(self) -> dict[str, dict[tuple[str, str], int]]:
        """Per channel `{(priority, state): n}` (for metrics; see `ChannelQueue.waiting`)."""
        return {name: lane.queue.waiting() for name, lane in self._lanes.items()}

    # -- several nodes (gateway.cluster) -------------------------------------------------
    def room(self, channel: str, batch: int) -> tuple[int, int]:
        """How many more deliveries of `channel` this node should claim: (any priority,
        hot only). What it holds ready, in flight or being queued counts against `batch`."""
        lane = self._lanes[channel]
        depth = lane.queue.depth()
        busy = len(lane.inflight) + self._taking.get(channel, 0)
        return (
            batch - busy - depth["hot"] - depth["cold"],
            batch - busy - depth["hot"],
        )

    async def take(self, rows: Sequence[tuple[DeliveryRow, Priority]]) -> None:
        """Queue deliveries this node claimed from the shared store."""
        by_job: dict[str, list[DeliveryRow]] = {}
        for row, _ in rows:
            by_job.setdefault(row.job_id, []).append(row)
        for job_id, job_rows in by_job.items():
            job = await self._job(job_id)
            if job is None:
                continue
            channel = job_rows[0].channel
            self._taking[channel] = self._taking.get(channel, 0) + len(job_rows)
            self._spawn(self._take_job(job, channel, job_rows))

    async def _take_job(self, job: Job, channel: str, rows: list[DeliveryRow]) -> None:
        try:
            await self._prepare_and_push(job, channel, rows)
        finally:
            self._taking[channel] -= len(rows)

    def reaped(self, rows: Sequence[DeliveryRow]) -> None:
        """A dead node's attempts in flight were made `retrying` (by this node's reaper)."""
        for row in rows:
            self._status.delivery(Change(row, DeliveryState.SENDING))

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- jobs ---------------------------------------------------------------------------
    async def _job(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None:
            job = await self._store.run(self._store.store.job, job_id)
            if job is not None:
                self._jobs[job_id] = job
        return job

    async def job_accepted(self, job: Job, rows: list[DeliveryRow]) -> None:
        """A new job is in the store: announce its deliveries and queue them."""
        self._jobs[job.id] = job
        # Held ones (a member's quiet hours) are queued for when they end.
        queued = [r for r in rows if r.state in _WAITING]
        # Each delivery is announced (`queued`) before its attempt can start. Announcing takes
        # a while for a large job (an event and a log line each: 1.6 s for 10,000 members), so
        # it goes in chunks, each released to its lane once announced, with a turn of the loop
        # between them: the first e-mail of a large alert does not wait for the last member's
        # announcement. A small job is one chunk, queued as soon as this coroutine yields.
        for start in range(0, len(rows), ANNOUNCE_CHUNK):
            chunk = rows[start : start + ANNOUNCE_CHUNK]
            for row in chunk:
                if row.state is DeliveryState.SENDING:
                    # Claimed by the store with its job: announced `queued` like the others,
                    # its claim published when its attempt starts.
                    self._claimed[row.id] = Change(row, DeliveryState.QUEUED)
                    row = dataclasses.replace(  # noqa: PLW2901
                        row, state=DeliveryState.QUEUED, attempts=row.attempts - 1
                    )
                self._status.delivery(Change(row, DeliveryState.QUEUED))
            ready = [
                r
                for r in chunk
                if r.state in _WAITING
                and not (r.state is DeliveryState.SENDING and self._start_claimed(job, r))
            ]
            if ready:  # chunks share the job's one preparation and queue in order
                self._spawn(self._enqueue_prepared(job, ready))
            if start == 0:
                # After the attempts started above: theirs is the loop's next turn.
                self._status.job_dirty(job.id, immediate=True)
            if start + ANNOUNCE_CHUNK < len(rows):
                await asyncio.sleep(0)
        if not rows:
            self._status.job_dirty(job.id, immediate=True)
        for row in rows:
            if row.state is DeliveryState.FAILED:
                await self._after_final(row, job)
        if not queued:
            finished = await self._store.run(self._store.store.transition_job_if_done, job.id)
            if finished:
                self._status.job_dirty(job.id, immediate=True)

    def _start_claimed(self, job: Job, row: DeliveryRow) -> bool:
        """Start the attempt of a delivery claimed with its job now, if its lane would:
        a free slot, no rate to wait for, nothing of its priority ahead of it. It then
        skips the queue, a turn of the loop for the dispatcher and another for the task
        that prepares the job (the attempt prepares it: `_attempt`)."""
        lane = self._lanes.get(row.channel)
        if lane is None or lane.limiter is not None or self._stopping:
            return False
        if lane.queue.depth()[job.priority.label] or not lane.slots[job.priority].try_acquire():
            return False
        self._start(lane, job.priority, row.id, job.id)
        return True

    async def _enqueue_prepared(self, job: Job, rows: list[DeliveryRow]) -> None:
        if self._owner is not None:
            # Several nodes: every node's feed claims them from the shared store (`take`).
            self.wake.set()
            return
        by_channel: dict[str, list[DeliveryRow]] = {}
        for row in rows:
            by_channel.setdefault(row.channel, []).append(row)
        if len(by_channel) == 1:  # the usual case, without gather's extra task
            ((channel, channel_rows),) = by_channel.items()
            await self._prepare_and_push(job, channel, channel_rows)
            return
        await asyncio.gather(
            *(self._prepare_and_push(job, ch, rs) for ch, rs in by_channel.items())
        )

    async def _prepare_and_push(self, job: Job, channel: str, rows: list[DeliveryRow]) -> None:
        lane = self._lanes.get(channel)
        if lane is None:
            return
        failures = await self._prepare(job, channel)
        for row in rows:
            if row.lang in failures:
                await self._unprepared(row, failures[row.lang])
                continue
            lane.queue.push(job.priority, row.id, job.id, row.next_attempt_at)

    async def _unprepared(self, row: DeliveryRow, reason: str) -> None:
        """The channel cannot serve the delivery's language (e.g. tts_failed): it fails,
        without an attempt (one claimed with its job gives it back)."""
        claim = self._claimed.pop(row.id, None)
        fields = {} if claim is None else {"attempts": claim.delivery.attempts - 1}
        change = await self._store.run(
            self._store.store.transition, row.id, DeliveryState.FAILED, last_error=reason, **fields
        )
        if change is not None:
            await self._changed(change)

    async def _prepare(self, job: Job, channel: str) -> Mapping[str, str]:
        """Prepare once per job and channel; later callers share the first one's result.

        The first caller runs the preparation itself rather than in a task of its own: for
        most channels it returns at once, and a task would cost the alert a turn of the
        event loop (behind whatever else is ready) before its first attempt."""
        key = (job.id, channel)
        shared = self._prepared.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        shared = asyncio.get_running_loop().create_future()
        self._prepared[key] = shared
        try:
            result = await self._lanes[channel].channel.prepare(job)
        except asyncio.CancelledError:
            self._prepared.pop(key, None)
            shared.cancel()
            raise
        except Exception as exc:
            log.exception("preparing job %s for %s failed", job.id, channel)
            result = dict.fromkeys(job.languages, f"prepare_failed: {type(exc).__name__}")
        shared.set_result(result)
        return result

    async def close_job(self, job_id: str, state: JobState, reason: str) -> bool:
        """Cancel or expire: stop everything of the job that has not happened yet."""
        if job_id in self._closed:
            return False
        self._closed.add(job_id)
        dstate = DeliveryState.CANCELLED if state is JobState.CANCELLED else DeliveryState.EXPIRED
        changes = await self._store.run(self._store.store.close_job, job_id, state, dstate, reason)
        self._cancel_inflight(c.delivery.id for c in changes)
        for change in changes:
            self._status.delivery(change)
        self._status.job_dirty(job_id, immediate=True)
        self._forget(job_id)
        return True

    def _forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        for key in [k for k in self._prepared if k[0] == job_id]:
            del self._prepared[key]

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for row in await self._store.run(self._store.store.active_jobs):
                if row.expires_at <= now and row.id not in self._closed:
                    log.info("job %s expired", row.id)
                    await self.close_job(row.id, JobState.EXPIRED, "expired")
            await self._end_receipt_waits(now)
            if self._owner is not None:
                for change in await self._store.run(self._store.store.match_orphan_receipts):
                    await self._changed(change)
                await self._finish_shared_jobs()

    async def _finish_shared_jobs(self) -> None:
        """Several nodes: two nodes closing a job's last deliveries at once each still see
        the other's open (uncommitted) and neither ends the job; this sweep does."""
        for row in await self._store.run(self._store.store.active_jobs):
            if row.id in self._closed:
                continue
            finished = await self._store.run(self._store.store.transition_job_if_done, row.id)
            if finished is not None:
                self._status.job_dirty(row.id, immediate=True)
                self._forget(row.id)

    async def _end_receipt_waits(self, now: float) -> None:
        """A job whose only open deliveries are `sent` for longer than their channel's
        receipt wait is done: those members stay `sent` (a late receipt still applies)."""
        waits: dict[str, float] = {}
        for name, lane in self._lanes.items():
            wait = lane.channel.limits().receipt_wait
            if wait is not None:
                waits[name] = wait
        if not waits:
            return
        done = await self._store.run(self._store.store.finish_receipt_waits, waits, now)
        for job_id, unreceipted in done:
            log.info("job %s done: %d deliveries sent without a receipt", job_id, unreceipted)
            self._status.job_dirty(job_id, immediate=True)
            self._forget(job_id)

    # -- dispatch -----------------------------------------------------------------------
    async def _dispatch(self, lane: _Lane, priority: Priority) -> None:
        """Feed one priority's attempts into the channel (one loop per lane and priority)."""
        slots = lane.slots[priority]
        while True:
            await slots.acquire()
            try:
                if lane.limiter is not None:
                    await lane.limiter.acquire()  # type: ignore[attr-defined]
                item = await lane.queue.pop(priority)
            except BaseException:
                slots.release()
                raise
            if item.job_id in self._closed:
                self._claimed.pop(item.delivery_id, None)
                slots.release()
                continue
            self._start(lane, priority, item.delivery_id, item.job_id)

    def _start(self, lane: _Lane, priority: Priority, delivery_id: int, job_id: str) -> None:
        """Run an attempt in a task of its own, holding a slot of `priority` until it ends."""
        task = asyncio.create_task(self._attempt(lane, delivery_id, job_id))
        lane.inflight[delivery_id] = task

        def done(_: asyncio.Task[None]) -> None:
            lane.inflight.pop(delivery_id, None)
            lane.slots[priority].release()
            turn = lane.held.pop(delivery_id, None)
            if turn is not None:
                turn.release()

        task.add_done_callback(done)

    async def _attempt(self, lane: _Lane, delivery_id: int, job_id: str) -> None:
        store = self._store.store
        job = self._jobs.get(job_id)  # the usual case: known, without a coroutine per attempt
        if job is None:
            job = await self._job(job_id)
        claimed = self._claimed.get(delivery_id)
        if claimed is not None and job is not None:
            # Started with its job (`_start_claimed`): prepared here. The claim stays listed
            # meanwhile (given back if the gateway stops now, dropped if the job closes).
            row = claimed.delivery
            failure = (await self._prepare(job, row.channel)).get(row.lang)
            if failure is not None:
                await self._unprepared(row, failure)
                return
        claim = self._claimed.pop(delivery_id, None) or await (
            self._claim(delivery_id)
            if self._owner is None
            else self._claim(delivery_id, self._owner)
        )
        if claim is None or job is None:
            return
        if lane.claim_ahead:
            await self._turn(lane, job.priority, claim)
        self._status.delivery(claim)
        d = claim.delivery
        if job.expires_at.timestamp() <= time.time():
            await self.close_job(job_id, JobState.EXPIRED, "expired")
            return
        assert d.address is not None
        attempt = Attempt(
            delivery_id=d.id,
            job_id=job.id,
            channel=d.channel,
            ref=d.ref,
            address=d.address,
            lang=d.lang,
            # Voice speaks the code word itself (voice/compose.py); SMS and e-mail write it.
            text=compose_text(
                job.message,
                d.lang,
                test=job.test,
                code_word=job_code_word(job.options) if d.channel != "voice" else None,
            ),
            subject=compose_subject(job.subject, d.lang, test=job.test),
            priority=job.priority,
            number=d.attempts,
            expires_at=job.expires_at,
            test=job.test,
            options=job.options,
            previous_provider_ids=d.provider_ids if d.possibly_sent else (),
            interrupted=d.last_error == "interrupted",
        )
        self.counters["attempts"] += 1
        try:
            outcome = await lane.channel.send(attempt)
            self._no_link_since.pop(d.id, None)
        except NotSent as exc:
            await self._not_sent(lane, d, job, exc)
            return
        except asyncio.CancelledError:
            if self._stopping:
                # Persist the interruption so the next start retries it (possibly sent).
                change = await self._store.run(
                    store.transition,
                    d.id,
                    DeliveryState.RETRYING,
                    last_error="interrupted",
                    possibly_sent=1,
                    next_attempt_at=None,
                )
                if change is not None:
                    self._status.delivery(change)
            raise
        except TemporaryError as exc:
            self._no_link_since.pop(d.id, None)
            await self._temporary(lane, d, job, exc)
        except PermanentError as exc:
            self._no_link_since.pop(d.id, None)
            await self._fail(d, exc.reason)
        except Exception as exc:
            log.exception("channel %s crashed on delivery %d", d.channel, d.id)
            await self._temporary(
                lane, d, job, TemporaryError("internal_error", type(exc).__name__)
            )
        else:
            await self._succeeded(d, outcome)

    async def _turn(self, lane: _Lane, priority: Priority, claim: Change) -> None:
        """A claimed attempt of a lane that claims ahead waits for a turn to send and store
        its outcome (released when its task ends, `_start`): at most `concurrency` attempts
        are sent and not yet recorded, whatever was claimed ahead of them."""
        turns = lane.turns[priority]
        try:
            await turns.acquire()
        except asyncio.CancelledError:
            if self._stopping:
                # Never sent nor published `sending`: back to `queued`, not "possibly sent"
                # at the next start (its change unpublished, as its claim was).
                await self._give_back([claim])
            raise
        lane.held[claim.delivery.id] = turns

    async def _succeeded(self, d: DeliveryRow, outcome: Outcome) -> None:
        changes = await self._record_sent(
            d.id,
            outcome.state,
            d.channel,
            outcome.provider_ids,
            outcome.detail,
        )
        for change in changes:
            await self._changed(change)

    async def _temporary(self, lane: _Lane, d: DeliveryRow, job: Job, exc: TemporaryError) -> None:
        policy = lane.channel.limits().retry
        if isinstance(exc, NotSent):
            await self._not_sent(lane, d, job, exc)
            return
        if d.attempts >= policy.max_attempts:
            await self._fail(d, exc.reason, detail=f"gave up after {d.attempts} attempts")
            return
        delay = exc.retry_after if exc.retry_after is not None else policy.delay(d.attempts)
        due = time.time() + delay
        possibly_sent = 1 if exc.reason == "possibly_sent" else int(d.possibly_sent)
        change = await self._transition(
            d.id,
            DeliveryState.RETRYING,
            last_error=exc.reason,
            next_attempt_at=due,
            possibly_sent=possibly_sent,
        )
        if change is None:
            return
        self.counters["retries"] += 1
        self._status.delivery(change)
        log.info("delivery %d retry at %s (%s)", d.id, iso(due), exc.reason)
        lane.queue.push(job.priority, d.id, job.id, due)

    async def _not_sent(self, lane: _Lane, d: DeliveryRow, job: Job, exc: NotSent) -> None:
        """The attempt never reached the provider (no link): it gives back the attempt the
        claim counted and waits for a link, in its priority's turn, until the job expires —
        or, when the job gives this channel a fallback, until `link_down_fallback_after`."""
        now = time.time()
        since = self._no_link_since.setdefault(d.id, now)
        if d.channel in job.fallback and now - since >= self.link_down_fallback_after:
            self._no_link_since.pop(d.id, None)
            await self._fail(d, exc.reason, detail=f"no {d.channel} link for {now - since:.0f} s")
            return
        delay = max(NOT_SENT_MIN_DELAY, exc.retry_after or 0.0)
        due = now + delay
        change = await self._transition(
            d.id,
            DeliveryState.RETRYING,
            last_error=exc.reason,
            next_attempt_at=due,
            attempts=max(0, d.attempts - 1),
        )
        if change is None:
            return
        self.counters["not_sent"] += 1
        self._status.delivery(change)
        log.debug("delivery %d not sent (%s): again at %s", d.id, exc.reason, iso(due))
        lane.queue.push(job.priority, d.id, job.id, due)

    async def _fail(self, d: DeliveryRow, reason: str, detail: str | None = None) -> None:
        change = await self._transition(
            d.id, DeliveryState.FAILED, last_error=reason, detail=detail
        )
        if change is not None:
            await self._changed(change)

    async def _changed(self, change: Change) -> None:
        """Publish a change and apply what follows from it (fallback, member ack, job end)."""
        self._status.delivery(change)
        d = change.delivery
        if d.state is DeliveryState.ACKNOWLEDGED:
            others = await self._store.run(
                self._store.store.acknowledge_member, d.job_id, d.rindex, d.id
            )
            for other in others:
                self._cancel_inflight([other.delivery.id])
                self._status.delivery(other)
        elif d.state is DeliveryState.FAILED:
            job = await self._job(d.job_id)
            if job is not None:
                await self._after_final(d, job)
        if change.job_finished is not None:
            self._forget(d.job_id)

    def _cancel_inflight(self, ids: Iterable[int]) -> None:
        """Stop the attempts of deliveries the store just closed (cancelled): running, or
        claimed with their job and still waiting for their turn."""
        ids = list(ids)
        for did in ids:
            self._claimed.pop(did, None)
        for lane in self._lanes.values():
            for did in ids:
                task = lane.inflight.get(did)
                if task is not None:
                    task.cancel()

    async def _after_final(self, d: DeliveryRow, job: Job) -> None:
        target = job.fallback.get(d.channel)
        if target is None or d.state is not DeliveryState.FAILED or target not in self._lanes:
            return
        row = await self._store.run(self._store.store.add_fallback, d.id, target, self.enabled)
        if row is None:
            return
        log.info("delivery %d failed (%s): falling back to %s", d.id, d.last_error, target)
        self._status.delivery(Change(row, DeliveryState.QUEUED))
        if row.state is DeliveryState.QUEUED:
            if self._owner is not None:
                self.wake.set()  # claimed from the shared store like any delivery
            else:
                self._spawn(self._prepare_and_push(job, target, [row]))

    # -- late news from channels ------------------------------------------------------
    async def reports(self, reports: Sequence[Report]) -> None:
        """Apply late news; receipts in one store transaction (an SMSC sends thousands/s)."""
        receipts = [r for r in reports if isinstance(r, Receipt)]
        if receipts:
            results = await self._receipts(
                [(r.channel, r.provider_id, r.state, r.reason) for r in receipts]
            )
            for receipt, (known, change) in zip(receipts, results, strict=True):
                if not known:
                    self.counters["receipts_unknown"] += 1
                    log.info("receipt for unknown %s id kept for later matching", receipt.channel)
                if change is not None:
                    await self._changed(change)
        for r in reports:
            if isinstance(r, Reply):
                await self._reply(r)

    async def _reply(self, reply: Reply) -> None:
        since = time.time() - self._reply_window
        rows = await self._store.run(self._store.store.find_member_by_phone, reply.sender, since)
        match = _acknowledgeable(rows, reply.channel)
        self._status.inbound(
            {
                "channel": reply.channel,
                "from": match.masked if match else mask_phone(reply.sender),
                "job_id": match.job_id if match else None,
                "ref": match.ref if match else None,
                "text": scrub(reply.text),  # a number or address in it is masked too
                "acknowledges": reply.acknowledges,
                "time": iso(time.time()),
            }
        )
        word = keyword(reply.text) if reply.channel == "sms" else None
        if word is not None or not reply.acknowledges:
            # STOP / START, or words for the PLP's coordinators: for directory members.
            await self._member_reply(reply, word)
            return
        if match is None:
            return
        change = await self._store.run(
            self._store.store.transition,
            match.id,
            DeliveryState.ACKNOWLEDGED,
            detail="reply",
        )
        if change is not None:
            await self._changed(change)

    async def _member_reply(self, reply: Reply, word: Literal["stop", "start"] | None) -> None:
        store = self._store.store
        members = await self._store.run(store.find_members, None, reply.sender)
        now = datetime.now(UTC)
        jobs: list[Job] = []
        for m in members:
            if word is not None:
                await self._store.run(store.set_cold_unsubscribed, m.plp, m.ref, word == "stop")
                log.info("member %s of %s replied %s", m.ref, m.plp, word.upper())
            else:
                plp = await self._store.run(store.plp, m.plp)
                forwarded = (
                    None
                    if plp is None
                    else forward(plp, m, reply.text, self.directory.coordinator_sms, now)
                )
                if forwarded is not None:
                    log.info("reply of member %s forwarded to the coordinators of %s", m.ref, m.plp)
                    jobs.append(forwarded)
        if word is not None and members:
            jobs.append(confirmation(members[0], word, now))  # one SMS, in their language
        for job in jobs:
            result, rows = await self._store.run(store.add_job, job, job.id, self.enabled)
            if result is AddResult.NEW:
                await self.job_accepted(job, rows)


def _acknowledgeable(rows: Sequence[DeliveryRow], channel: str) -> DeliveryRow | None:
    """The delivery a reply acknowledges: the member's newest job, preferably the reply's
    own channel, and one that can become acknowledged (a voice call waiting for its retry
    cannot; the member's SMS delivery of the same job can, and that cancels the call)."""
    if not rows:
        return None
    newest = rows[0]
    same = [r for r in rows if (r.job_id, r.rindex) == (newest.job_id, newest.rindex)]
    ok = [r for r in same if can_transition(r.state, DeliveryState.ACKNOWLEDGED)]
    ok.sort(key=lambda r: r.channel != channel)  # stable: newest first within each group
    return ok[0] if ok else newest


__all__ = ["Scheduler"]
