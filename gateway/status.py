"""What the gateway tells the world on MQTT: topics and payloads of status, events, health.

Every payload identifies recipients by ref and masked address only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from . import __version__
from .async_store import AsyncStore
from .domain import DeliveryState
from .job_id import checked_job_id
from .outcomes import count_state_sets
from .privacy import address_hash
from .rows import Change, JobRow
from .store_contract import StoreContract

MemberStates = tuple[frozenset[DeliveryState], int]

log = logging.getLogger("gateway.status")

EVENT_BATCH = 1000  # delivery events per batch message at most
# A delivery's way to its member is logged at DEBUG: at INFO, three or four lines per message
# cost a fifth of the gateway's CPU. A job's outcome is one INFO line when it ends
# (`publish_job`); retries, failures, replies and members' choices stay at INFO, one each.
_ROUTINE = frozenset(
    {DeliveryState.QUEUED, DeliveryState.SENDING, DeliveryState.SENT, DeliveryState.DELIVERED}
)


def iso(ts: float | None) -> str | None:
    """RFC 3339 UTC with milliseconds, e.g. `2026-11-23T14:00:00.123Z`."""
    if ts is None:
        return None
    ms = int(ts * 1000)
    second, millis = divmod(ms, 1000)
    return f"{_iso_second(second)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4)
def _iso_second(second: int) -> str:
    # Events come by thousands per second: the date part is formatted once per second.
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON. orjson writes the same bytes as `json.dumps(ensure_ascii=False,
    separators=(",", ":"))` for what the gateway publishes (strings, integers, booleans,
    null; a float's exponent aside: `1e-7`, not `1e-07`) in a twentieth of the time: four
    events per SMS. What orjson refuses (a non-string key, an integer past 64 bits, a lone
    surrogate) goes through `json` as before."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class Topics:
    def __init__(self, prefix: str, node: str) -> None:
        self.prefix = prefix
        self.node = node
        self.jobs = f"{prefix}/jobs"
        self.cancel_filter = f"{prefix}/jobs/+/cancel"
        self.rejected = f"{prefix}/jobs/rejected"
        self.availability = f"{prefix}/gateway/{node}/availability"
        self.health = f"{prefix}/gateway/{node}/health"
        self.inbound_sms = f"{prefix}/inbound/sms"
        self.directory_filter = f"{prefix}/directory/+/sync"

    # A job's topics are built only from an id that keeps the id rule (InvalidJobId else):
    # one topic level under <prefix>/jobs/, never a wildcard, never another job's subtree.
    def job_status(self, job_id: str) -> str:
        return f"{self.prefix}/jobs/{checked_job_id(job_id)}/status"

    def job_deliveries(self, job_id: str) -> str:
        return f"{self.prefix}/jobs/{checked_job_id(job_id)}/deliveries"

    def job_delivery_batches(self, job_id: str) -> str:
        return f"{self.prefix}/jobs/{checked_job_id(job_id)}/deliveries/batch"

    def directory_result(self, plp_id: str) -> str:
        return f"{self.prefix}/directory/{plp_id}/result"

    def directory_plp(self, topic: str) -> str | None:
        """The PLP of a `<prefix>/directory/<plp>/sync` topic."""
        parts = topic.split("/")
        base = self.prefix.split("/")
        if len(parts) == len(base) + 3 and parts[: len(base)] == base and parts[-1] == "sync":
            return parts[len(base) + 1] if parts[len(base)] == "directory" else None
        return None

    def cancel_job_id(self, topic: str) -> str | None:
        parts = topic.split("/")
        base = self.prefix.split("/")
        if len(parts) == len(base) + 3 and parts[: len(base)] == base and parts[-1] == "cancel":
            return parts[len(base) + 1]
        return None


Publish = Callable[..., None]


class StatusSink(Protocol):
    """Another consumer of what the publisher reports, e.g. gateway.metrics.Metrics.
    Called with states and channel names only, never personal data."""

    def job_state(self, state: str) -> None: ...

    def delivery_state(self, channel: str, state: str) -> None: ...

    def retry(self, channel: str) -> None: ...

    def reject(self, reason: str) -> None: ...


def _counts_and_member_sets(
    store: StoreContract, job_id: str
) -> tuple[tuple[JobRow, dict[str, dict[str, int]]] | None, list[MemberStates]]:
    """A job with its delivery counts, and its members' sets of delivery states. A member has
    at most one delivery per channel: when the job's deliveries are all on one channel, each
    member's set is its one delivery's state, read from the counts, without a second scan of
    the job (half the store's time for a status of a large job)."""
    found = store.job_with_counts(job_id)
    if found is not None and len(found[1]) == 1:
        ((_, per_state),) = found[1].items()
        return found, [(frozenset({DeliveryState(s)}), n) for s, n in per_state.items()]
    return found, store.member_state_sets(job_id)


class StatusPublisher:
    """Turns store changes into MQTT messages. Job status is coalesced per job."""

    def __init__(
        self,
        publish: Publish,
        topics: Topics,
        store: AsyncStore,
        job_interval: float,
        delivery_events: str = "each",
        rejected_retention: float = 30 * 86400,
    ) -> None:
        self._publish = publish
        # The node's health: the daemon sends it through its own connection (gateway.presence);
        # the availability goes with the job connection's will (gateway.mqtt).
        self.publish_node: Publish = publish
        # A rejected job's retained status is cleared this long after (`[store] retention_days`).
        self.rejected_retention = rejected_retention
        self._rejected: list[str] = []  # ids whose rejected status is not yet noted in the store
        # "each": one message per delivery change; "batch": one message per job and flush
        # holding that job's events in order (for jobs of thousands at full SMSC speed).
        self._batch_events = delivery_events == "batch"
        self._events: dict[str, list[dict[str, Any]]] = {}
        self.topics = topics
        self._store = store
        self._interval = job_interval
        self._dirty: set[str] = set()
        # Whether this node publishes job statuses: several nodes (gateway.cluster) leave it
        # to one of them, so that a job's retained status never goes back to older counts.
        self.publishes_jobs: Callable[[], bool] = lambda: True
        self._wake = asyncio.Event()
        self.boot_id = uuid.uuid4().hex
        self.started = time.time()
        self.sinks: list[StatusSink] = []
        self._job_states: dict[str, tuple[str, bool]] = {}  # job id -> last state, final
        self._summarised: dict[str, None] = {}  # jobs whose end was logged (oldest first)

    # -- deliveries ---------------------------------------------------------------------
    def delivery(self, change: Change, priority: str | None = None) -> None:
        d = change.delivery
        event: dict[str, Any] = {
            "job_id": d.job_id,
            "delivery_id": d.id,
            "ref": d.ref,
            "channel": d.channel,
            "address": d.masked,
            "lang": d.lang,
            "state": d.state.value,
            "previous": change.old_state.value,
            "attempt": d.attempts,
            "reason": d.last_error,
            "time": iso(d.updated_at),
        }
        if d.detail:
            event["detail"] = d.detail
        if d.provider_ids:
            event["provider_id_hash"] = [address_hash(p) for p in d.provider_ids]
        if d.next_attempt_at and d.state.value in ("retrying", "held"):
            event["next_attempt_at"] = iso(d.next_attempt_at)
        if d.possibly_sent:
            event["possibly_sent"] = True
        if self._batch_events:
            pending = self._events.setdefault(d.job_id, [])
            pending.append(event)
            if len(pending) >= EVENT_BATCH:
                self._publish_events(d.job_id)
        else:
            self._publish(self.topics.job_deliveries(d.job_id), dumps(event), qos=1)
        for sink in self.sinks:
            sink.delivery_state(d.channel, d.state.value)
            if d.state.value == "retrying":
                sink.retry(d.channel)
        log.log(
            logging.DEBUG if d.state in _ROUTINE else logging.INFO,
            "delivery %s job=%s ref=%s channel=%s to=%s %s->%s attempt=%d reason=%s",
            d.id,
            d.job_id,
            d.ref,
            d.channel,
            d.masked,
            change.old_state.value,
            d.state.value,
            d.attempts,
            d.last_error or "-",
        )
        self.job_dirty(d.job_id, immediate=change.job_finished is not None)

    # -- jobs -------------------------------------------------------------------------
    def job_dirty(self, job_id: str, immediate: bool = False) -> None:
        self._dirty.add(job_id)
        if immediate:
            self._wake.set()

    async def publish_job(self, job_id: str) -> None:
        found, states = await self._store.run(_counts_and_member_sets, self._store.store, job_id)
        if found is None:
            return
        row, counts = found
        totals: dict[str, int] = {}
        for per_state in counts.values():
            for state, n in per_state.items():
                totals[state] = totals.get(state, 0) + n
        payload = {
            "id": row.id,
            "state": row.state.value,
            "priority": row.priority.label,
            "counts": counts,
            "totals": totals,
            "deliveries": sum(totals.values()),
            "members": count_state_sets(states).as_dict(),
            "created_at": iso(row.created_at),
            "updated_at": iso(row.updated_at),
            "expires_at": iso(row.expires_at),
            "finished_at": iso(row.finished_at),
            "reason": row.reason,
        }
        self._publish(self.topics.job_status(job_id), dumps(payload), qos=1, retain=True)
        self._job_state(job_id, row.state.value, row.state.final)
        if row.state.final:
            self._summarise(job_id, row.state.value, totals)

    def _summarise(self, job_id: str, state: str, totals: Mapping[str, int]) -> None:
        """One INFO line when a job ends: its deliveries per state (logged once per job; a
        cancel's free-text reason stays in the job status, out of the log)."""
        if job_id in self._summarised:
            return
        self._summarised[job_id] = None
        if len(self._summarised) > 10_000:  # bounded: the oldest are forgotten
            del self._summarised[next(iter(self._summarised))]
        log.info(
            "job %s %s: %d deliveries, %s",
            job_id,
            state,
            sum(totals.values()),
            " ".join(f"{s}={n}" for s, n in sorted(totals.items())) or "none",
        )

    def _job_state(self, job_id: str, state: str, final: bool) -> None:
        # Job states as published: a state shorter than the status interval may be skipped.
        if not self.sinks:
            return
        last = self._job_states.get(job_id)
        if last is not None and last[0] == state:
            return
        for sink in self.sinks:
            sink.job_state(state)
        self._job_states[job_id] = (state, final)
        if len(self._job_states) > 10_000:  # bounded: forget finished jobs
            self._job_states = {k: v for k, v in self._job_states.items() if not v[1]}

    def job_rejected(self, job_id: str) -> None:
        payload = {"id": job_id, "state": "rejected", "updated_at": iso(time.time())}
        self._publish(self.topics.job_status(job_id), dumps(payload), qos=1, retain=True)
        self._job_state(job_id, "rejected", True)
        self._rejected.append(job_id)  # noted in the store at the next flush, to be cleared

    def clear_job(self, job_id: str) -> None:
        """Remove the job's retained status from the broker (an empty retained message):
        the job was purged, or its rejection is past retention."""
        self._publish(self.topics.job_status(job_id), b"", qos=1, retain=True)
        self._job_states.pop(job_id, None)

    def rejected(
        self,
        errors: list[Mapping[str, str]],
        job_id: str | None,
        topic: str,
        errors_total: int | None = None,
    ) -> None:
        payload = {
            "job_id": job_id,
            "topic": topic,
            "errors": list(errors),
            # `errors` lists the first errors only (gateway.jobs.MAX_ERRORS).
            "errors_total": len(errors) if errors_total is None else errors_total,
            "node": self.topics.node,
            "time": iso(time.time()),
        }
        self._publish(self.topics.rejected, dumps(payload), qos=1)
        for sink in self.sinks:
            for code in {e.get("code", "unknown") for e in errors}:
                sink.reject(code)

    def directory_result(self, plp_id: str, payload: Mapping[str, Any]) -> None:
        self._publish(self.topics.directory_result(plp_id), dumps(dict(payload)), qos=1)

    def inbound(self, payload: Mapping[str, Any]) -> None:
        self._publish(self.topics.inbound_sms, dumps(dict(payload)), qos=1)

    async def run(self) -> None:
        """Flush dirty job statuses, at most one per job per interval."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.flush()

    def _publish_events(self, job_id: str) -> None:
        events = self._events.pop(job_id, [])
        if events:
            payload = {"job_id": job_id, "events": events}
            self._publish(self.topics.job_delivery_batches(job_id), dumps(payload), qos=1)

    async def flush(self) -> None:
        if self._rejected:
            rejected, self._rejected = self._rejected, []
            clear_after = time.time() + self.rejected_retention
            await self._store.run(self._store.store.note_rejected, rejected, clear_after)
        for job_id in list(self._events):
            self._publish_events(job_id)
        dirty, self._dirty = self._dirty, set()
        if not self.publishes_jobs():
            return
        for job_id in dirty:
            await self.publish_job(job_id)

    # -- gateway ---------------------------------------------------------------------
    def health(
        self, state: str, links: Mapping[str, Any], queues: Mapping[str, Any], **extra: Any
    ) -> None:
        payload = {
            "node": self.topics.node,
            "state": state,
            "version": __version__,
            "boot_id": self.boot_id,
            "started_at": iso(self.started),
            "uptime_s": round(time.time() - self.started, 1),
            "links": dict(links),
            "queues": dict(queues),
            **extra,
            "time": iso(time.time()),
        }
        self.publish_node(self.topics.health, dumps(payload), qos=1, retain=True)
