"""Several nodes on one store: the node table (leases, heartbeats), claims of due deliveries,
and the takeover of a dead node's claims.

A delivery a node took names that node's boot in `claimed_by`; the claim holds while the
boot's row in `nodes` has a lease in the future. A heartbeat renews one row, not every
delivery. A node whose lease ran out (kill -9, network cut, frozen) loses its claims to the
first live node that looks (`reap_dead`): what it was sending becomes `retrying` with
`possibly_sent` (the single node's in-flight rule), what it held queued goes back to the
pool. A frozen node that wakes up finds its claims gone: `claim(owner=...)` fences it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .domain import Priority
from .rows import DeliveryRow, row_to_delivery
from .store_batches import _CLAIMABLE
from .store_jobs import PENDING
from .store_tx import Transactions

# Every state a node may hold, and those a claim takes (`queued`, `retrying`...): one list
# with the single node's claim (gateway.store_batches), as SQL.
_WAITING_SQL = ",".join(f"'{state}'" for state in _CLAIMABLE)
_OPEN_SQL = ",".join(f"'{state}'" for state in PENDING)


@dataclass(frozen=True)
class NodeRow:
    node: str
    boot_id: str
    started_at: float
    heartbeat: float
    lease_until: float
    mqtt_client: str  # its MQTT client id (whose session a live node adopts when it died)
    held: dict[str, int]  # open delivery state -> deliveries this boot holds

    def live(self, now: float) -> bool:
        return self.lease_until > now


@dataclass(frozen=True)
class Reaped:
    """What `reap_dead` took from dead boots."""

    nodes: list[str]  # their node names ("?" for a boot whose node has started again)
    in_flight: list[DeliveryRow]  # attempts under way there, now retrying, possibly sent
    freed: int  # deliveries they held queued or retrying, back in the pool


class ClusterClaims(Transactions):
    def heartbeat(
        self,
        node: str,
        boot_id: str,
        lease: float,
        now: float | None = None,
        mqtt_client: str = "",
    ) -> None:
        """Renew this node's lease (a new boot replaces the node's row: the old boot's claims
        are then orphans that `reap_dead` frees at once)."""
        now = now or time.time()

        def work() -> None:
            self._db.execute(
                "INSERT INTO nodes(node, boot_id, started_at, heartbeat, lease_until,"
                " mqtt_client) VALUES (?,?,?,?,?,?) ON CONFLICT (node) DO UPDATE SET"
                " boot_id=excluded.boot_id, heartbeat=excluded.heartbeat,"
                " lease_until=excluded.lease_until, mqtt_client=excluded.mqtt_client,"
                " started_at=CASE WHEN nodes.boot_id=excluded.boot_id"
                " THEN nodes.started_at ELSE excluded.started_at END",
                (node, boot_id, now, now, now + lease, mqtt_client),
            )

        self._tx(work)

    def leave(self, node: str, boot_id: str) -> int:
        """A clean stop: give back what this boot holds and end its lease at once.
        Returns how many deliveries went back to the pool."""

        def work() -> int:
            cur = self._db.execute(
                f"UPDATE deliveries SET claimed_by=NULL"  # noqa: S608
                f" WHERE claimed_by=? AND state IN ({_WAITING_SQL})",
                (boot_id,),
            )
            self._db.execute(
                "UPDATE nodes SET lease_until=? WHERE node=? AND boot_id=?",
                (time.time(), node, boot_id),
            )
            return cur.rowcount

        result: int = self._tx(work)
        return result

    def reap_dead(self, now: float | None = None) -> Reaped:
        """Free the claims of every boot without a live lease; the attempts it had in flight
        become `retrying`, possibly sent (returned, for the log and status)."""
        now = now or time.time()
        dead = (
            "claimed_by IS NOT NULL AND claimed_by NOT IN"
            " (SELECT boot_id FROM nodes WHERE lease_until > ?)"
        )

        def work() -> Reaped:
            names = self._db.execute(
                "SELECT DISTINCT d.claimed_by AS boot, n.node FROM deliveries d"  # noqa: S608
                " LEFT JOIN nodes n ON n.boot_id = d.claimed_by"
                f" WHERE d.state IN ({_OPEN_SQL}) AND d.{dead}",
                (now,),
            ).fetchall()
            if not names:
                return Reaped([], [], 0)
            rows = self._db.execute(
                f"UPDATE deliveries SET state='retrying', possibly_sent=1,"  # noqa: S608
                f" last_error='interrupted', next_attempt_at=NULL, claimed_by=NULL,"
                f" updated_at=? WHERE state='sending' AND {dead} RETURNING *",
                (now, now),
            ).fetchall()
            freed = self._db.execute(
                f"UPDATE deliveries SET claimed_by=NULL"  # noqa: S608
                f" WHERE state IN ({_WAITING_SQL}) AND {dead}",
                (now,),
            ).rowcount
            nodes = sorted({r["node"] or "?" for r in names})
            return Reaped(nodes, [row_to_delivery(r) for r in rows], freed)

        result: Reaped = self._tx(work)
        return result

    def claim_due(
        self,
        boot_id: str,
        channel: str,
        limit: int,
        now: float | None = None,
        priority: Priority | None = None,
    ) -> list[tuple[DeliveryRow, Priority]]:
        """Take up to `limit` due, unclaimed deliveries of `channel` for this boot: hot before
        cold, then the longest waiting. Other nodes' concurrent claims skip the rows this one
        locks (PostgreSQL's `FOR UPDATE SKIP LOCKED`), so no row is taken twice."""
        now = now or time.time()
        lock = "" if self._db.name == "sqlite" else " FOR UPDATE OF d SKIP LOCKED"
        only = "" if priority is None else f" AND j.priority={int(priority)}"

        def work() -> list[tuple[DeliveryRow, Priority]]:
            rows = self._db.execute(
                "SELECT d.id, j.priority AS jprio FROM deliveries d"  # noqa: S608
                " JOIN jobs j ON j.id = d.job_id"
                f" WHERE d.state IN ({_WAITING_SQL}) AND d.claimed_by IS NULL"
                " AND d.channel=? AND j.state IN ('accepted','running')"
                " AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= ?)"
                f"{only} ORDER BY j.priority, COALESCE(d.next_attempt_at, d.created_at), d.id"
                f" LIMIT ?{lock}",
                (channel, now, limit),
            ).fetchall()
            if not rows:
                return []
            prio = {r["id"]: Priority(r["jprio"]) for r in rows}
            marks = ",".join("?" * len(rows))
            taken = self._db.execute(
                f"UPDATE deliveries SET claimed_by=? WHERE id IN ({marks})"  # noqa: S608
                " AND claimed_by IS NULL RETURNING *",
                (boot_id, *prio),
            ).fetchall()
            out = [(row_to_delivery(r), prio[r["id"]]) for r in taken]
            out.sort(key=lambda item: (item[1], item[0].id))
            return out

        result: list[tuple[DeliveryRow, Priority]] = self._tx(work)
        return result

    def nodes(self) -> list[NodeRow]:
        """Every node the store knows, with what each live boot holds (for `status`)."""

        def read() -> list[NodeRow]:
            held: dict[str, dict[str, int]] = {}
            for r in self._db.execute(
                "SELECT claimed_by, state, count(*) AS n FROM deliveries"  # noqa: S608
                f" WHERE claimed_by IS NOT NULL AND state IN ({_OPEN_SQL})"
                " GROUP BY claimed_by, state"
            ).fetchall():
                held.setdefault(r["claimed_by"], {})[r["state"]] = int(r["n"])
            return [
                NodeRow(
                    r["node"],
                    r["boot_id"],
                    r["started_at"],
                    r["heartbeat"],
                    r["lease_until"],
                    r["mqtt_client"],
                    held.get(r["boot_id"], {}),
                )
                for r in self._db.execute("SELECT * FROM nodes ORDER BY node").fetchall()
            ]

        result: list[NodeRow] = self._read(read)
        return result
