"""MQTT intake: jobs and cancels in, each acknowledged to the broker only once stored.

Bad input never raises out of here: it becomes a machine-readable error on
`<prefix>/jobs/rejected`, and the daemon keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import ParamSpec, Protocol, TypeVar

import aiomqtt

from . import allocator, directory_sync, frozen, gc_tuning
from .async_store import AsyncStore
from .choices import DirectoryConfig, add_job_choosing, add_members_choosing
from .config import JobsConfig
from .directory import Member, followed_members
from .domain import Job, JobState, Recipient
from .errors import StoreError
from .job_id import valid_job_id
from .jobs import (
    JobErrorItem,
    JobIn,
    JobRejected,
    Resolved,
    job_header,
    member_count,
    members,
    one_line,
    read_job,
    release_members,
    validate_and_hash,
    wants_store,
)
from .numbers import NumberPolicy
from .payload import display
from .privacy import scrub
from .rows import AddResult, DeliveryRow, job_to_body, member_json
from .scheduler import CLAIM_AT_INTAKE, Scheduler
from .signing import CancelRequest, SeenNonce, SignatureError, Verifier, parse_cancel
from .status import StatusPublisher, Topics

P = ParamSpec("P")
T = TypeVar("T")

INLINE_PARSE_BYTES = 8 * 1024  # ~50 recipients: about 1 ms of validation on the loop
INLINE_MEMBERS = 50  # numbers parsed on the loop (~1 ms), more in a thread
# A larger job is stored in chunks, each sent as soon as it is stored: a small first one for
# the first SMS within a fraction of a second, then chunks large enough to amortise a commit.
CHUNK_MEMBERS = 2_000
FIRST_CHUNK = 50
SECOND_CHUNK = 200
PHONE_REGION = "BE"

log = logging.getLogger("gateway.intake")

Ack = Callable[[aiomqtt.Message], None]


class PayloadCheck(Protocol):
    """Authenticity check before parsing (gateway.signing.Verifier)."""

    def reads(self, payload: bytes) -> bool:
        """False when `check` would return the payload as it is: it is then not called."""
        ...

    def check(self, payload: bytes) -> bytes:
        """Return the payload to parse, or raise SignatureError (or JobRejected)."""
        ...

    def discard(self, payload: bytes) -> None:
        """A checked payload was not stored (store failure): it will come again."""
        ...

    def check_cancel(self, payload: bytes, job_id: str) -> CancelRequest:
        """Return the cancel to apply to `job_id`, or raise SignatureError."""
        ...

    def take_unsaved(self) -> list[SeenNonce]:
        """What proves a payload was seen (nonces), not yet in the store."""
        ...


class Intake:
    def __init__(
        self,
        store: AsyncStore,
        scheduler: Scheduler,
        status: StatusPublisher,
        topics: Topics,
        limits: JobsConfig,
        ack: Ack,
        check: PayloadCheck | None = None,
        numbers: Mapping[str, NumberPolicy] | None = None,
    ) -> None:
        self._store = store
        self._scheduler = scheduler
        self._status = status
        self._topics = topics
        self.limits = limits
        self._ack = ack
        self.check = check
        self.numbers = numbers or {}  # each phone channel's number policy (reloadable)
        self.directory = DirectoryConfig()  # [directory]: members' choices (reloadable)
        self.counters = {"accepted": 0, "duplicates": 0, "rejected": 0, "cancels": 0}

    async def handle(self, message: aiomqtt.Message, ack: Ack | None = None) -> None:
        """Store (or reject) a job or a cancel, then acknowledge it (`ack`: on another
        connection than the node's own, gateway.adoption)."""
        topic = str(message.topic)
        payload = (
            message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        )
        try:
            if topic == self._topics.jobs:
                await self._job(payload)
            else:
                job_id = self._topics.cancel_job_id(topic)
                plp_id = self._topics.directory_plp(topic)
                if plp_id is not None:
                    await self._directory_sync(plp_id, payload)
                elif job_id is not None and not valid_job_id(job_id):
                    # No job can have it: answered without a look in the store.
                    error = JobErrorItem("topic", "invalid_format", "the job id breaks the id rule")
                    self._reject([error], None, topic)
                elif job_id is not None:
                    await self._cancel(job_id, payload, topic, message.retain)
        except StoreError:
            # Not acknowledged: the broker delivers it again on the next session.
            log.exception("store failure while handling a message on %s", display(topic))
            raise
        except Exception:
            log.exception("unexpected error while handling a message on %s", display(topic))
            self._reject(
                [JobErrorItem("$", "internal_error", "the gateway failed on it")], None, topic
            )
        if self.check is not None:
            # Nonces are stored before the broker's acknowledgement: a replay must be refused
            # after a restart too (the store keeps them for the replay window).
            seen = self.check.take_unsaved()
            if seen:
                await self._store.run(self._store.store.remember_nonces, seen)
        (ack or self._ack)(message)

    def _reject(
        self, errors: list[JobErrorItem], job_id: str | None, topic: str, total: int = 0
    ) -> None:
        self.counters["rejected"] += 1
        # Both come from outside: an id that breaks the id rule is not repeated, a topic
        # (a cancel's) is escaped, so that neither can forge a log line or a terminal.
        job_id = job_id if valid_job_id(job_id) else None
        topic = display(topic, 300)
        log.warning(
            "rejected payload on %s (job %s): %s",
            topic,
            job_id or "-",
            ", ".join(f"{e.path} {e.code}" for e in errors[:5]),
        )
        total = max(total, len(errors))
        self._status.rejected([e.as_dict() for e in errors], job_id, topic, total)

    async def _job(self, payload: bytes) -> None:
        topic = self._topics.jobs
        log.debug("job payload received (%d bytes)", len(payload))
        received = payload
        resolved: Resolved | None = None
        try:
            size = len(payload)
            if (
                self.check is not None
                and size <= self.limits.max_payload_bytes
                and self.check.reads(payload)
            ):
                # (An oversize payload is left to the parser's size check, unread; so is an
                # unsigned one where signatures are not required: two parses of a 10 MB job
                # fewer, 0.24 s of CPU before its first chunk.)
                # Read within bounds first: the check parses the payload too.
                await _sized(size, read_job, payload, self.limits)
                payload = await _sized(size, self.check.check, payload)
            resolved = await self._resolve(payload)
            now = datetime.now(UTC)
            spec, digest = await _sized(
                size,
                validate_and_hash,
                payload,
                self.limits,
                self._scheduler.enabled,
                now,
                resolved,
            )
        except SignatureError as exc:
            # Unauthenticated: nothing is written under the job's own topics (a forger must not
            # be able to set the status of a job id), only the rejection.
            self._reject([JobErrorItem("sig", exc.reason, exc.detail)], exc.job_id, topic)
            return
        except JobRejected as rej:
            self._reject(rej.errors, rej.job_id, topic, rej.total)
            if rej.job_id is not None:
                known = await self._store.run(self._store.store.job_row, rej.job_id)
                if known is None:  # never overwrite the status of a job that was accepted
                    self._status.job_rejected(rej.job_id)
            return
        started = time.perf_counter()
        resolved = resolved or Resolved()
        header = job_header(spec, self.limits, now, resolved)
        # The job's own recipients, then its audience's members (or a follow-up's members).
        total = member_count(spec, resolved)
        if total > CHUNK_MEMBERS:
            gc_tuning.set_aside()  # its members' models, never walked by the collector
        try:
            # A fallback delivery is made from the member in the job's body, which a chunked
            # job has only once complete: a job with fallbacks is stored in one transaction.
            # (An audience's or a follow-up's members are frozen with the header: a resumed
            # intake takes them from there, gateway.frozen.)
            if total <= CHUNK_MEMBERS or spec.fallback:
                chunk = await self._members(spec, resolved, 0, total)
                job = replace(header, recipients=tuple(chunk))
                # A small hot job is stored with its attempts claimed, on the loop when the
                # store allows it: its first send waits for one commit, nothing else. (Not
                # an audience's: its members' choices apply to its deliveries.)
                claim = resolved.audience is None and self._scheduler.claims_at_intake(job)
                run = self._store.run_now if claim else self._store.run
                result, rows = await run(
                    add_job_choosing,
                    self._store.store,
                    job,
                    digest,
                    self._scheduler.enabled,
                    _chosen(resolved),
                    self.directory,
                    datetime.now(UTC),
                    claim=claim,
                )
            else:
                job, rows = header, []
                result = await self._in_chunks(header, spec, resolved, digest)
        except StoreError:
            if self.check is not None:
                self.check.discard(received)
            raise
        if result is AddResult.CONFLICT:
            self._reject(
                [
                    JobErrorItem(
                        "$.id",
                        "duplicate_id",
                        "another job with this id was accepted before; the first stands",
                    )
                ],
                job.id,
                topic,
            )
            return
        if result is AddResult.DUPLICATE:
            self.counters["duplicates"] += 1
            log.info("job %s received again: already known, not run twice", job.id)
            self._status.job_dirty(job.id, immediate=True)
            return
        self.counters["accepted"] += 1
        log.info(
            "job %s accepted: priority=%s test=%s recipients=%d stored in %.1f ms",
            job.id,
            job.priority.label,
            job.test,
            total,
            (time.perf_counter() - started) * 1000,
        )
        if rows:
            await self._scheduler.job_accepted(job, rows)

    async def _members(
        self, spec: JobIn, resolved: Resolved, start: int, stop: int
    ) -> list[Recipient]:
        """Members `start` to `stop` as domain recipients: off the loop when there are many
        numbers to parse (~17 us each) or many directory members (~3 us each, none parsed)."""
        parsed = min(stop, len(spec.recipients)) - start
        if parsed <= INLINE_MEMBERS and stop - start <= FIRST_CHUNK:
            return members(spec, start, stop, PHONE_REGION, self.numbers, resolved)
        return await asyncio.to_thread(
            members, spec, start, stop, PHONE_REGION, self.numbers, resolved
        )

    async def _in_chunks(
        self, header: Job, spec: JobIn, resolved: Resolved, digest: str
    ) -> AddResult:
        """Store a large job in chunks, each handed to the scheduler once it is stored: the
        first members are being sent while the rest are read. The job is complete (and the
        broker acknowledged, by the caller) after the last chunk; a redelivery after a crash
        mid-way resumes after the members already stored, none lost or doubled."""
        store = self._store.store
        # The header and the first chunk in one durable transaction, a hot job's first
        # attempts claimed in it: the first SMS waits for one commit, not three (header,
        # chunk, claims). A resumed intake stores none of them: it goes on from the store.
        first = await self._members(spec, resolved, 0, FIRST_CHUNK)
        claim = self._claimable(header, first, resolved)
        now = datetime.now(UTC)

        def begin() -> tuple[frozen.Begun, list[DeliveryRow]]:
            begun = frozen.begin_job(store, header, digest, spec, resolved)
            if begun.result is not AddResult.NEW or begun.stored:
                return begun, []
            rows = add_members_choosing(
                store,
                header,
                first,
                self._scheduler.enabled,
                None,
                _chosen(resolved),
                self.directory,
                now,
                claim=claim,
            )
            return begun, rows

        begun, first_rows = await self._store.run(store.atomically, begin, True)
        result, stored, header, resolved = begun.result, begun.stored, begun.header, begun.resolved
        if result is not AddResult.NEW:
            return result
        if stored:
            log.info("job %s: resuming its intake after %d stored members", header.id, stored)
        total = member_count(spec, resolved)
        # Compact, for the job's body (a fallback needs a member's other addresses): one
        # string per chunk (`job_to_body` joins them as members), not one per member.
        bodies: list[str] = []
        start, size = 0, FIRST_CHUNK
        while start < total:
            stop = min(start + size, total)
            with_header = start == 0 and not stored  # the first chunk, stored with the header
            chunk = first if with_header else await self._members(spec, resolved, start, stop)
            release_members(spec, start, stop)
            bodies.append(",".join([member_json(r) for r in chunk]))
            new = [r for r in chunk if r.index >= stored]
            body = job_to_body(header, bodies) if stop == total else None
            if body is not None:
                bodies.clear()  # in the body now: not held twice while it is stored
            rows = first_rows if with_header else []
            if not with_header and (new or body is not None):
                rows = await self._store.run(
                    add_members_choosing,
                    store,
                    header,
                    new,
                    self._scheduler.enabled,
                    body,
                    _chosen(resolved),
                    self.directory,
                    datetime.now(UTC),
                )
            if with_header or new or body is not None:
                log.debug("job %s: members %d to %d stored", header.id, start, stop - 1)
            if rows:
                await self._scheduler.job_accepted(header, rows)
            body = None  # stored: freed before the heap is trimmed below
            # The second chunk small too: the first attempts' claims go to the store's one
            # thread while it is written, and must not wait behind a 2,000-member insert.
            start, size = stop, (SECOND_CHUNK if start == 0 else CHUNK_MEMBERS)
        if await self._store.run(store.transition_job_if_done, header.id):
            self._status.job_dirty(header.id, immediate=True)
        await asyncio.to_thread(allocator.release_free_memory)  # what the intake freed
        return result

    def _claimable(self, header: Job, first: list[Recipient], resolved: Resolved) -> int:
        """How many of a large job's first members are stored with their attempts claimed:
        at most as many as a small hot job's (`Scheduler.claims_at_intake`), none for an
        audience's (its members' choices apply to its deliveries)."""
        if resolved.audience is not None:
            return 0
        lead: list[Recipient] = []
        deliveries = 0
        for r in first:
            deliveries += len(r.channels)
            if deliveries > CLAIM_AT_INTAKE:
                break
            lead.append(r)
        # As many as its lanes have room for now (a narrow lane: fewer).
        while lead and not self._scheduler.claims_at_intake(
            replace(header, recipients=tuple(lead))
        ):
            lead.pop()
        return len(lead)

    async def _resolve(self, payload: bytes) -> Resolved | None:
        """What the store knows of the job's audience (the directory's members, frozen into
        the job now) and of the job it follows; None for a job that names neither."""
        if b'"audience"' not in payload and b'"follows"' not in payload:
            return None  # the usual job: not read twice
        if len(payload) > self.limits.max_payload_bytes:
            return None  # refused unread by the parser
        asked, follows = wants_store(read_job(payload, self.limits))
        store = self._store.store
        audience = followed = options = None
        if asked is not None:
            audience = await self._store.run(store.resolve_audience, *asked)
        if follows is not None:
            followed, options = await self._store.run(followed_members, store, follows)
        return Resolved(audience, followed, options)

    async def _directory_sync(self, plp_id: str, payload: bytes) -> None:
        """A signed member list from the central database (gateway.directory_sync)."""
        if not directory_sync.valid_plp(plp_id) or not isinstance(self.check, Verifier):
            result = {"plp": None, "ok": False, "error": "invalid PLP id or no signing keys"}
            if directory_sync.valid_plp(plp_id):
                self._status.directory_result(plp_id, {**result, "plp": plp_id})
            log.warning("directory sync on %s refused", display(plp_id, 80))
            return
        try:
            sync = directory_sync.check(self.check, payload, plp_id, self.limits.max_recipients)
        except SignatureError as exc:
            log.warning("directory sync for %s refused: %s", plp_id, exc.reason)
            self._status.directory_result(plp_id, {"plp": plp_id, "ok": False, "error": exc.reason})
            return
        result = await self._store.run(directory_sync.apply, self._store.store, sync, self.numbers)
        log.info(
            "directory sync for %s: %s",
            plp_id,
            ", ".join(f"{k}={result.get(k)}" for k in ("ok", "added", "updated", "removed")),
        )
        self._status.directory_result(plp_id, result)

    async def _cancel(self, job_id: str, payload: bytes, topic: str, retained: bool) -> None:
        if retained:
            # The broker replays a retained cancel to every new subscription, long after it
            # was published: it could cancel a job that did not exist yet. Never applied.
            self._reject(
                [JobErrorItem("$", "retained_cancel", "a retained cancel is ignored")],
                job_id,
                topic,
            )
            return
        try:
            request = (
                parse_cancel(payload)
                if self.check is None
                else self.check.check_cancel(payload, job_id)
            )
        except SignatureError as exc:
            self._reject([JobErrorItem(exc.path, exc.reason, exc.detail)], job_id, topic)
            return
        reason = "cancelled"
        if request.reason is not None:
            # Free text from dispatch goes to the store and MQTT: no numbers in it.
            reason = f"cancelled: {scrub(one_line(request.reason[:200]))}"
        try:
            row = await self._store.run(self._store.store.job_row, job_id)
        except StoreError:
            if self.check is not None:
                self.check.discard(payload)
            raise
        if row is None:
            # Only a stored job can be cancelled: a cancel never waits for its job.
            self._reject([JobErrorItem("$", "unknown_job", f"no job {job_id}")], job_id, topic)
            return
        self.counters["cancels"] += 1
        if row.state.final:
            log.info("cancel for job %s ignored: already %s", job_id, row.state.value)
            self._status.job_dirty(job_id, immediate=True)
            return
        log.info("job %s cancelled%s", job_id, " (signed)" if request.signed else "")
        await self._scheduler.close_job(job_id, JobState.CANCELLED, reason)


def _chosen(resolved: Resolved) -> Sequence[Member] | None:
    """The directory members whose choices apply to the job's deliveries (an audience's)."""
    return resolved.audience.members if resolved.audience is not None else None


async def _sized(size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Verify or validate a payload of `size` bytes with `fn`.

    A large job takes a while (seconds for 100,000 recipients): off the loop, in a thread.
    A small one (the urgent single alert) is done on the loop, faster than a hop to a thread
    and back.
    """
    if size <= INLINE_PARSE_BYTES:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)
