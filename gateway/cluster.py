"""This node in a cluster (`[mqtt] shared_group`, a PostgreSQL store): its lease, renewed by
a heartbeat; the takeover of dead nodes' claims; and the feed of the scheduler from the
shared store (due deliveries claimed in batches, hot before cold).

The store does the fencing (gateway.store_cluster); this loop only keeps the lease alive
and asks for work. A node that cannot renew its lease in time stops taking attempts: past
the lease, other nodes may already hold its deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from .async_store import AsyncStore
from .config import ClusterConfig, Config
from .domain import Priority
from .scheduler import Scheduler
from .store_cluster import NodeRow

log = logging.getLogger("gateway.cluster")

#: The newest jobs whose statuses the publishing node keeps up to date.
RECENT_JOBS = 200


@runtime_checkable
class SharedLimits(Protocol):
    """A channel whose provider limits (an SMSC account's rate, a trunk's channels) are for
    all nodes together: each node takes its share of the live nodes."""

    def share(self, nodes: int) -> None: ...


class ClusterNode:
    def __init__(
        self,
        store: AsyncStore,
        beats: AsyncStore,
        scheduler: Scheduler,
        node: str,
        boot_id: str,
        config: ClusterConfig,
        on_nodes: Callable[[int], None] = lambda n: None,
        mqtt_client: str = "",
        adopt: Callable[[str], Awaitable[int]] | None = None,
        job_dirty: Callable[[str], None] = lambda job_id: None,
        status_interval: float = 0.5,
    ) -> None:
        self._store = store
        # Heartbeats and takeovers on a connection (and thread) of their own: a node busy
        # storing a 6,000-delivery job must not lose its lease waiting behind that work.
        self._beats = beats
        self._scheduler = scheduler
        self.node = node
        self.boot_id = boot_id
        self._cfg = config
        self._on_nodes = on_nodes
        self._mqtt_client = mqtt_client
        # Takes the jobs the broker queued for a dead node's MQTT session (gateway.adoption).
        self._adopt = adopt
        self._adopted: set[str] = set()  # boot ids whose session was adopted
        self._adopting: asyncio.Task[None] | None = None
        # One node publishes the jobs' statuses (the first live one by name): see `_statuses`.
        self.leads = False
        self._job_dirty = job_dirty
        self._status_interval = status_interval
        self.live_nodes = 1
        self._joined = asyncio.Event()  # this node may claim work
        self.taken_over = 0  # deliveries freed from dead nodes by this node

    @property
    def heartbeat_interval(self) -> float:
        # Three heartbeats per lease: one lost or late round trip does not lose the lease.
        return self._cfg.lease / 3

    async def join(self) -> None:
        """Take a lease before the first claim (and before the scheduler starts). With other
        nodes live, wait one heartbeat before claiming: they lower their shares of the
        provider limits (`SharedLimits`) at their next heartbeat, before this one sends."""
        await self._beat()
        others = await self._count_live()
        if others <= 1:
            self._joined.set()
        else:
            log.info("cluster: joined %d live nodes", others - 1)
            asyncio.get_running_loop().call_later(self.heartbeat_interval * 1.2, self._joined.set)

    async def _count_live(self) -> int:
        nodes = await self._beats.run(self._beats.store.nodes)
        now = time.time()
        self._adopt_dead(nodes, now)
        live = max(1, sum(1 for n in nodes if n.live(now)))
        names = sorted(n.node for n in nodes if n.live(now))
        leads = not names or names[0] == self.node
        if leads != self.leads:
            log.info("cluster: %s the jobs' statuses", "publishing" if leads else "not publishing")
        self.leads = leads
        if live != self.live_nodes:
            log.info("cluster: %d live nodes share the provider limits", live)
        self.live_nodes = live
        self._on_nodes(live)
        return live

    async def leave(self) -> None:
        """A clean stop: what this node holds goes back to the pool at once."""
        freed = await self._store.run(self._store.store.leave, self.node, self.boot_id)
        log.info("cluster: left; %d deliveries handed back to the other nodes", freed)
        self._beats.close()

    async def _beat(self) -> None:
        store = self._beats.store
        await self._beats.run(
            store.heartbeat,
            self.node,
            self.boot_id,
            self._cfg.lease,
            mqtt_client=self._mqtt_client,
        )

    async def run(self) -> None:
        """Heartbeats, takeovers and the feed, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._heartbeats(), name="cluster-heartbeat")
            tg.create_task(self._feed(), name="cluster-feed")
            tg.create_task(self._statuses(), name="cluster-statuses")

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await self._beat()
            await self._count_live()
            now = time.time()
            reaped = await self._beats.run(self._beats.store.reap_dead, now)
            if reaped.nodes:
                self.taken_over += len(reaped.in_flight) + reaped.freed
                log.warning(
                    "cluster: took over from %s (lease ran out): %d attempts in flight there"
                    " are retried (possibly sent), %d waiting deliveries back in the pool",
                    ",".join(reaped.nodes),
                    len(reaped.in_flight),
                    reaped.freed,
                )
                self._scheduler.reaped(reaped.in_flight)
            self._scheduler.wake.set()

    async def _statuses(self) -> None:
        """The publishing node marks every active job (and every job that changed state)
        for a status from the shared store's counts, each interval: one publisher, so the
        retained status of a job only moves forward, whichever node did the work."""
        published: dict[str, float] = {}  # job -> its updated_at when last published
        while True:
            await asyncio.sleep(self._status_interval)
            if not self.leads:
                published.clear()
                continue
            for row in await self._store.run(self._store.store.recent_jobs, RECENT_JOBS):
                if not row.state.final or published.get(row.id) != row.updated_at:
                    published[row.id] = row.updated_at
                    self._job_dirty(row.id)

    def _adopt_dead(self, nodes: list[NodeRow], now: float) -> None:
        """The first live node by name adopts the MQTT sessions of dead nodes, one at a
        time, once per boot of theirs."""
        if self._adopt is None or (self._adopting is not None and not self._adopting.done()):
            return
        live = sorted(n.node for n in nodes if n.live(now))
        if live and live[0] != self.node:
            return
        for n in nodes:
            if n.live(now) or n.boot_id in self._adopted or not n.mqtt_client:
                continue
            if n.mqtt_client == self._mqtt_client:
                continue
            self._adopting = asyncio.create_task(self._adopt_one(n), name="cluster-adopt")
            return

    async def _adopt_one(self, dead: NodeRow) -> None:
        assert self._adopt is not None
        try:
            await self._adopt(dead.mqtt_client)
        except Exception as exc:  # the broker away, the node back: tried again next beat
            log.warning("cluster: adopting the MQTT session of %s failed: %r", dead.node, exc)
        else:
            self._adopted.add(dead.boot_id)

    async def _feed(self) -> None:
        """Claim due work whenever a lane has room: at once when told (a job came in), else
        every `poll_interval` (work other nodes accepted or gave back)."""
        wake = self._scheduler.wake
        await self._joined.wait()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._cfg.poll_interval)
            wake.clear()
            for channel in self._scheduler.enabled:
                await self._claim(channel)

    async def _claim(self, channel: str) -> None:
        batch = self._cfg.claim_batch
        room, hot_room = self._scheduler.room(channel, batch)
        store = self._store.store
        if room > 0:
            rows = await self._store.run(store.claim_due, self.boot_id, channel, room)
        elif hot_room > 0:
            # Full of cold work: hot work is still taken (hot before cold across the cluster).
            rows = await self._store.run(
                store.claim_due, self.boot_id, channel, hot_room, None, Priority.HOT
            )
        else:
            return
        if rows:
            log.debug("cluster: claimed %d %s deliveries", len(rows), channel)
            await self._scheduler.take(rows)


def describe_nodes(nodes: list[NodeRow], now: float) -> list[str]:
    """`plp-gateway status`: one line per node the store knows."""
    lines = []
    for n in nodes:
        state = "live" if n.live(now) else "gone"
        held = ", ".join(f"{k} {v}" for k, v in sorted(n.held.items())) or "nothing"
        lease = n.lease_until - now
        lease_text = (
            f"lease {lease:.1f} s left" if lease > 0 else f"lease ran out {-lease:.0f} s ago"
        )
        lines.append(
            f"node {n.node}: {state}, boot {n.boot_id[:8]}, {lease_text},"
            f" heartbeat {now - n.heartbeat:.1f} s ago, holds {held}"
        )
    return lines


def print_cluster(config: Config, as_json: bool = False) -> int:
    """`plp-gateway status` without a job: the nodes the store knows, their leases and what
    each holds. Exit 0 with at least one live node, 1 without."""
    from .store import open_store

    store = open_store(config.store)
    try:
        nodes = store.nodes()
    finally:
        store.close()
    now = time.time()
    live = sum(1 for n in nodes if n.live(now))
    if as_json:
        print(
            json.dumps(
                {
                    "clustered": config.clustered,
                    "live": live,
                    "nodes": [
                        {
                            "node": n.node,
                            "live": n.live(now),
                            "boot_id": n.boot_id,
                            "lease_left": round(n.lease_until - now, 1),
                            "heartbeat_age": round(now - n.heartbeat, 1),
                            "holds": n.held,
                        }
                        for n in nodes
                    ],
                }
            )
        )
    else:
        mode = (
            f"cluster (shared group {config.mqtt.shared_group})"
            if config.clustered
            else "single node (no [mqtt] shared_group)"
        )
        print(f"{mode}: {live} live of {len(nodes)} nodes known to the store")
        for line in describe_nodes(nodes, now):
            print("  " + line)
    return 0 if live else 1
