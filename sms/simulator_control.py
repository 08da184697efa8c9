"""The SMSC simulator's control port: steer and read a simulator from another process.

Control protocol: one JSON object per line in, one JSON object per line out, e.g.
`{"cmd": "stats"}`, `{"cmd": "count", "number": "+32470123456"}`, `{"cmd": "mo", "source":
"+32470123456", "text": "OK"}`, `{"cmd": "fault", "throttle_rate": 50}`, `{"cmd": "drop"}`,
`{"cmd": "order", "since": 100}` (destinations of accepted submits in arrival order).
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

from gateway.control_port import control, serve

from . import pdu as P

if TYPE_CHECKING:
    from .simulator import SmscSimulator


def execute(sim: SmscSimulator, request: dict[str, Any]) -> dict[str, Any]:
    """Run one control command; returns the JSON-able answer."""
    cmd = request.get("cmd")
    if cmd == "stats":
        return {"ok": True, **sim.stats()}
    if cmd == "count":
        return {"ok": True, "submits": sim.submits_to(str(request["number"]))}
    if cmd == "counts":
        return {"ok": True, "submits": dict(sim.submits_by_dest)}
    if cmd == "order":  # accepted submits after the first `since`, in arrival order
        since = int(request.get("since", 0))
        return {"ok": True, "since": since, "order": sim.order(since)}
    if cmd == "messages":
        return {"ok": True, "messages": sim.messages_to(str(request["number"]))}
    if cmd == "pdus":  # the parts one destination received, as the wire carried them
        dest = str(request["number"]).removeprefix("+")
        return {"ok": True, "pdus": [_describe(sm) for sm in sim.parts_to(dest)]}
    if cmd == "mo":
        sent = sim.inject_mo(str(request["source"]), str(request["text"]))
        return {"ok": True, "delivered_now": sent}
    if cmd == "receipt":
        sim.send_receipt(str(request["id"]), str(request.get("dest", "+32470000000")),
                         str(request.get("stat", "DELIVRD")))  # fmt: skip
        return {"ok": True}
    if cmd == "reset":
        sim.reset()
        return {"ok": True}
    if cmd == "drop":
        return {"ok": True, "dropped": sim.drop_connections()}
    if cmd == "malformed":
        return {"ok": True, "sent": sim.send_raw(P.HEADER.pack(8, 0x5, 0, 1))}
    if cmd == "fault":
        cfg = sim.config
        if "throttle_rate" in request:
            sim.set_throttle(float(request["throttle_rate"]))
        if "drop_every" in request:
            sim.set_drop_every(float(request["drop_every"]))
        if "response_delay" in request:
            cfg.response_delay = float(request["response_delay"])
        if "silent" in request:
            cfg.silent = bool(request["silent"])
        if "hold_binds" in request:
            sim.set_hold_binds(bool(request["hold_binds"]))
        if "password" in request:
            cfg.password = str(request["password"])
        if "receipt_delay" in request:
            cfg.receipt_delay = float(request["receipt_delay"])
        if "receipts" in request:  # false: never send a receipt
            cfg.receipts = bool(request["receipts"])
        if "close_every" in request:
            cfg.close_every = int(request["close_every"])
        if "close_with" in request:
            cfg.close_with = str(request["close_with"])
        for number, status in dict(request.get("reject", {})).items():
            code = P.STATUS[status] if isinstance(status, str) else int(status)
            cfg.reject[number.removeprefix("+")] = code
        for number in request.get("undeliver", []):
            cfg.undeliver.add(str(number).removeprefix("+"))
        return {"ok": True}
    return {"ok": False, "error": f"unknown cmd {cmd!r}"}


def _describe(sm: P.SubmitSm) -> dict[str, Any]:
    return {
        "source_addr": sm.source_addr,
        "source_addr_ton": sm.source_addr_ton,
        "dest_addr_ton": sm.dest_addr_ton,
        "esm_class": sm.esm_class,
        "data_coding": sm.data_coding,
        "short_message": sm.short_message.hex(),
        "validity_period": sm.validity_period,
        "registered_delivery": sm.registered_delivery,
    }


async def start_control(sim: SmscSimulator, host: str, port: int) -> asyncio.Server:
    return await serve(functools.partial(execute, sim), host, port)


__all__ = ["control", "execute", "start_control"]
