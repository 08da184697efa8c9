"""The simulators' control port: one JSON object per line in, one per line out.

`plp-gateway simulate smsc` and `plp-gateway simulate asterisk` serve it next to their
protocol port so that tests, benchmarks and operators can steer and read a simulator running
in another process (`{"cmd": "stats"}`, faults, injected messages...). Each simulator brings
its own commands (`sms.simulator_control.execute`, `voice.simulator_control.execute`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

Execute = Callable[[dict[str, Any]], "dict[str, Any] | Awaitable[dict[str, Any]]"]

MAX_LINE = 64 * 1024 * 1024  # answers such as per-number counts of a 100,000-message run


async def serve(execute: Execute, host: str, port: int) -> asyncio.Server:
    """Serve the control port; `execute(request)` answers each command (sync or async)."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = execute(json.loads(line))
                    if inspect.isawaitable(answer):
                        answer = await answer
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(session, host, port, limit=MAX_LINE)


async def control(host: str, port: int, request: dict[str, Any], wait: float = 5.0) -> Any:
    """Client side: send one command to a running simulator, return its answer."""
    async with asyncio.timeout(wait):
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            return json.loads(await reader.readline())
        finally:
            writer.close()
