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
import logging
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
    JobState,
    can_transition,
)
from .errors import StoreError
from .rows import (
    AddResult,
    Change,
    DeliveryRow,
    JobRow,
    row_to_delivery,
    updated_row,
)
from .secret import is_reference
from .store_cluster import ClusterClaims
from .store_db import SqliteDb
from .store_directory import DirectoryStore
from .store_jobs import PENDING, Jobs
from .store_retention import TOMBSTONE_SECONDS
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

_OPEN = ("queued", "sending", "retrying", "held", "sent")

log = logging.getLogger(__name__)


class SqlStore(DirectoryStore, Jobs, ClusterClaims):
    """The store's logic on a `gateway.store_db.Db`, whichever engine is behind it: here
    deliveries' transitions, the hot path's batches and receipts; jobs in `Jobs`
    (gateway.store_jobs), purge and replay proofs in `Retention`, transactions below."""

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
            "SELECT 1 FROM deliveries WHERE job_id=? AND state IN (?,?,?,?,?) LIMIT 1",
            (job_id, *_OPEN),
        ).fetchone()
        if left is not None:
            return None
        cur = self._db.execute(
            "UPDATE jobs SET state='done', updated_at=?, finished_at=?"
            " WHERE id=? AND state='running' AND complete=1",
            (now, now, job_id),
        )
        if not cur.rowcount:
            return None
        self._let_go_of_members(job_id)
        return JobState.DONE

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
                " AND s.state='sent') AS unreceipted FROM jobs j"
                " WHERE j.state='running' AND j.complete=1"
                " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id=j.id AND"
                " (d.state IN ('queued','sending','retrying','held') OR (d.state='sent' AND"
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
        # Several nodes: each call is `(delivery_id, owner)`, one owner (this node's boot).
        owner = calls[0][0][1] if calls and len(calls[0][0]) > 1 else None
        result: list[Change | Exception | None] = self._tx(
            lambda: store_batches.claim(self._db, ids, now, owner)
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

    def acknowledge_member(self, job_id: str, rindex: int, except_id: int) -> list[Change]:
        """One state per member: an acknowledgement cancels their other pending deliveries."""
        now = time.time()

        def work() -> list[Change]:
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE job_id=? AND rindex=? AND id<>?"
                " AND state IN (?,?,?,?)",
                (job_id, rindex, except_id, *PENDING),
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

    def match_orphan_receipts(self, limit: int = 1000) -> list[Change]:
        """Apply receipts kept as orphans whose provider id is now known. Several nodes: a
        receipt on node B for node A's submit, stored while A's record of that submit was
        not committed yet, saw neither the other (each transaction its own snapshot)."""
        now = time.time()
        lock = "" if self._db.name == "sqlite" else " FOR UPDATE OF o SKIP LOCKED"

        def work() -> list[Change]:
            rows = self._db.execute(
                "SELECT o.channel, o.provider_id, o.state, o.reason FROM orphan_receipts o"  # noqa: S608
                " JOIN provider_ids p ON p.channel = o.channel AND p.provider_id = o.provider_id"
                f" LIMIT ?{lock}",
                (limit,),
            ).fetchall()
            if not rows:
                return []
            receipts = [
                (r["channel"], r["provider_id"], DeliveryState(r["state"]), r["reason"])
                for r in rows
            ]
            self._db.executemany(
                "DELETE FROM orphan_receipts WHERE channel=? AND provider_id=?",
                [(channel, pid) for channel, pid, _, _ in receipts],
            )
            results = store_batches.apply_receipts(
                self._db, receipts, now, self._maybe_finish_job, self._apply_receipt
            )
            return [change for _, change in results if change is not None]

        result: list[Change] = self._tx(work)
        return result

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
    store = SqliteStore(config.path) if config.url is None else _postgres(config)
    log.info(
        "store: %s %s, schema version %d", store.backend, describe(config), store.schema_version
    )
    return store


def _postgres(config: StoreConfig) -> SqlStore:
    from .store_pg import PostgresStore

    for name, value in (("url", config.url), ("password", config.password)):
        if value is not None and is_reference(value):
            # An admin command outside the service (a systemd credential is not readable).
            raise StoreError(f"[store] {name} is a secret this command cannot read ({value})")
    assert config.url is not None
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
