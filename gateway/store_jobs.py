"""Jobs in the store: a job and its deliveries written in one durable transaction, read back,
closed (cancel, expiry), and a member's fallback delivery."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .domain import DeliveryState, Job, JobState, Priority, Recipient
from .errors import StoreError
from .privacy import mask_address
from .rows import (
    AddResult,
    Change,
    DeliveryRow,
    JobRow,
    address_for,
    job_from_row,
    job_to_body,
    row_to_delivery,
    row_to_job,
)
from .store_retention import Retention

PENDING = ("queued", "sending", "retrying", "held")
# A job's delivery counts (its status): read from the index deliveries_job_counts alone.
COUNTS = (
    "SELECT channel, state, count(*) AS n FROM deliveries WHERE job_id=? GROUP BY channel, state"
)
# A job's head (gateway.rows.row_to_job): never its body, which holds every member of a
# large job (9 MB for 100,000) and is read only to build its deliveries.
_HEAD = "id, priority, state, created_at, updated_at, expires_at, finished_at, reason"

# Members stored after their job was closed (a cancel or the expiry during a large intake).
_CLOSED = {
    JobState.CANCELLED: (DeliveryState.CANCELLED, "cancelled"),
    JobState.EXPIRED: (DeliveryState.EXPIRED, "expired"),
}

# One bit per delivery state, for grouping members by their set of states in SQL.
_BITS = {state: 1 << i for i, state in enumerate(DeliveryState)}
_STATE_BITS = (
    "CASE state "
    + " ".join(f"WHEN '{state.value}' THEN {bit}" for state, bit in _BITS.items())
    + " ELSE 0 END"
)


def _verdict(stored: Any, content_hash: str) -> AddResult:
    """A job id already stored (or buried): the same content is a duplicate, other content a
    conflict (the first stands)."""
    return AddResult.DUPLICATE if stored["content_hash"] == content_hash else AddResult.CONFLICT


def _states_of(mask: int) -> frozenset[DeliveryState]:
    return frozenset(state for state, bit in _BITS.items() if mask & bit)


class Jobs(Retention):
    # The members of the last job a fallback was added for, parsed once: (job id, its
    # created_at, its members). A failed delivery's fallback needs its member's other
    # addresses, in the job's body: parsing a 100,000-member body (~0.1-0.6 s) per fallback
    # would hold the store thread for minutes on a large job whose SMS fail. One job only
    # (for 100,000 members, 67 MB measured), dropped when that job ends (`_let_go_of_members`).
    _fallback_members: tuple[str, float, tuple[Recipient, ...]] | None = None

    # -- jobs ---------------------------------------------------------------------------
    def _insert_job(self, job: Job, content_hash: str, now: float, *, complete: bool) -> bool:
        """The job's row; False when another writer stored that id first. Two nodes may store
        the same id at once (several nodes, gateway.cluster): the unique key decides, and the
        later one waits for the first's commit and finds it (a clean verdict, not an error).
        `complete` is False for a large job whose members follow in chunks."""
        inserted = self._db.execute(
            "INSERT INTO jobs(id, content_hash, priority, test, state, body, created_at,"
            " updated_at, expires_at, complete) VALUES (?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (id) DO NOTHING",
            (
                job.id,
                content_hash,
                int(job.priority),
                int(job.test),
                JobState.ACCEPTED.value,
                job_to_body(job),
                now,
                now,
                job.expires_at.timestamp(),
                int(complete),
            ),
        )
        return inserted.rowcount != 0

    def _verdict_of(self, job_id: str, content_hash: str) -> AddResult:
        first = self._db.execute("SELECT content_hash FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return AddResult.CONFLICT if first is None else _verdict(first, content_hash)

    def add_job(
        self,
        job: Job,
        content_hash: str,
        enabled_channels: frozenset[str],
        now: float | None = None,
        claim: bool = False,
    ) -> tuple[AddResult, list[DeliveryRow]]:
        """Store a job and its deliveries in one durable transaction.

        `claim`: its queued deliveries are stored claimed (`sending`, the attempt counted),
        as `claim_batch` would claim them: a small hot job's attempts start without a second
        trip to the store (`Scheduler.claims_at_intake`). A crash before they are sent leaves
        them `sending`, like any claimed attempt: retried, possibly sent (`recover_interrupted`)."""
        now = now or time.time()

        def work() -> tuple[AddResult, list[DeliveryRow]]:
            existing = self._db.execute(
                "SELECT content_hash FROM jobs WHERE id = ?", (job.id,)
            ).fetchone() or self._tombstone(job.id)
            if existing is not None:
                return _verdict(existing, content_hash), []
            if not self._insert_job(job, content_hash, now, complete=True):
                return self._verdict_of(job.id, content_hash), []
            params = [
                _delivery_params(job.id, r, channel, enabled_channels, now, claim=claim)
                for r in job.recipients
                for channel in r.channels
            ]
            # One executemany and one read back, on both engines: 2-3x faster than an
            # INSERT ... RETURNING per row on SQLite, one pipelined round trip on PostgreSQL.
            # Ids grow in insertion order, so the rows come back in the recipients' order.
            self._db.executemany(_INSERT_DELIVERY, params)
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE job_id=? ORDER BY id", (job.id,)
            ).fetchall()
            return AddResult.NEW, [row_to_delivery(row) for row in rows]

        result: tuple[AddResult, list[DeliveryRow]] = self._tx(work, durable=True)
        return result

    def begin_job(
        self,
        job: Job,
        content_hash: str,
        now: float | None = None,
        frozen: str | None = None,
    ) -> tuple[AddResult, int]:
        """Store a large job's header, durably, before its members (`add_members`, in chunks).

        NEW with how many members are already stored: 0, or where a redelivery resumes after
        a crash mid-intake (same content, header in, not complete). DUPLICATE once complete,
        CONFLICT for other content under the same id. `frozen`: the keys of the members the
        store gave the job (gateway.frozen), kept with its header until it is complete; a
        redelivery that finds none of its members stored yet replaces them."""
        now = now or time.time()

        def work() -> tuple[AddResult, int]:
            existing = self._db.execute(
                "SELECT content_hash, complete FROM jobs WHERE id = ?", (job.id,)
            ).fetchone()
            if existing is None and (buried := self._tombstone(job.id)) is not None:
                return _verdict(buried, content_hash), 0
            if existing is not None:
                if existing["content_hash"] != content_hash:
                    return AddResult.CONFLICT, 0
                if existing["complete"]:
                    return AddResult.DUPLICATE, 0
                # Each chunk is one transaction and chunks go in order: the members stored
                # are exactly those up to the highest index.
                top = self._db.execute(
                    "SELECT max(rindex) AS top FROM deliveries WHERE job_id=?", (job.id,)
                ).fetchone()
                if top["top"] is not None:
                    return AddResult.NEW, int(top["top"]) + 1
            elif not self._insert_job(job, content_hash, now, complete=False):
                return self._verdict_of(job.id, content_hash), 0
            if frozen is not None:
                self._db.execute("UPDATE jobs SET frozen=? WHERE id=?", (frozen, job.id))
            return AddResult.NEW, 0

        result: tuple[AddResult, int] = self._tx(work, durable=True)
        return result

    def add_members(
        self,
        job_id: str,
        recipients: Sequence[Recipient],
        enabled_channels: frozenset[str],
        body: str | None = None,
        now: float | None = None,
        claim: int = 0,
    ) -> list[DeliveryRow]:
        """Store a chunk of a large job's members (their deliveries), durably. `body`, the
        whole job's (`job_to_body`), comes with the last chunk and marks the job complete.
        `claim`: the first `claim` members' queued deliveries are stored claimed, as
        `add_job`'s (a hot job's first chunk, stored with its header: `gateway.frozen`).

        A chunk stored after the job was cancelled or expired gets that final state: no
        member of a closed job is sent."""
        now = now or time.time()

        def work() -> list[DeliveryRow]:
            job = self._db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None:
                raise StoreError(f"no job {job_id}")
            closed = _CLOSED.get(JobState(job["state"]))
            start = self._db.execute("SELECT max(id) AS top FROM deliveries").fetchone()["top"]
            params = [
                _delivery_params(
                    job_id, r, channel, enabled_channels, now, claim=i < claim and closed is None
                )
                for i, r in enumerate(recipients)
                for channel in r.channels
            ]
            if closed is not None:
                state, reason = closed
                params = [(*p[:7], state.value, reason, *p[9:]) for p in params]
            self._db.executemany(_INSERT_DELIVERY, params)
            # Ids grow in insertion order: this chunk's rows are the job's past `start`.
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE id > ? AND job_id=? ORDER BY id",
                (start or 0, job_id),
            ).fetchall()
            if body is not None:
                # Complete: the body holds every member, the frozen keys are no longer needed.
                self._db.execute(
                    "UPDATE jobs SET body=?, complete=1, frozen=NULL, updated_at=? WHERE id=?",
                    (body, now, job_id),
                )
            return [row_to_delivery(row) for row in rows]

        result: list[DeliveryRow] = self._tx(work, durable=True)
        return result

    def frozen_members(self, job_id: str) -> str | None:
        """The frozen member keys `begin_job` kept with an incomplete job (gateway.frozen)."""
        row = self._read(
            lambda: self._db.execute("SELECT frozen FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        return None if row is None else row["frozen"]

    def add_fallback(
        self, delivery_id: int, channel: str, enabled: frozenset[str]
    ) -> DeliveryRow | None:
        """A new delivery on `channel` for the member of a failed delivery, unless one exists."""

        def work() -> DeliveryRow | None:
            d = self._delivery(delivery_id)
            exists = self._db.execute(
                "SELECT 1 FROM deliveries WHERE job_id=? AND rindex=? AND channel=?",
                (d.job_id, d.rindex, channel),
            ).fetchone()
            acked = self._db.execute(
                "SELECT 1 FROM deliveries WHERE job_id=? AND rindex=? AND state='acknowledged'",
                (d.job_id, d.rindex),
            ).fetchone()
            if exists or acked:
                return None
            members = self._members_for_fallback(d.job_id)
            if members is None:
                return None
            params = _delivery_params(
                d.job_id, members[d.rindex], channel, enabled, time.time(), delivery_id
            )
            row = row_to_delivery(
                self._db.execute(_INSERT_DELIVERY + " RETURNING *", params).fetchone()
            )
            self._db.execute(
                "UPDATE jobs SET state='running', finished_at=NULL WHERE id=? AND state='done'",
                (d.job_id,),
            )
            return row

        result: DeliveryRow | None = self._tx(work)
        return result

    def _members_for_fallback(self, job_id: str) -> tuple[Recipient, ...] | None:
        """The job's members, parsed from its body once per job (`_fallback_members`); the
        job's created_at tells a job from a later one of the same id (after a purge)."""
        head = self._db.execute(
            "SELECT created_at, complete FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if head is None:
            return None
        cached = self._fallback_members
        if cached is not None and cached[0] == job_id and cached[1] == head["created_at"]:
            return cached[2]
        job = self.job(job_id)
        if job is None:
            return None
        if head["complete"]:  # a chunked job's body holds its members once complete
            self._fallback_members = (job_id, head["created_at"], job.recipients)
        return job.recipients

    def _job_record(self, job_id: str) -> Any:
        return self._read(
            lambda: self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )

    def _job_head(self, job_id: str) -> Any:
        return self._read(
            lambda: self._db.execute(
                f"SELECT {_HEAD} FROM jobs WHERE id = ?",  # noqa: S608
                (job_id,),
            ).fetchone()
        )

    def job(self, job_id: str) -> Job | None:
        r = self._job_record(job_id)
        return job_from_row(r) if r is not None else None

    def job_row(self, job_id: str) -> JobRow | None:
        r = self._job_head(job_id)
        return row_to_job(r) if r is not None else None

    def active_jobs(self) -> list[JobRow]:
        rows = self._read(
            lambda: self._db.execute(
                f"SELECT {_HEAD} FROM jobs WHERE state IN ('accepted', 'running')"  # noqa: S608
                " ORDER BY created_at"
            ).fetchall()
        )
        return [row_to_job(r) for r in rows]

    def set_job_state(self, job_id: str, state: JobState, reason: str | None = None) -> bool:
        now = time.time()
        changed: int = self._read(
            lambda: (
                self._db.execute(
                    "UPDATE jobs SET state=?, updated_at=?, reason=COALESCE(?, reason),"
                    " finished_at=CASE WHEN ?=1 THEN ? ELSE finished_at END"
                    " WHERE id=? AND state NOT IN ('done','cancelled','expired','rejected')",
                    (state.value, now, reason, int(state.final), now, job_id),
                ).rowcount
            )
        )
        if state.final:
            self._let_go_of_members(job_id)
        return changed > 0

    def _let_go_of_members(self, job_id: str) -> None:
        """The job ended: its members, kept for its fallbacks, are not needed again (a late
        fallback, after a receipt reopens it, parses them again)."""
        cached = self._fallback_members
        if cached is not None and cached[0] == job_id:
            self._fallback_members = None

    def counts(self, job_id: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        rows = self._read(lambda: self._db.execute(COUNTS, (job_id,)).fetchall())
        for r in rows:
            out.setdefault(r["channel"], {})[r["state"]] = r["n"]
        return out

    def job_with_counts(self, job_id: str) -> tuple[JobRow, dict[str, dict[str, int]]] | None:
        """The job and its delivery counts per channel and state (one trip for a status)."""

        def read() -> tuple[JobRow, dict[str, dict[str, int]]] | None:
            row = self.job_row(job_id)
            return None if row is None else (row, self.counts(job_id))

        return self._read(read)

    def member_state_sets(self, job_id: str) -> list[tuple[frozenset[DeliveryState], int]]:
        """How many members have each set of delivery states (gateway.outcomes counts them):
        grouped in the database, as a 100,000-member job would be 300,000 rows to Python.
        A member's set is a bit mask (one bit per state), portable to both engines."""
        rows = self._read(
            lambda: self._db.execute(
                f"SELECT mask, count(*) AS n FROM (SELECT SUM(DISTINCT {_STATE_BITS}) AS mask"  # noqa: S608
                " FROM deliveries WHERE job_id=? GROUP BY rindex) AS m GROUP BY mask",
                (job_id,),
            ).fetchall()
        )
        return [(_states_of(int(r["mask"])), int(r["n"])) for r in rows]

    def recent_jobs(self, limit: int) -> list[JobRow]:
        """The latest jobs, newest first (the status page)."""
        rows = self._read(
            lambda: self._db.execute(
                f"SELECT {_HEAD} FROM jobs ORDER BY created_at DESC LIMIT ?",  # noqa: S608
                (limit,),
            ).fetchall()
        )
        return [row_to_job(r) for r in rows]

    def deliveries(self, job_id: str) -> list[DeliveryRow]:
        rows = self._read(
            lambda: self._db.execute(
                "SELECT * FROM deliveries WHERE job_id=? ORDER BY rindex, channel", (job_id,)
            ).fetchall()
        )
        return [row_to_delivery(r) for r in rows]

    def pending_deliveries(self) -> list[tuple[DeliveryRow, Priority]]:
        """Every delivery still owed an attempt, for the scheduler after a (re)start."""
        rows = self._read(
            lambda: self._db.execute(
                "SELECT d.*, j.priority AS jprio FROM deliveries d JOIN jobs j ON j.id = d.job_id"
                " WHERE d.state IN ('queued','sending','retrying','held')"
                " AND j.state IN ('accepted','running') ORDER BY d.id"
            ).fetchall()
        )
        return [(row_to_delivery(r), Priority(r["jprio"])) for r in rows]

    # -- delivery transitions ---------------------------------------------------------
    def _delivery(self, delivery_id: int) -> DeliveryRow:
        r = self._db.execute("SELECT * FROM deliveries WHERE id=?", (delivery_id,)).fetchone()
        if r is None:
            raise StoreError(f"no delivery {delivery_id}")
        return row_to_delivery(r)

    def delivery(self, delivery_id: int) -> DeliveryRow:
        return self._read(lambda: self._delivery(delivery_id))

    def close_job(
        self, job_id: str, state: JobState, delivery_state: DeliveryState, reason: str
    ) -> list[Change]:
        """Cancel or expire a job: every pending delivery gets `delivery_state`."""
        now = time.time()

        def work() -> list[Change]:
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE job_id=? AND state IN (?,?,?,?)",
                (job_id, *PENDING),
            ).fetchall()
            changes = []
            for r in rows:
                d = row_to_delivery(r)
                self._db.execute(
                    "UPDATE deliveries SET state=?, updated_at=?, last_error=? WHERE id=?",
                    (delivery_state.value, now, reason, d.id),
                )
                changes.append(Change(self._delivery(d.id), d.state, None))
            self.set_job_state(job_id, state, reason)
            return changes

        result: list[Change] = self._tx(work)
        return result


_INSERT_DELIVERY = (
    "INSERT INTO deliveries(job_id, rindex, ref, channel, address, masked, lang, state,"
    " last_error, fallback_of, created_at, updated_at, attempts)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def _delivery_params(
    job_id: str,
    r: Recipient,
    channel: str,
    enabled: frozenset[str],
    now: float,
    fallback_of: int | None = None,
    *,
    claim: bool = False,
) -> tuple[Any, ...]:
    """A new delivery's row for `_INSERT_DELIVERY`: queued (or, `claim`, its first attempt
    claimed: `sending`), or failed when it cannot be sent."""
    address, problem = address_for(r, channel)
    if problem is None and channel not in enabled:
        problem = "channel_disabled"
    state = DeliveryState.QUEUED if problem is None else DeliveryState.FAILED
    claimed = claim and state is DeliveryState.QUEUED
    if claimed:
        state = DeliveryState.SENDING
    masked = mask_address(address) if address else "-"
    return (
        job_id,
        r.index,
        r.ref,
        channel,
        address,
        masked,
        r.lang,
        state.value,
        problem,
        fallback_of,
        now,
        now,
        int(claimed),  # attempts: the claim counts the first
    )
