"""Versioned schema: each migration brings the store from one version to the next, at start.

`schema_version` holds the version the store is at. A store at a higher version than this
code knows (written by a newer gateway) is refused with `SchemaTooNew`, never touched. A
SQLite file from before versioning (its tables but no `schema_version`) is version 1. A
migration runs in one transaction with the version bump (PostgreSQL's DDL is transactional;
SQLite's too), under a lock so that nodes starting together migrate once.

To change the schema: append a migration (its statements, DDL tokens `{REAL}`, `{ID}`,
`{BIGINT}` spelled per engine by `gateway.store_db`); never edit a released one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from .errors import SchemaTooNew
from .store_db import Db

log = logging.getLogger(__name__)

#: Version 1: the schema of the single-node gateway (SQLite files before versioning).
V1: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    priority INTEGER NOT NULL,
    test INTEGER NOT NULL,
    state TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at {REAL} NOT NULL,
    updated_at {REAL} NOT NULL,
    expires_at {REAL} NOT NULL,
    finished_at {REAL},
    reason TEXT
)""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)",
    """CREATE TABLE IF NOT EXISTS deliveries (
    id {ID},
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    rindex INTEGER NOT NULL,
    ref TEXT NOT NULL,
    channel TEXT NOT NULL,
    address TEXT,
    masked TEXT NOT NULL,
    lang TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {REAL},
    last_error TEXT,
    detail TEXT,
    provider_ids TEXT NOT NULL DEFAULT '[]',
    possibly_sent INTEGER NOT NULL DEFAULT 0,
    fallback_of {BIGINT},
    created_at {REAL} NOT NULL,
    updated_at {REAL} NOT NULL,
    UNIQUE (job_id, rindex, channel)
)""",
    "CREATE INDEX IF NOT EXISTS deliveries_job_state ON deliveries(job_id, state)",
    "CREATE INDEX IF NOT EXISTS deliveries_address ON deliveries(address)",
    """CREATE TABLE IF NOT EXISTS provider_ids (
    channel TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    delivery_id {BIGINT} NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    state TEXT,
    reason TEXT,
    PRIMARY KEY (channel, provider_id)
)""",
    "CREATE INDEX IF NOT EXISTS provider_ids_delivery ON provider_ids(delivery_id)",
    # What proves a job or a signature was seen, kept past purge for the replay window:
    # a nonce until the end of its window, a purged job's id and content hash (no personal
    # data) for TOMBSTONE_SECONDS.
    """CREATE TABLE IF NOT EXISTS seen_nonces (
    kid TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at {REAL} NOT NULL,
    PRIMARY KEY (kid, nonce)
)""",
    """CREATE TABLE IF NOT EXISTS purged_jobs (
    id TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    purged_at {REAL} NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS retained_clears (
    job_id TEXT PRIMARY KEY,
    clear_after {REAL} NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS orphan_receipts (
    channel TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    received_at {REAL} NOT NULL,
    PRIMARY KEY (channel, provider_id)
)""",
)

#: Version 2: the PLP directory (issue 14). Members are personal data: `remove-member` deletes
#: them (and pseudonymises their stored deliveries); `phone_kind` is the number's kind, computed
#: at import, so that resolving a 10,000-member audience parses no number.
V2: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS plps (
    id TEXT PRIMARY KEY,
    names TEXT NOT NULL DEFAULT '{{}}',
    zone TEXT,
    code_word TEXT,
    sender_id TEXT,
    coordinators TEXT NOT NULL DEFAULT '[]',
    updated_at {REAL} NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS members (
    plp_id TEXT NOT NULL REFERENCES plps(id) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    phone TEXT,
    phone_kind TEXT,
    email TEXT,
    lang TEXT NOT NULL,
    no_voice INTEGER NOT NULL DEFAULT 0,
    quiet_hours TEXT,
    consent_at TEXT,
    cold_unsubscribed INTEGER NOT NULL DEFAULT 0,
    updated_at {REAL} NOT NULL,
    PRIMARY KEY (plp_id, ref)
)""",
    "CREATE INDEX IF NOT EXISTS members_phone ON members(phone)",
    """CREATE TABLE IF NOT EXISTS member_groups (
    plp_id TEXT NOT NULL,
    ref TEXT NOT NULL,
    grp TEXT NOT NULL,
    PRIMARY KEY (plp_id, grp, ref),
    FOREIGN KEY (plp_id, ref) REFERENCES members(plp_id, ref) ON DELETE CASCADE
)""",
)

#: Version 3: several nodes on one store (issue 13). A node's row holds its lease; a
#: delivery a node took from the shared store names that node's boot (`claimed_by`), valid
#: while that boot's lease lives (one row renewed per heartbeat, not one per delivery).
V3: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    boot_id TEXT NOT NULL,
    started_at {REAL} NOT NULL,
    heartbeat {REAL} NOT NULL,
    lease_until {REAL} NOT NULL,
    mqtt_client TEXT NOT NULL
)""",
    "ALTER TABLE deliveries ADD COLUMN claimed_by TEXT",
    "CREATE INDEX IF NOT EXISTS deliveries_claim ON deliveries(state, channel, claimed_by)",
)

#: Version 4: a large job is stored in chunks (gateway.store_jobs `begin_job`, `add_members`):
#: `complete` is 0 until its last chunk is in; a job is never done before (a redelivery resumes).
V4: tuple[str, ...] = ("ALTER TABLE jobs ADD COLUMN complete INTEGER NOT NULL DEFAULT 1",)

#: Version 5: an audience or follow-up job's members, frozen with its header while it is stored
#: in chunks (`frozen`: their keys, gateway.frozen; NULL once complete), so that a redelivery
#: after a crash resumes from the members the job was accepted with.
V5: tuple[str, ...] = ("ALTER TABLE jobs ADD COLUMN frozen TEXT",)

#: Version 6: a job's delivery counts (its status, every `job_status_interval`) are read from
#: an index alone: (job_id, state) plus the channel. Without the channel each count read every
#: delivery row of the job (80 ms for 100,000, half the store thread's time on such a job;
#: 8 ms from the index). It replaces the (job_id, state) index, a prefix of it.
V6: tuple[str, ...] = (
    "CREATE INDEX IF NOT EXISTS deliveries_job_counts ON deliveries(job_id, state, channel)",
    "DROP INDEX IF EXISTS deliveries_job_state",
)

#: Every migration, in order: MIGRATIONS[i] brings the schema from version i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (V1, V2, V3, V4, V5, V6)

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version"
    " (version INTEGER NOT NULL, applied_at {REAL} NOT NULL)"
)


def current_version(db: Db) -> int:
    """The store's version: 0 for an empty store, 1 for a SQLite file from before versioning."""
    row = db.execute("SELECT max(version) AS v FROM schema_version").fetchone()
    if row is not None and row["v"] is not None:
        return int(row["v"])
    return 1 if _has_jobs_table(db) else 0


def _has_jobs_table(db: Db) -> bool:
    if db.name == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='jobs'"
    else:
        sql = (
            "SELECT 1 FROM information_schema.tables"
            " WHERE table_schema=current_schema() AND table_name='jobs'"
        )
    return db.execute(sql).fetchone() is not None


def migrate(db: Db, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the store to the newest version this code knows; return that version.
    Raises `SchemaTooNew` for a store at a version above it."""
    known = len(migrations)
    db.begin()
    try:
        db.lock_schema()
        db.execute(db.ddl(_VERSION_TABLE))
        version = current_version(db)
        if version > known:
            raise SchemaTooNew(
                f"the {db.name} store is at schema version {version}, newer than this gateway"
                f" knows ({known}): it was written by a newer version; upgrade this gateway"
                " (a schema is never downgraded)"
            )
        empty = db.execute("SELECT 1 FROM schema_version LIMIT 1").fetchone() is None
        if empty and version == 1:
            log.info("%s store from before schema versioning adopted as version 1", db.name)
            db.execute("INSERT INTO schema_version VALUES (1, ?)", (time.time(),))
        for target in range(version + 1, known + 1):
            for statement in migrations[target - 1]:
                db.execute(db.ddl(statement))
            db.execute("INSERT INTO schema_version VALUES (?, ?)", (target, time.time()))
            log.info("%s store migrated to schema version %d", db.name, target)
    except BaseException:
        db.rollback()
        raise
    db.commit()
    return known
