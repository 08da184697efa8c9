"""A lane that claims ahead (`Limits.claim_ahead`, the e-mail channel): that many more attempts
are claimed (`sending` in the store) while `concurrency` are sent or have their outcome
stored, so a freed turn never waits for a claim; a crash can resend no more than before, as
no more than `concurrency` attempts are ever in the channel at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.channel import Attempt, Limits, Outcome, RetryPolicy
from gateway.domain import DeliveryState
from tests.test_claim_at_intake import Sms, Stack, job, stack, until


class Gated(Sms):
    """Holds every attempt until the test opens the gate; counts those inside at once."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.gate = asyncio.Event()
        self.inside = 0
        self.most_inside = 0

    def limits(self) -> Limits:
        return Limits(concurrency=2, rate=0.0, retry=RetryPolicy(), claim_ahead=3)

    async def send(self, attempt: Attempt) -> Outcome:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await self.gate.wait()
        finally:
            self.inside -= 1
        return await super().send(attempt)


@contextlib.asynccontextmanager
async def gated_stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, Gated]]:
    """The scheduler's stack with the gated channel as its SMS channel, started."""
    async with stack(tmp_path) as s:
        gated = Gated()
        s.sms = gated
        s.scheduler = type(s.scheduler)(s.astore, {"sms": gated}, s.scheduler._status)
        await s.scheduler.start()
        yield s, gated


async def test_attempts_are_claimed_ahead_but_only_concurrency_are_in_the_channel(
    tmp_path: Path,
) -> None:
    async with gated_stack(tmp_path) as (s, gated):
        ids = await s.accept(job("cold", 12, priority="cold"))

        def sending() -> int:
            return sum(s.store.delivery(i).state is DeliveryState.SENDING for i in ids)

        await until(lambda: gated.inside == 2 and sending() == 5)
        for _ in range(50):  # the others stay claimed, waiting for a turn
            await asyncio.sleep(0)
        assert (gated.inside, sending()) == (2, 5)
        # Published `sending` when their turn comes, not when claimed ahead.
        published = {e["delivery_id"] for e in s.events if e["state"] == "sending"}
        assert len(published) == 2
        assert s.scheduler.queue_depths()["sms"]["slots"] == 2

        gated.gate.set()
        await until(lambda: all(s.store.delivery(i).state is DeliveryState.SENT for i in ids))
        assert gated.most_inside == 2
        assert sorted(a.delivery_id for a in gated.sent) == sorted(ids)  # each once
        assert all(s.store.delivery(i).attempts == 1 for i in ids)
        await s.scheduler.stop(1)


async def test_a_clean_stop_gives_back_the_attempts_claimed_ahead(tmp_path: Path) -> None:
    """Claimed ahead and never sent: `queued` again with the attempt uncounted, not
    "possibly sent" at the next start; the ones in the channel are interrupted as ever."""
    async with gated_stack(tmp_path) as (s, gated):
        ids = await s.accept(job("cold", 12, priority="cold"))
        await until(lambda: gated.inside == 2 and len(s.scheduler._lanes["sms"].inflight) == 5)
        await s.scheduler.stop(0.05)
        rows = [s.store.delivery(i) for i in ids]
        interrupted = [r for r in rows if r.state is DeliveryState.RETRYING]
        assert len(interrupted) == 2 and all(r.possibly_sent for r in interrupted)
        queued = [r for r in rows if r.state is DeliveryState.QUEUED]
        assert len(queued) == 10 and all(r.attempts == 0 for r in queued)
