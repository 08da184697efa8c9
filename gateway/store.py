"""The durable state: jobs, deliveries, provider ids, receipts, in SQLite or PostgreSQL.

Everything needed to resume after a crash is here. `SqlStore` holds the store's logic, once,
for both engines (`gateway.store_db` is the seam where they differ); `SqliteStore` (the
default, one node, a WAL file at `[store] path`) and `gateway.store_pg.PostgresStore`
(`[store] url`) only open their connection. `open_store` picks one from the configuration;
`gateway.store_contract.StoreContract` names what the rest of the gateway may call.

Methods are synchronous and must be called from one thread (`gateway.async_store.AsyncStore`
runs them on a dedicated worker thread); the records they return are in `gateway.rows`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import store_batches
from .domain import (
    FINAL_DELIVERY_STATES,
    DeliveryState,
    Job,
    JobState,
    Priority,
    Recipient,
    can_transition,
)
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
    updated_row,
)
from .secret import is_reference
from .store_db import SqliteDb
from .store_retention import TOMBSTONE_SECONDS, Retention
from .store_tx import Call

if TYPE_CHECKING:
    from .config import StoreConfig

__all__ = [
    "TOMBSTONE_SECONDS",
    "AddResult",
    "Call",
    "Change",
    "DeliveryRow",
    "JobRow",
    "SqlStore",
    "SqliteStore",
    "Store",
    "open_store",
]

#: The store and its `-wal`/`-shm` hold personal data: the service user only, whatever the
#: umask (SQLite gives the companions the mode of the database file).
FILE_MODE = 0o600

_PENDING = ("queued", "sending", "retrying")
_OPEN = ("queued", "sending", "retrying", "sent")


class SqlStore(Retention):
    """The store's logic on a `gateway.store_db.Db`, whichever engine is behind it."""

    # -- jobs ---------------------------------------------------------------------------
    def add_job(
        self,
        job: Job,
        content_hash: str,
        enabled_channels: frozenset[str],
        now: float | None = None,
    ) -> tuple[AddResult, list[DeliveryRow]]:
        """Store a job and its deliveries in one durable transaction."""
        now = now or time.time()

        def work() -> tuple[AddResult, list[DeliveryRow]]:
            existing = self._db.execute(
                "SELECT content_hash FROM jobs WHERE id = ?", (job.id,)
            ).fetchone() or self._tombstone(job.id)
            if existing is not None:
                same = existing["content_hash"] == content_hash
                return (AddResult.DUPLICATE if same else AddResult.CONFLICT), []
            self._db.execute(
                "INSERT INTO jobs(id, content_hash, priority, test, state, body, created_at,"
                " updated_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?)",
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
                ),
            )
            rows = []
            for r in job.recipients:
                for channel in r.channels:
                    rows.append(self._insert_delivery(job.id, r, channel, enabled_channels, now))
            return AddResult.NEW, rows

        result: tuple[AddResult, list[DeliveryRow]] = self._tx(work, durable=True)
        return result

    def _insert_delivery(
        self,
        job_id: str,
        r: Recipient,
        channel: str,
        enabled: frozenset[str],
        now: float,
        fallback_of: int | None = None,
    ) -> DeliveryRow:
        address, problem = address_for(r, channel)
        if problem is None and channel not in enabled:
            problem = "channel_disabled"
        state = DeliveryState.QUEUED if problem is None else DeliveryState.FAILED
        masked = mask_address(address) if address else "-"
        row = self._db.execute(
            "INSERT INTO deliveries(job_id, rindex, ref, channel, address, masked, lang, state,"
            " last_error, fallback_of, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " RETURNING *",
            (
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
            ),
        ).fetchone()
        return row_to_delivery(row)

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
            job = self.job(d.job_id)
            if job is None:
                return None
            row = self._insert_delivery(
                d.job_id, job.recipients[d.rindex], channel, enabled, time.time(), delivery_id
            )
            self._db.execute(
                "UPDATE jobs SET state='running', finished_at=NULL WHERE id=? AND state='done'",
                (d.job_id,),
            )
            return row

        result: DeliveryRow | None = self._tx(work)
        return result

    def _job_record(self, job_id: str) -> Any:
        return self._read(
            lambda: self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )

    def job(self, job_id: str) -> Job | None:
        r = self._job_record(job_id)
        return job_from_row(r) if r is not None else None

    def job_row(self, job_id: str) -> JobRow | None:
        r = self._job_record(job_id)
        return row_to_job(r) if r is not None else None

    def active_jobs(self) -> list[JobRow]:
        rows = self._read(
            lambda: self._db.execute(
                "SELECT * FROM jobs WHERE state IN ('accepted', 'running') ORDER BY created_at"
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
        return changed > 0

    def counts(self, job_id: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        rows = self._read(
            lambda: self._db.execute(
                "SELECT channel, state, count(*) AS n FROM deliveries WHERE job_id=?"
                " GROUP BY channel, state",
                (job_id,),
            ).fetchall()
        )
        for r in rows:
            out.setdefault(r["channel"], {})[r["state"]] = r["n"]
        return out

    def job_with_counts(self, job_id: str) -> tuple[JobRow, dict[str, dict[str, int]]] | None:
        """The job and its delivery counts per channel and state (one trip for a status)."""

        def read() -> tuple[JobRow, dict[str, dict[str, int]]] | None:
            row = self.job_row(job_id)
            return None if row is None else (row, self.counts(job_id))

        return self._read(read)

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
                " WHERE d.state IN ('queued','sending','retrying')"
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

    def _update(self, d: DeliveryRow, new: DeliveryState, now: float, **fields: Any) -> Change:
        sets = ["state=?", "updated_at=?"]
        values: list[Any] = [new.value, now]
        for key, value in fields.items():
            sets.append(f"{key}=?")
            values.append(value)
        values.append(d.id)
        self._db.execute(f"UPDATE deliveries SET {', '.join(sets)} WHERE id=?", values)  # noqa: S608
        # Only a final state can be the job's last open delivery; the others just mark the
        # job running (cheap) without looking for open deliveries.
        finished = self._maybe_finish_job(d.job_id, now, check=new in FINAL_DELIVERY_STATES)
        row = updated_row(d, new, now, fields) or self._delivery(d.id)
        return Change(row, d.state, finished)

    def _maybe_finish_job(self, job_id: str, now: float, check: bool = True) -> JobState | None:
        """running -> done once nothing is pending or waiting for a receipt."""
        self._db.execute(
            "UPDATE jobs SET state='running', updated_at=? WHERE id=? AND state='accepted'",
            (now, job_id),
        )
        if not check:
            return None
        left = self._db.execute(
            "SELECT 1 FROM deliveries WHERE job_id=? AND state IN (?,?,?,?) LIMIT 1",
            (job_id, *_OPEN),
        ).fetchone()
        if left is not None:
            return None
        cur = self._db.execute(
            "UPDATE jobs SET state='done', updated_at=?, finished_at=?"
            " WHERE id=? AND state='running'",
            (now, now, job_id),
        )
        return JobState.DONE if cur.rowcount else None

    def finish_receipt_waits(
        self, waits: Mapping[str, float], now: float | None = None
    ) -> list[tuple[str, int]]:
        """running -> done for each job with nothing pending whose `sent` deliveries have
        all waited their channel's receipt wait (`waits`: channel -> seconds; a `sent` on
        another channel still waits for its receipt). Per job: (id, deliveries still sent)."""
        now = now or time.time()
        if not waits:
            return []
        # updated_at of a `sent` delivery is when it became sent; on a channel without a
        # wait, every `sent` is recent (the cutoff is -infinity) and keeps its job running.
        cutoff = " ".join("WHEN ? THEN ?" for _ in waits)
        params = [v for channel, wait in waits.items() for v in (channel, now - wait)]

        def work() -> list[tuple[str, int]]:
            rows = self._db.execute(
                "SELECT j.id, (SELECT count(*) FROM deliveries s WHERE s.job_id=j.id"  # noqa: S608
                " AND s.state='sent') AS unreceipted FROM jobs j WHERE j.state='running'"
                " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id=j.id AND"
                " (d.state IN ('queued','sending','retrying') OR (d.state='sent' AND"
                f" d.updated_at > (CASE d.channel {cutoff} ELSE -1e300 END))))",
                params,
            ).fetchall()
            for r in rows:
                self.set_job_state(r["id"], JobState.DONE)
            return [(r["id"], r["unreceipted"]) for r in rows]

        result: list[tuple[str, int]] = self._tx(work)
        return result

    def transition_job_if_done(self, job_id: str) -> JobState | None:
        result: JobState | None = self._tx(lambda: self._maybe_finish_job(job_id, time.time()))
        return result

    def transition(
        self, delivery_id: int, new: DeliveryState, now: float | None = None, **fields: Any
    ) -> Change | None:
        """Move a delivery to `new` if allowed; None when it is not (e.g. already cancelled)."""
        now = now or time.time()

        def work() -> Change | None:
            d = self._delivery(delivery_id)
            if not can_transition(d.state, new):
                return None
            return self._update(d, new, now, **fields)

        result: Change | None = self._tx(work)
        return result

    # -- the hot path, in batches (gateway.async_store.Batched) ---------------------------
    def claim_batch(self, calls: Sequence[Call]) -> list[Change | Exception | None]:
        """Claim each call's `(delivery_id,)`, in one transaction: queued/retrying ->
        sending, counting the attempt; None for a delivery no longer pending."""
        now = time.time()
        ids = [args[0] for args, _ in calls]
        result: list[Change | Exception | None] = self._tx(
            lambda: store_batches.claim(self._db, ids, now)
        )
        return result

    def record_sent_batch(self, calls: Sequence[Call]) -> list[list[Change] | Exception]:
        """Record each call's successful attempt `(delivery_id, new, channel, provider_ids,
        detail)` and its provider ids, in one transaction; receipts that came before it
        apply then. Per call, the changes made."""
        now = time.time()
        items: list[store_batches.Sent] = [args for args, _ in calls]

        def work() -> list[list[Change] | Exception]:
            return store_batches.record_sent(
                self._db, items, now, self._maybe_finish_job, self._apply_receipt
            )

        result: list[list[Change] | Exception] = self._tx(work)
        return result

    def recover_interrupted(self) -> list[DeliveryRow]:
        """After a crash: attempts left in `sending` were in flight; mark them for retry."""

        def work() -> list[DeliveryRow]:
            rows = self._db.execute("SELECT * FROM deliveries WHERE state='sending'").fetchall()
            self._db.execute(
                "UPDATE deliveries SET state='retrying', possibly_sent=1,"
                " last_error='interrupted', next_attempt_at=NULL WHERE state='sending'"
            )
            return [row_to_delivery(r) for r in rows]

        result: list[DeliveryRow] = self._tx(work)
        return result

    def close_job(
        self, job_id: str, state: JobState, delivery_state: DeliveryState, reason: str
    ) -> list[Change]:
        """Cancel or expire a job: every pending delivery gets `delivery_state`."""
        now = time.time()

        def work() -> list[Change]:
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE job_id=? AND state IN (?,?,?)",
                (job_id, *_PENDING),
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

    def acknowledge_member(self, job_id: str, rindex: int, except_id: int) -> list[Change]:
        """One state per member: an acknowledgement cancels their other pending deliveries."""
        now = time.time()

        def work() -> list[Change]:
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE job_id=? AND rindex=? AND id<>?"
                " AND state IN (?,?,?)",
                (job_id, rindex, except_id, *_PENDING),
            ).fetchall()
            out = []
            for r in rows:
                d = row_to_delivery(r)
                out.append(self._update(d, DeliveryState.CANCELLED, now, last_error="acknowledged"))
            return out

        result: list[Change] = self._tx(work)
        return result

    # -- provider ids and receipts --------------------------------------------------
    def apply_receipts(
        self, receipts: list[tuple[str, str, DeliveryState, str | None]]
    ) -> list[tuple[bool, Change | None]]:
        """Apply (channel, provider_id, state, reason) receipts in one transaction: per receipt
        whether its provider id is known, and the delivery's change if it made one."""
        now = time.time()

        def work() -> list[tuple[bool, Change | None]]:
            return store_batches.apply_receipts(
                self._db, receipts, now, self._maybe_finish_job, self._apply_receipt
            )

        result: list[tuple[bool, Change | None]] = self._tx(work)
        return result

    def apply_receipts_batch(
        self, calls: Sequence[Call]
    ) -> list[list[tuple[bool, Change | None]] | Exception]:
        """`apply_receipts(receipts)` for each call, as one batch in one transaction."""
        lists: list[list[tuple[str, str, DeliveryState, str | None]]] = [
            args[0] for args, _ in calls
        ]
        flat = [receipt for receipts in lists for receipt in receipts]
        results = self.apply_receipts(flat)
        out: list[list[tuple[bool, Change | None]] | Exception] = []
        start = 0
        for receipts in lists:
            out.append(results[start : start + len(receipts)])
            start += len(receipts)
        return out

    def _apply_receipt(
        self, channel: str, provider_id: str, state: DeliveryState, reason: str | None, now: float
    ) -> Change | None:
        self._db.execute(
            "UPDATE provider_ids SET state=?, reason=? WHERE channel=? AND provider_id=?",
            (state.value, reason, channel, provider_id),
        )
        row = self._db.execute(
            "SELECT delivery_id FROM provider_ids WHERE channel=? AND provider_id=?",
            (channel, provider_id),
        ).fetchone()
        d = self._delivery(row["delivery_id"])
        parts = self._db.execute(
            "SELECT state, reason FROM provider_ids WHERE delivery_id=?", (d.id,)
        ).fetchall()
        new, reason = store_batches.settled_state([(p["state"], p["reason"]) for p in parts])
        if new is None or not can_transition(d.state, new):
            return None  # other parts still owe their receipt, or it is settled already
        return self._update(d, new, now, last_error=reason if new is DeliveryState.FAILED else None)

    def find_member_by_phone(self, phone: str, since: float) -> list[DeliveryRow]:
        """Recent deliveries to a phone number, newest first (to match an SMS reply)."""
        rows = self._read(
            lambda: self._db.execute(
                "SELECT * FROM deliveries WHERE address=? AND channel IN ('sms','voice')"
                " AND updated_at >= ? ORDER BY updated_at DESC",
                (phone, since),
            ).fetchall()
        )
        return [row_to_delivery(r) for r in rows]


class SqliteStore(SqlStore):
    """The embedded default: one SQLite file in WAL mode, for one node."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            _private(path)
            conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        # Deleted rows (purged personal data) are overwritten with zeros, not left in free
        # pages; the cost is a write of each freed page, only on delete.
        conn.execute("PRAGMA secure_delete=ON")
        super().__init__(SqliteDb(conn))
        for companion in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            with contextlib.suppress(FileNotFoundError):  # made 0644 by an older version
                companion.chmod(FILE_MODE)


#: The SQLite store under its historical name (tests and tools that open a file).
Store = SqliteStore


def open_store(config: StoreConfig) -> SqlStore:
    """PostgreSQL when `[store] url` is set, else the SQLite file at `[store] path`."""
    if config.url is None:
        return SqliteStore(config.path)
    from .store_pg import PostgresStore

    for name, value in (("url", config.url), ("password", config.password)):
        if value is not None and is_reference(value):
            # An admin command outside the service (a systemd credential is not readable).
            raise StoreError(f"[store] {name} is a secret this command cannot read ({value})")

    return PostgresStore(
        config.url,
        password=config.password,
        connect_timeout=config.connect_timeout,
        reconnect_timeout=config.reconnect_timeout,
    )


def describe(config: StoreConfig) -> str:
    """Where the store is, for messages: the file, or the URL without its password."""
    if config.url is None:
        return str(config.path)
    from .store_pg import safe_url

    return safe_url(config.url)


def _private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would follow the umask, and
    give its `-wal` and `-shm` the same mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    os.close(fd)
