"""The SMSC simulator as a separate process, steered and read through its control port."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from gateway.channel import Receipt, Reply
from gateway.control_port import control
from gateway.domain import DeliveryState
from gateway.errors import PermanentError
from sms.config import SmscConfig
from tests.sms_fixtures import MOBILE, attempt, channel, next_report, sms_config

ROOT = Path(__file__).resolve().parent.parent


async def test_simulator_process_with_control_port(tmp_path: Path) -> None:
    port_file = tmp_path / "ports.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sms.simulator", "--port", "0", "--control-port", "0",
        "--port-file", str(port_file), "--receipt-delay", "0", "--reject",
        "+32470999999=ESME_RINVDSTADR", "--log-level", "WARNING",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            banner = await proc.stdout.readline()
        assert banner.startswith(b"SMSC simulator"), banner
        ports = json.loads(port_file.read_text())
        ctl = ports["control_port"]
        link = SmscConfig(name="sim", host="127.0.0.1", port=ports["port"], system_id="plp",
                          password="secret", reconnect_initial_delay=0.05)  # fmt: skip
        async with channel(sms_config(link)) as ch:
            outcome = await ch.send(attempt(MOBILE, "Test via process"))
            receipt = await next_report(ch)
            assert receipt == Receipt("sms", outcome.provider_ids[0], DeliveryState.DELIVERED)
            try:
                await ch.send(attempt("+32470999999"))
            except PermanentError as exc:
                assert exc.reason == "ESME_RINVDSTADR"
            assert (await control("127.0.0.1", ctl, {"cmd": "count", "number": MOBILE}))[
                "submits"
            ] == 1
            answer = await control("127.0.0.1", ctl, {"cmd": "messages", "number": MOBILE})
            assert answer["messages"] == ["Test via process"]
            await control("127.0.0.1", ctl, {"cmd": "mo", "source": "+32470111222", "text": "OK"})
            reply = await next_report(ch)
            assert isinstance(reply, Reply) and reply.acknowledges
            await control("127.0.0.1", ctl, {"cmd": "fault", "undeliver": [MOBILE]})
            await ch.send(attempt(MOBILE))
            failed = await next_report(ch)
            assert isinstance(failed, Receipt) and failed.state == DeliveryState.FAILED
            stats = await control("127.0.0.1", ctl, {"cmd": "stats"})
            assert stats["counters"]["accepted"] == 2 and stats["duplicates"] == 1
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
