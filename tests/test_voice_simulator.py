"""The AMI simulator itself: as a separate process with its counters in a stats file, its
trunk limit, and the shipped dialplan it imitates."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import TemporaryError
from gateway.simulator_process import free_port, wait_port
from tests.fixtures import ROOT
from tests.voice_fixtures import (
    SECRET,
    USER,
    FakeAudio,
    attempt,
    call_config,
    number,
    sim_config,
    started_channel,
)
from voice.simulator import AsteriskSimulator, read_stats


async def _stats_when(
    path: Path, ready: Callable[[dict[str, object]], bool], within: float = 15.0
) -> dict[str, object]:
    async with asyncio.timeout(within):
        while True:
            with contextlib.suppress(FileNotFoundError):
                counters = read_stats(path)
                if ready(counters):
                    return counters
            await asyncio.sleep(0.02)


async def test_simulator_process_counts_calls_per_number(tmp_path: Path) -> None:
    port = free_port()
    stats = tmp_path / "sim-stats.json"
    args = ["--port", str(port), "--speed", "20", "--username", USER, "--secret", SECRET]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voice.simulator",
        *args,
        "--stats-file",
        str(stats),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_port, port, 15.0)
        sim = AsteriskSimulator()  # only to carry host/port into the config helper
        sim.port = port
        ch = await started_channel(call_config(sim), FakeAudio(tmp_path / "sounds"))
        try:
            assert await ch._ami.wait_up(10)
            with pytest.raises(TemporaryError):
                await asyncio.wait_for(ch.send(attempt(number(2))), 20)
        finally:
            await ch.stop()
        # The simulator writes its counters just after the call's last event: wait for them.
        counters = await _stats_when(stats, lambda c: bool(c.get("outcomes")))
        assert counters["calls_per_number"] == {"32470000002": 1}
        assert counters["outcomes"] == {"busy": 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


async def test_originate_beyond_trunk_capacity_fails_like_congestion(tmp_path: Path) -> None:
    sim = AsteriskSimulator(sim_config(max_channels=1))
    await sim.start()
    ch = await started_channel(call_config(sim, max_channels=2), FakeAudio(tmp_path))
    try:
        assert await ch._ami.wait_up(10)
        results = await asyncio.wait_for(
            asyncio.gather(
                ch.send(attempt(number(6, 1), delivery_id=1)),
                ch.send(attempt(number(6, 2), delivery_id=2)),
                return_exceptions=True,
            ),
            20,
        )
        reasons = sorted(getattr(r, "reason", "") for r in results)
        assert reasons == ["congestion", "not_acknowledged"]
        assert sim.stats.rejected_over_limit == 1
    finally:
        await ch.stop()
        await sim.stop()


def test_shipped_dialplan_reports_what_the_gateway_reads() -> None:
    text = (ROOT / "configs" / "asterisk" / "extensions.conf").read_text(encoding="utf-8")
    assert "[plp-alert]" in text
    assert "UserEvent(PLPPlayed,Delivery: ${DELIVERY_ID},PlaybackStatus: ${PLAYBACKSTATUS})" in text
    assert (
        "UserEvent(PLPAck,Delivery: ${DELIVERY_ID},Digit: ${ACK},ReadStatus: ${READSTATUS})" in text
    )
    assert "Playback(${ALERT_FILE})" in text
    # The result each answered call leaves in AstDB for a gateway that was not listening.
    assert "Set(DB(plp/${PLP_CALL})=${PLP_RESULT})" in text
    assert "exten => h,1,GotoIf(" in text
    assert "Set(DB(plp/${PLP_CALL})=hung_up_early)" in text
