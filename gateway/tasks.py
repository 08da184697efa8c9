"""Ending asyncio tasks for sure."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

ROUNDS = 5  # cancellations per task, at most
ROUND_S = 2.0  # seconds each round waits for the tasks to end


async def cancel_all(tasks: Iterable[asyncio.Task[None]]) -> list[str]:
    """Cancel the tasks and wait for their end; the names of those still running after
    ROUNDS rounds. Python 3.11's `asyncio.wait_for` (aiomqtt's waits use it) can swallow a
    cancellation that lands as its inner future completes: a task still running after a
    round is cancelled again rather than awaited for ever."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(ROUNDS):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=ROUND_S)
    return sorted(t.get_name() for t in pending)
