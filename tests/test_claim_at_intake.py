"""A small hot job stored with its attempts claimed (`Scheduler.claims_at_intake`): the attempt
starts without a second claim (at once, or through its lane's queue when the lane has a rate),
and is published `queued` then `sending` like any other; a claim that never started is dropped
when its job is cancelled and given back at a clean stop (not "possibly sent"). A large hot
job's first members are claimed so too, in its header's transaction. And
`AsyncStore.run_now` never uses the connection beside the store's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.async_store import AsyncStore
from gateway.channel import Attempt, Limits, Outcome, RetryPolicy
from gateway.config import JobsConfig
from gateway.domain import DeliveryState, Job, JobState
from gateway.intake import CHUNK_MEMBERS, Intake
from gateway.jobs import parse_job
from gateway.rows import AddResult, Change
from gateway.scheduler import CLAIM_AT_INTAKE, Scheduler
from gateway.status import StatusPublisher, Topics
from gateway.store import SqliteStore
from gateway.store_tx import Call
from tests.fixtures import members
from tests.sms_fixtures import sms_job

SMS = frozenset({"sms"})


class Sms:
    """A channel that records its attempts and accepts each at once."""

    name = "sms"

    def __init__(self, rate: float) -> None:
        self.rate = rate  # attempts/s; a rate makes the scheduler queue every attempt
        self.sent: list[Attempt] = []
        self.got = asyncio.Event()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def limits(self) -> Limits:
        return Limits(concurrency=4, rate=self.rate, retry=RetryPolicy())

    def reconfigure(self, section: Any, /) -> None:
        pass

    async def prepare(self, job: Job) -> Mapping[str, str]:
        return {}

    async def send(self, attempt: Attempt) -> Outcome:
        self.sent.append(attempt)
        self.got.set()
        return Outcome(DeliveryState.SENT, (f"p{attempt.delivery_id}",))

    def health(self) -> Mapping[str, object]:
        return {}


class Stack:
    def __init__(self, path: Path, rate: float) -> None:
        self.store = SqliteStore(path)
        self.claims = 0
        claim_batch = self.store.claim_batch

        def counted(calls: Sequence[Call]) -> list[Change | Exception | None]:
            self.claims += len(calls)
            return claim_batch(calls)

        self.store.claim_batch = counted  # type: ignore[method-assign]
        self.astore = AsyncStore(self.store)
        self.events: list[dict[str, Any]] = []
        self.sms = Sms(rate)
        self.status = StatusPublisher(self.publish, Topics("plp", "t"), self.astore, 0.5)
        self.scheduler = Scheduler(self.astore, {"sms": self.sms}, self.status)

    def publish(self, topic: str, payload: bytes | str, **_: Any) -> None:
        if topic.endswith("/deliveries"):
            self.events.append(json.loads(payload))

    def states(self, delivery_id: int) -> list[tuple[str, int]]:
        return [(e["state"], e["attempt"]) for e in self.events if e["delivery_id"] == delivery_id]

    async def accept(self, job: Job) -> list[int]:
        """What the intake does with a new job."""
        claim = self.scheduler.claims_at_intake(job)
        rows = (await self.astore.run_now(self.store.add_job, job, job.id, SMS, claim=claim))[1]
        await self.scheduler.job_accepted(job, rows)
        return [r.id for r in rows]


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, rate: float = 0.0) -> AsyncIterator[Stack]:
    s = Stack(tmp_path / "gw.sqlite3", rate)
    try:
        yield s
    finally:
        s.astore.close()


def job(job_id: str, n: int = 1, **extra: Any) -> Job:
    raw = json.dumps(sms_job(job_id, members(n), **extra)).encode()
    return parse_job(raw, JobsConfig(), SMS)[0]


async def until(cond: Callable[[], object], timeout: float = 10) -> None:
    """Yield to the loop until `cond()` (the scheduler's queues and store have no event)."""
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0)


@pytest.mark.parametrize("rate", [0.0, 100.0], ids=["at-once", "queued"])
async def test_a_small_hot_job_is_sent_without_a_second_claim(tmp_path: Path, rate: float) -> None:
    async with stack(tmp_path, rate) as s:
        assert not s.scheduler.claims_at_intake(job("cold", priority="cold"))
        assert not s.scheduler.claims_at_intake(job("big", CLAIM_AT_INTAKE + 1))
        await s.scheduler.start()
        (did,) = await s.accept(job("hot"))
        async with asyncio.timeout(10):
            await s.sms.got.wait()
        assert s.sms.sent[0].number == 1 and s.claims == 0
        await until(lambda: s.store.delivery(did).state is DeliveryState.SENT)
        assert s.store.delivery(did).attempts == 1
        await s.scheduler.stop(1)
        # Published like any attempt: announced queued (attempt 0), then claimed.
        assert s.states(did)[:2] == [("queued", 0), ("sending", 1)]
        assert s.states(did)[-1] == ("sent", 1)


async def test_a_large_hot_job_sends_its_first_sms_after_one_commit(tmp_path: Path) -> None:
    """Chunked (more than CHUNK_MEMBERS): its header, its first chunk and its first attempts'
    claims are one transaction, and the first SMS goes without another."""
    async with stack(tmp_path) as s:
        commits: list[int] = []
        at_first_send: list[int] = []
        commit = s.store._db.commit

        def counted() -> None:
            commit()
            commits.append(1)

        s.store._db.commit = counted  # type: ignore[method-assign]
        send = s.sms.send

        async def first_counted(attempt: Attempt) -> Outcome:
            if not at_first_send:
                at_first_send.append(len(commits))
            return await send(attempt)

        s.sms.send = first_counted  # type: ignore[method-assign]
        topics = Topics("plp", "t")
        intake = Intake(s.astore, s.scheduler, s.status, topics, JobsConfig(), lambda _: None)
        await s.scheduler.start()
        n = CHUNK_MEMBERS + 10
        raw = json.dumps(sms_job("big", members(n))).encode()
        before = len(commits)  # the scheduler's start (interrupted attempts)
        await intake.handle(aiomqtt.Message(topics.jobs, raw, 1, False, 1, None))
        assert intake.counters["accepted"] == 1
        await until(lambda: len(s.sms.sent) == n, 60)
        await s.scheduler.stop(1)
        assert at_first_send == [before + 1] and s.sms.sent[0].number == 1
        # The first ones claimed with the job (as many as the lane had room for), the others
        # by the scheduler; each claimed and sent once.
        assert n - CLAIM_AT_INTAKE <= s.claims < n
        assert len({a.delivery_id for a in s.sms.sent}) == n
        assert {d.attempts for d in s.store.deliveries("big")} == {1}


async def test_a_claim_not_started_is_given_back_at_a_clean_stop(tmp_path: Path) -> None:
    async with stack(tmp_path, rate=100.0) as s:
        # A rated lane queues it; no dispatchers: it waits there, as behind a busy channel.
        (did,) = await s.accept(job("hot"))
        assert s.store.delivery(did).state is DeliveryState.SENDING
        await until(lambda: s.scheduler.queue_depths()["sms"]["hot"] == 1)
        await s.scheduler.stop(1)
        back = s.store.delivery(did)
        assert (back.state, back.attempts, back.possibly_sent) == (DeliveryState.QUEUED, 0, False)
        assert s.store.recover_interrupted() == []  # nothing in flight at the next start
        assert s.sms.sent == []


async def test_a_cancelled_claim_is_not_sent_nor_given_back(tmp_path: Path) -> None:
    async with stack(tmp_path, rate=100.0) as s:
        (did,) = await s.accept(job("hot"))
        await until(lambda: s.scheduler.queue_depths()["sms"]["hot"] == 1)
        await s.scheduler.close_job("hot", JobState.CANCELLED, "cancelled")
        await s.scheduler.start()  # its dispatcher finds the job closed
        await until(lambda: s.scheduler.queue_depths()["sms"]["hot"] == 0)
        await s.scheduler.stop(1)
        assert s.store.delivery(did).state is DeliveryState.CANCELLED
        assert s.sms.sent == [] and s.states(did)[-1] == ("cancelled", 1)


async def test_run_now_waits_for_the_store_thread(tmp_path: Path) -> None:
    """On the loop only while the store's thread is idle; else after its work, on it."""
    async with stack(tmp_path) as s:
        loop_thread = threading.get_ident()
        assert await s.astore.run_now(threading.get_ident) == loop_thread
        release = threading.Event()
        busy = asyncio.ensure_future(s.astore.run(release.wait, 10))
        later = asyncio.ensure_future(s.astore.run_now(threading.get_ident))
        await asyncio.sleep(0)
        assert not later.done()
        release.set()
        assert await busy and await later != loop_thread
        assert await s.astore.run_now(threading.get_ident) == loop_thread  # idle again


async def test_run_now_never_waits_on_the_loop_for_another_writer(tmp_path: Path) -> None:
    """Another process writing (an admin command) holds SQLite's write lock: the insert then
    waits on the store's thread, the loop goes on, and it is stored once the lock is free."""
    async with stack(tmp_path) as s:
        other = sqlite3.connect(tmp_path / "gw.sqlite3", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        hot = job("hot")
        store = asyncio.ensure_future(
            s.astore.run_now(s.store.add_job, hot, hot.id, SMS, claim=True)
        )
        async with asyncio.timeout(5):  # the loop is free: this turn comes at once
            await asyncio.sleep(0)
        assert not store.done()
        other.execute("COMMIT")
        other.close()
        async with asyncio.timeout(30):
            result, rows = await store
        assert result is AddResult.NEW and rows[0].state is DeliveryState.SENDING
        # The connection waits for the lock again on its own thread (its usual timeout).
        assert s.store._db.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000  # type: ignore[attr-defined]
