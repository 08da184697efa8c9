"""The store contract: every store method the rest of the gateway calls, whatever the engine.

`SqliteStore` and `PostgresStore` (one logic, `gateway.store.SqlStore`) implement it; the
contract suite (tests/test_store_contract.py) runs every method on both. Methods are
synchronous, called from the store's one thread (`gateway.async_store`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from .directory import Audience, Member, Plp
from .domain import DeliveryState, Job, JobState, Priority, Recipient
from .rows import AddResult, Change, DeliveryRow, JobRow
from .signing import SeenNonce
from .store_cluster import NodeRow, Reaped
from .store_directory import ImportResult
from .store_tx import Call

T = TypeVar("T")


class StoreContract(Protocol):
    @property
    def backend(self) -> str: ...

    schema_version: int

    def close(self) -> None: ...

    # transactions
    def atomically(self, fn: Callable[[], T], durable: bool = False) -> T: ...

    def at_once(self, fn: Callable[[], T]) -> T: ...

    def many(self, fn: Callable[..., T], calls: Sequence[Call]) -> list[T | Exception]: ...

    # jobs
    def add_job(
        self,
        job: Job,
        content_hash: str,
        enabled_channels: frozenset[str],
        now: float | None = None,
        claim: bool = False,
    ) -> tuple[AddResult, list[DeliveryRow]]: ...

    def begin_job(
        self,
        job: Job,
        content_hash: str,
        now: float | None = None,
        frozen: str | None = None,
    ) -> tuple[AddResult, int]: ...

    def frozen_members(self, job_id: str) -> str | None: ...

    def add_members(
        self,
        job_id: str,
        recipients: Sequence[Recipient],
        enabled_channels: frozenset[str],
        body: str | None = None,
        now: float | None = None,
        claim: int = 0,
    ) -> list[DeliveryRow]: ...

    def add_fallback(
        self, delivery_id: int, channel: str, enabled: frozenset[str]
    ) -> DeliveryRow | None: ...

    def job(self, job_id: str) -> Job | None: ...

    def job_row(self, job_id: str) -> JobRow | None: ...

    def active_jobs(self) -> list[JobRow]: ...

    def counts(self, job_id: str) -> dict[str, dict[str, int]]: ...

    def job_with_counts(self, job_id: str) -> tuple[JobRow, dict[str, dict[str, int]]] | None: ...

    def member_state_sets(self, job_id: str) -> list[tuple[frozenset[DeliveryState], int]]: ...

    def recent_jobs(self, limit: int) -> list[JobRow]: ...

    def close_job(
        self, job_id: str, state: JobState, delivery_state: DeliveryState, reason: str
    ) -> list[Change]: ...

    def transition_job_if_done(self, job_id: str) -> JobState | None: ...

    def finish_receipt_waits(
        self, waits: Mapping[str, float], now: float | None = None
    ) -> list[tuple[str, int]]: ...

    # deliveries
    def deliveries(self, job_id: str) -> list[DeliveryRow]: ...

    def delivery(self, delivery_id: int) -> DeliveryRow: ...

    def pending_deliveries(self) -> list[tuple[DeliveryRow, Priority]]: ...

    def transition(
        self, delivery_id: int, new: DeliveryState, now: float | None = None, **fields: Any
    ) -> Change | None: ...

    def claim_batch(self, calls: Sequence[Call]) -> list[Change | Exception | None]: ...

    def record_sent_batch(self, calls: Sequence[Call]) -> list[list[Change] | Exception]: ...

    def recover_interrupted(self) -> list[DeliveryRow]: ...

    # several nodes on one store (gateway.store_cluster)
    def heartbeat(
        self,
        node: str,
        boot_id: str,
        lease: float,
        now: float | None = None,
        mqtt_client: str = "",
    ) -> None: ...

    def leave(self, node: str, boot_id: str) -> int: ...

    def reap_dead(self, now: float | None = None) -> Reaped: ...

    def claim_due(
        self,
        boot_id: str,
        channel: str,
        limit: int,
        now: float | None = None,
        priority: Priority | None = None,
    ) -> list[tuple[DeliveryRow, Priority]]: ...

    def nodes(self) -> list[NodeRow]: ...

    def acknowledge_member(self, job_id: str, rindex: int, except_id: int) -> list[Change]: ...

    def find_member_by_phone(self, phone: str, since: float) -> list[DeliveryRow]: ...

    # receipts
    def apply_receipts(
        self, receipts: list[tuple[str, str, DeliveryState, str | None]]
    ) -> list[tuple[bool, Change | None]]: ...

    def apply_receipts_batch(
        self, calls: Sequence[Call]
    ) -> list[list[tuple[bool, Change | None]] | Exception]: ...

    def match_orphan_receipts(self, limit: int = 1000) -> list[Change]: ...

    def purge_orphan_receipts(self, older_than: float) -> int: ...

    # retention and replay proofs
    def note_rejected(self, job_ids: Sequence[str], clear_after: float) -> None: ...

    def due_retained_clears(self, now: float, limit: int = 1000) -> list[str]: ...

    def retained_cleared(self, job_ids: Sequence[str]) -> None: ...

    def voice_jobs(self, finished_before: float) -> tuple[list[Job], list[Job]]: ...

    def purge(self, finished_before: float) -> int: ...

    def remember_nonces(self, seen: Sequence[SeenNonce]) -> None: ...

    def seen_nonces(self) -> list[SeenNonce]: ...

    # the PLP directory (gateway.store_directory)
    def set_plp(self, plp: Plp, now: float | None = None) -> None: ...

    def plp(self, plp_id: str) -> Plp | None: ...

    def plps(self) -> list[tuple[Plp, int]]: ...

    def import_members(
        self,
        plp_id: str,
        members: Sequence[Member],
        replace: bool = False,
        plp: Plp | None = None,
        now: float | None = None,
    ) -> ImportResult: ...

    def members(self, plp_id: str, groups: Sequence[str] = ()) -> list[Member]: ...

    def find_members(self, ref: str | None = None, phone: str | None = None) -> list[Member]: ...

    def set_cold_unsubscribed(self, plp_id: str, ref: str, value: bool) -> bool: ...

    def resolve_audience(self, plps: Sequence[str], groups: Sequence[str] = ()) -> Audience: ...

    def members_by_key(self, keys: Sequence[tuple[str, str]]) -> list[Member | None]: ...

    def cold_counts_since(self, since: float, except_job: str) -> dict[str, int]: ...

    def remove_member(self, ref: str, plp_id: str | None = None) -> int: ...
