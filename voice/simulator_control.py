"""The AMI simulator's control port: steer and read a simulator running in another process.

One JSON object per line in, one per line out, e.g. `{"cmd": "stats"}`, `{"cmd": "record"}`
(one entry per Originate: number, action_id, start, end, outcome), `{"cmd": "live"}`,
`{"cmd": "astdb"}` (the `plp` family of the simulated AstDB: what the dialplan recorded),
`{"cmd": "fault", "fail_originates": 1}`, `{"cmd": "drop"}`, `{"cmd": "restart"}`,
`{"cmd": "reset"}`. The protocol and its client side are in `gateway.control_port`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

from gateway.control_port import serve

if TYPE_CHECKING:
    from .simulator import AsteriskSimulator


async def execute(sim: AsteriskSimulator, request: dict[str, Any]) -> dict[str, Any]:
    """Run one control command; returns the JSON-able answer."""
    cmd = request.get("cmd")
    if cmd == "stats":
        live, recorded = len(sim.live_calls()), len(sim.astdb.family("plp"))
        return {"ok": True, **sim.stats.as_dict(), "live": live, "astdb_records": recorded}
    if cmd == "record":
        return {"ok": True, "record": list(sim.stats.record)}
    if cmd == "live":
        calls = [
            {"number": c.number, "action_id": c.action_id, "answered": c.answered}
            for c in sim.live_calls()
        ]
        return {"ok": True, "calls": calls}
    if cmd == "astdb":
        return {"ok": True, "plp": sim.astdb.family("plp")}
    if cmd == "reset":
        sim.reset_stats()
        return {"ok": True}
    if cmd == "drop":
        sim.drop_connections()
        return {"ok": True}
    if cmd == "restart":
        await sim.restart()
        return {"ok": True}
    if cmd == "fault":
        cfg = sim.config
        if "fail_originates" in request:
            sim.fail_originates = int(request["fail_originates"])
        if "max_channels" in request:
            cfg.max_channels = int(request["max_channels"])
        if "secret" in request:
            cfg.secret = str(request["secret"])
        if "speed" in request:
            cfg.speed = float(request["speed"])
        return {"ok": True}
    return {"ok": False, "error": f"unknown cmd {cmd!r}"}


async def start_control(sim: AsteriskSimulator, host: str, port: int) -> asyncio.Server:
    return await serve(functools.partial(execute, sim), host, port)
