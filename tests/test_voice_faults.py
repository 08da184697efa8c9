"""AMI faults: wrong credentials, dropped connections, Asterisk restarting, a killed gateway
whose calls are still up, and the channel limit under 500 calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.domain import DeliveryState
from gateway.errors import LinkDown, PermanentError, TemporaryError
from tests.voice_fixtures import (
    FakeAudio,
    attempt,
    call_config,
    kill,
    number,
    sim_config,
    started_channel,
    wait_for,
)
from voice.simulator import AsteriskSimulator


async def _sim(**over: object) -> AsteriskSimulator:
    s = AsteriskSimulator(sim_config(**over))
    await s.start()
    return s


async def test_wrong_credentials_back_off_without_crashing(tmp_path: Path) -> None:
    sim = await _sim()
    cfg = call_config(sim, ami={"secret": "wrong", "connect_timeout": 0.5})
    ch = await started_channel(cfg, FakeAudio(tmp_path))
    try:
        delays: list[float] = []

        def note() -> bool:
            d = ch._ami.next_retry_in
            if d is not None and (not delays or delays[-1] != d):
                delays.append(d)
            return len(delays) >= 4

        await wait_for(note, within=15)
        health = ch.health()
        assert health["state"] == "auth_failed"
        assert health["last_error"] == "Authentication failed"
        assert delays == sorted(delays) and delays[-1] > delays[0]  # backing off
        with pytest.raises(LinkDown) as err:
            await ch.send(attempt(number(1)))
        assert err.value.reason == "ami_down"
        assert sim.stats.originates == 0
        assert sim.stats.logins_failed < 20  # no tight crash loop
    finally:
        await ch.stop()
        await sim.stop()


async def test_dropped_connection_during_calls_is_reconciled(tmp_path: Path) -> None:
    # Slow enough that the reconnect (50 ms backoff) comes long before the answers.
    sim = await _sim(speed=2.5)
    cfg = call_config(sim, ring_timeout=5.0)
    ch = await started_channel(cfg, FakeAudio(tmp_path, seconds=2.0))
    try:
        assert await ch._ami.wait_up(10)
        sends = [
            asyncio.create_task(ch.send(attempt(number(d, i), delivery_id=i)))
            for i, d in enumerate((1, 6, 3), start=1)
        ]
        await wait_for(lambda: len(sim.live_calls()) == 3)
        sim.drop_connections()  # the calls go on in Asterisk
        results = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), 30)
        assert ch._ami.connects == 2
        first, second, third = results
        assert getattr(first, "state", None) is DeliveryState.ACKNOWLEDGED
        assert isinstance(second, TemporaryError) and second.reason == "not_acknowledged"
        assert isinstance(third, TemporaryError) and third.reason == "no_answer"
        assert sim.stats.originates == 3  # nothing was dialled twice
    finally:
        await ch.stop()
        await sim.stop()


async def test_asterisk_restart_during_calls(tmp_path: Path) -> None:
    sim = await _sim(speed=5.0)
    ch = await started_channel(call_config(sim), FakeAudio(tmp_path))
    try:
        assert await ch._ami.wait_up(10)
        sends = [
            asyncio.create_task(ch.send(attempt(number(d, i), delivery_id=i)))
            for i, d in enumerate((1, 3), start=1)
        ]
        await wait_for(lambda: len(sim.live_calls()) == 2)
        await sim.restart()  # every call is gone, without a Hangup event
        results = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), 30)
        for r in results:
            assert isinstance(r, TemporaryError)
            assert (r.reason, r.retry_after) == ("call_lost", 15)
        out = await asyncio.wait_for(ch.send(attempt(number(1), delivery_id=9)), 30)
        assert out.state is DeliveryState.ACKNOWLEDGED
    finally:
        await ch.stop()
        await sim.stop()


async def test_call_of_a_killed_gateway_is_adopted_not_redialled(tmp_path: Path) -> None:
    sim = await _sim(speed=5.0)
    audio = FakeAudio(tmp_path, seconds=3.0)
    old = await started_channel(call_config(sim), audio)
    assert await old._ami.wait_up(10)
    send = asyncio.create_task(old.send(attempt(number(1), delivery_id=7, number_=1)))
    await wait_for(lambda: bool(sim.live_calls()) and sim.live_calls()[0].answered)
    await kill(old, [send])  # the call stays up in Asterisk
    new = await started_channel(call_config(sim), audio)
    try:
        assert await new._ami.wait_up(10)
        await wait_for(lambda: bool(new._tracker.orphans()))
        # The scheduler retries the interrupted attempt: the channel follows the live call.
        out = await asyncio.wait_for(new.send(attempt(number(1), delivery_id=7, number_=2)), 30)
        assert out.state is DeliveryState.ACKNOWLEDGED
        assert out.provider_ids == ("plp-7-1",)
        assert sim.stats.calls_per_number["32470000001"] == 1
    finally:
        await new.stop()
        await sim.stop()


async def test_call_of_a_killed_gateway_that_ends_before_its_retry_is_not_redialled(
    tmp_path: Path,
) -> None:
    """Killed while the call rang; the new process's first reconcile finds it; it is answered,
    acknowledged and ends before the scheduler retries the attempt: that retry returns the
    outcome the new process followed, at once (no call, no AstDB record needed)."""
    sim = await _sim(speed=5.0)
    audio = FakeAudio(tmp_path, seconds=3.0)
    old = await started_channel(call_config(sim), audio)
    assert await old._ami.wait_up(10)
    send = asyncio.create_task(old.send(attempt(number(1), delivery_id=7, number_=1)))
    await wait_for(lambda: bool(sim.live_calls()))
    assert not sim.live_calls()[0].answered
    await kill(old, [send])
    new = await started_channel(call_config(sim), audio)
    try:
        await wait_for(lambda: bool(new._tracker.orphans()))
        await wait_for(lambda: not sim.live_calls(), within=15)  # ended before the retry
        sim.astdb.delete_tree("plp")  # what the new process saw is enough
        retry = attempt(number(1), delivery_id=7, number_=2, interrupted=True)
        out = await asyncio.wait_for(new.send(retry), 10)
        assert out.state is DeliveryState.ACKNOWLEDGED
        assert out.provider_ids == ("plp-7-1",)
        assert sim.stats.originates == 1
        assert new._tracker.active() == []
    finally:
        await new.stop()
        await sim.stop()


async def test_500_calls_never_exceed_4_channels(tmp_path: Path) -> None:
    sim = await _sim(speed=200.0, max_channels=4)
    cfg = call_config(sim, max_channels=4)
    ch = await started_channel(cfg, FakeAudio(tmp_path, seconds=1.0))
    digits = (1, 2, 4, 5, 8)
    expected = {
        1: "acknowledged",
        2: "busy",
        4: "congestion",
        5: "hung_up_early",
        8: "invalid_number",
    }
    try:
        assert await ch._ami.wait_up(10)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(500):
            queue.put_nowait(i)
        got: dict[int, str] = {}

        async def worker() -> None:  # a bounded driver, like the scheduler (10 > 4 channels)
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    out = await ch.send(attempt(number(digits[i % 5], i), delivery_id=i))
                    got[i] = out.detail or ""
                except (TemporaryError, PermanentError) as exc:
                    got[i] = exc.reason

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(10))), 50)
        assert len(got) == 500
        assert all(got[i] == expected[digits[i % 5]] for i in range(500))
        assert sim.stats.originates == 500
        assert sim.stats.rejected_over_limit == 0
        assert sim.stats.peak == 4  # never more, and the channels were kept busy
        assert ch.peak == 4
    finally:
        await ch.stop()
        await sim.stop()


async def test_channels_stay_busy_on_a_200_call_job(tmp_path: Path) -> None:
    sim = await _sim(max_channels=10)
    ch = await started_channel(call_config(sim, max_channels=10), FakeAudio(tmp_path, 1.5))
    try:
        assert await ch._ami.wait_up(10)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(200):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                out = await ch.send(attempt(number(6, i), delivery_id=i, ack=False))
                assert out.detail == "answered"

        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(10))), 60)
        elapsed = loop.time() - began
        utilisation = sim.stats.channel_seconds / (10 * elapsed)
        assert sim.stats.peak == 10
        assert utilisation > 0.5, utilisation  # generous: the bench measures the real figure
    finally:
        await ch.stop()
        await sim.stop()
