"""What the store forgets and what it keeps to prove: purge, retained statuses to clear,
and the proofs of what was seen (signature nonces, purged jobs' ids) for the replay window."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from .domain import Job
from .rows import job_from_row
from .security_config import MAX_REPLAY_WINDOW
from .signing import SeenNonce
from .store_db import Row
from .store_tx import Transactions

#: How long a purged job's id is remembered: the longest replay window a config may set, so a
#: replay of a purged job is a duplicate whatever the window (and across reloads).
TOMBSTONE_SECONDS = MAX_REPLAY_WINDOW

PURGEABLE = (
    "state IN ('done','cancelled','expired','rejected')"
    " AND finished_at IS NOT NULL AND finished_at < ?"
)


class Retention(Transactions):
    # -- retained statuses ------------------------------------------------------------------
    def _queue_retained_clears(self, finished_before: float) -> None:
        self._db.execute(
            f"INSERT INTO retained_clears SELECT id, 0 FROM jobs WHERE {PURGEABLE}"  # noqa: S608
            " ON CONFLICT (job_id) DO UPDATE SET clear_after=excluded.clear_after",
            (finished_before,),
        )

    def note_rejected(self, job_ids: Sequence[str], clear_after: float) -> None:
        """Statuses published for rejected jobs (not stored): cleared after `clear_after`."""
        self._tx(
            lambda: self._db.executemany(
                "INSERT INTO retained_clears(job_id, clear_after) VALUES (?, ?)"
                " ON CONFLICT (job_id) DO UPDATE SET clear_after=excluded.clear_after",
                [(job_id, clear_after) for job_id in job_ids],
            )
        )

    def due_retained_clears(self, now: float, limit: int = 1000) -> list[str]:
        """Job ids whose retained status must be cleared now. A rejected id accepted later
        (a corrected job) is not: its status is the job's own until it is purged."""

        def work() -> list[str]:
            self._db.execute("DELETE FROM retained_clears WHERE job_id IN (SELECT id FROM jobs)")
            rows = self._db.execute(
                "SELECT job_id FROM retained_clears WHERE clear_after <= ? LIMIT ?",
                (now, limit),
            ).fetchall()
            return [r["job_id"] for r in rows]

        result: list[str] = self._tx(work)
        return result

    def retained_cleared(self, job_ids: Sequence[str]) -> None:
        self._tx(
            lambda: self._db.executemany(
                "DELETE FROM retained_clears WHERE job_id = ?", [(i,) for i in job_ids]
            )
        )

    # -- purge ------------------------------------------------------------------------------
    def voice_jobs(self, finished_before: float) -> tuple[list[Job], list[Job]]:
        """Jobs with voice deliveries: (those `purge(finished_before)` will delete, those
        still running), to remove the audio of the first but not what the second use."""
        with_voice = "id IN (SELECT job_id FROM deliveries WHERE channel = 'voice')"

        def read() -> tuple[list[Job], list[Job]]:
            purged = self._db.execute(
                f"SELECT * FROM jobs WHERE {PURGEABLE} AND {with_voice}",  # noqa: S608
                (finished_before,),
            ).fetchall()
            if not purged:
                return [], []  # the usual run: no running job's body read for nothing
            running = self._db.execute(
                f"SELECT * FROM jobs WHERE state IN ('accepted', 'running') AND {with_voice}"  # noqa: S608
            ).fetchall()
            return [job_from_row(r) for r in purged], [job_from_row(r) for r in running]

        return self._read(read)

    def purge_orphan_receipts(self, older_than: float) -> int:
        return self._read(
            lambda: (
                self._db.execute(
                    "DELETE FROM orphan_receipts WHERE received_at < ?", (older_than,)
                ).rowcount
            )
        )

    def purge(self, finished_before: float) -> int:
        """Delete finished jobs (and with them every personal datum) older than the cutoff."""

        def work() -> int:
            self._bury(finished_before)
            # Each purged job's retained status goes from the broker too (the daemon clears it).
            self._queue_retained_clears(finished_before)
            cur = self._db.execute(
                f"DELETE FROM jobs WHERE {PURGEABLE}",  # noqa: S608
                (finished_before,),
            )
            self.purge_orphan_receipts(finished_before)
            self._forget_expired_proofs()
            return cur.rowcount

        result: int = self._tx(work)
        if result:
            self._read(self._db.after_purge)
        return result

    # -- proofs of what was seen (replays) ---------------------------------------------------
    def remember_nonces(self, seen: Sequence[SeenNonce]) -> None:
        """Keep accepted signature nonces until their window ends (they outlive a restart)."""
        self._tx(
            lambda: self._db.executemany(
                "INSERT INTO seen_nonces(kid, nonce, expires_at) VALUES (?,?,?)"
                " ON CONFLICT (kid, nonce) DO UPDATE SET expires_at=excluded.expires_at",
                [(s.kid, s.nonce, s.expires_at.timestamp()) for s in seen],
            )
        )

    def seen_nonces(self) -> list[SeenNonce]:
        """The nonces whose window has not ended, for the verifier at start."""
        rows = self._read(
            lambda: self._db.execute(
                "SELECT kid, nonce, expires_at FROM seen_nonces WHERE expires_at >= ?",
                (time.time(),),
            ).fetchall()
        )
        return [
            SeenNonce(r["kid"], r["nonce"], datetime.fromtimestamp(r["expires_at"], UTC))
            for r in rows
        ]

    def _tombstone(self, job_id: str) -> Row | None:
        row: Row | None = self._db.execute(
            "SELECT content_hash FROM purged_jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return row

    def _bury(self, finished_before: float) -> None:
        """Before purging: remember the id and content hash of each job about to go."""
        self._db.execute(
            "INSERT INTO purged_jobs(id, content_hash, purged_at)"  # noqa: S608
            f" SELECT id, content_hash, ? FROM jobs WHERE {PURGEABLE}"
            " ON CONFLICT (id) DO UPDATE SET content_hash=excluded.content_hash,"
            " purged_at=excluded.purged_at",
            (time.time(), finished_before),
        )

    def _forget_expired_proofs(self) -> None:
        now = time.time()
        self._db.execute("DELETE FROM seen_nonces WHERE expires_at < ?", (now,))
        self._db.execute("DELETE FROM purged_jobs WHERE purged_at < ?", (now - TOMBSTONE_SECONDS,))
