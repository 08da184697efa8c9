"""Calls end to end: VoiceChannel.send over TCP to the AMI simulator, one test per outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.domain import DeliveryState
from gateway.errors import PermanentError, TemporaryError
from tests.voice_fixtures import (
    FakeAudio,
    attempt,
    call_config,
    number,
    sim_config,
    started_channel,
    wait_for,
)
from voice.call_channel import VoiceChannel
from voice.simulator import AsteriskSimulator


@pytest.fixture
async def sim() -> AsyncIterator[AsteriskSimulator]:
    s = AsteriskSimulator(sim_config())
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def audio(tmp_path: Path) -> FakeAudio:
    return FakeAudio(tmp_path / "sounds", seconds=2.0)


@pytest.fixture
async def channel(sim: AsteriskSimulator, audio: FakeAudio) -> AsyncIterator[VoiceChannel]:
    ch = await started_channel(call_config(sim), audio)
    assert await ch._ami.wait_up(10)
    yield ch
    await ch.stop()


async def test_press_1_is_acknowledged(channel: VoiceChannel, sim: AsteriskSimulator) -> None:
    out = await asyncio.wait_for(channel.send(attempt(number(1))), 20)
    assert out.state is DeliveryState.ACKNOWLEDGED
    assert out.detail == "acknowledged"
    assert sim.stats.calls_per_number["32470000001"] == 1


async def test_answered_without_ack_requested_is_delivered(channel: VoiceChannel) -> None:
    out = await asyncio.wait_for(channel.send(attempt(number(6), ack=False)), 20)
    assert (out.state, out.detail) == (DeliveryState.DELIVERED, "answered")


async def test_answered_silent_is_called_again_then_delivered(channel: VoiceChannel) -> None:
    with pytest.raises(TemporaryError) as first:
        await asyncio.wait_for(channel.send(attempt(number(6), number_=1)), 20)
    assert (first.value.reason, first.value.retry_after) == ("not_acknowledged", 120)
    # not_acknowledged allows 2 attempts: the last one settles as delivered (it was heard).
    out = await asyncio.wait_for(channel.send(attempt(number(6), number_=2)), 20)
    assert (out.state, out.detail) == (DeliveryState.DELIVERED, "answered, not acknowledged")


@pytest.mark.parametrize(
    ("digit", "reason", "retry_after"),
    [(2, "busy", 60), (3, "no_answer", 120), (4, "congestion", 30), (5, "hung_up_early", 60)],
)
async def test_retryable_outcomes(
    channel: VoiceChannel, digit: int, reason: str, retry_after: float
) -> None:
    with pytest.raises(TemporaryError) as err:
        await asyncio.wait_for(channel.send(attempt(number(digit))), 20)
    assert err.value.reason == reason
    assert err.value.retry_after == retry_after


async def test_busy_gives_up_after_its_max_attempts(channel: VoiceChannel) -> None:
    with pytest.raises(PermanentError) as err:
        await asyncio.wait_for(channel.send(attempt(number(2), number_=3)), 20)
    assert err.value.reason == "busy"
    assert "gave up after 3 attempts" in err.value.detail


async def test_unreachable_and_unallocated(channel: VoiceChannel) -> None:
    with pytest.raises(TemporaryError) as err:
        await asyncio.wait_for(channel.send(attempt(number(7))), 20)
    assert err.value.reason == "unreachable"
    with pytest.raises(PermanentError) as perm:
        await asyncio.wait_for(channel.send(attempt(number(7), number_=2)), 20)
    assert perm.value.reason == "unreachable"  # exhausted: the job's fallback takes over
    with pytest.raises(PermanentError) as bad:
        await asyncio.wait_for(channel.send(attempt(number(8), delivery_id=2)), 20)
    assert bad.value.reason == "invalid_number"


async def test_number_invalid_for_voice_is_not_dialled(
    channel: VoiceChannel, sim: AsteriskSimulator
) -> None:
    for bad in ("0470123456", "+32", "+32 470 12 34 56", "not-a-number"):
        with pytest.raises(PermanentError) as err:
            await channel.send(attempt(bad))
        assert err.value.reason == "invalid_number"
    assert sim.stats.originates == 0


async def test_number_outside_the_policy_is_not_dialled(
    channel: VoiceChannel, sim: AsteriskSimulator
) -> None:
    # Intake refuses these already; the channel refuses them on any other path too.
    for number_ in ("+3290312345", "+449098790000", "+881612345678", "+3278151515"):
        with pytest.raises(PermanentError) as err:
            await channel.send(attempt(number_))
        assert err.value.reason == "number_not_allowed"
    assert sim.stats.originates == 0


async def test_missing_audio_file_is_a_playback_failure(
    channel: VoiceChannel, audio: FakeAudio
) -> None:
    audio.missing = True
    with pytest.raises(TemporaryError) as err:
        await asyncio.wait_for(channel.send(attempt(number(1))), 20)
    assert err.value.reason == "playback_failed"


async def test_originate_answered_with_an_error(
    channel: VoiceChannel, sim: AsteriskSimulator
) -> None:
    sim.fail_originates = 1
    with pytest.raises(TemporaryError) as err:
        await asyncio.wait_for(channel.send(attempt(number(1))), 20)
    assert err.value.reason == "originate_error"
    assert "Originate failed" in err.value.detail
    out = await asyncio.wait_for(channel.send(attempt(number(1), number_=2)), 20)
    assert out.state is DeliveryState.ACKNOWLEDGED


async def test_events_of_calls_not_ours_are_ignored(
    channel: VoiceChannel, sim: AsteriskSimulator
) -> None:
    # Another AMI user places a call on the same Asterisk: its events reach us too.
    reader, writer = await asyncio.open_connection(sim.host, sim.port)
    await reader.readline()
    writer.write(b"Action: Login\r\nUsername: plp-test\r\nSecret: s3cret\r\n\r\n")
    writer.write(
        b"Action: Originate\r\nActionID: other-1\r\nAsync: true\r\n"
        b"Channel: Local/32470999992@plp-phones\r\nContext: plp-alert\r\nExten: s\r\n"
        b"Variable: DELIVERY_ID=999\r\n\r\n"
    )
    await writer.drain()
    out = await asyncio.wait_for(channel.send(attempt(number(1))), 20)
    assert out.state is DeliveryState.ACKNOWLEDGED
    await wait_for(lambda: not sim.live_calls())
    unknown = channel.health()["unknown_events"]
    assert isinstance(unknown, int) and unknown > 0
    assert channel.health()["active_calls"] == 0
    writer.close()


@pytest.mark.parametrize("digit", [3, 1])  # ringing (no answer yet), in progress (playing)
async def test_cancel_hangs_up_the_call(
    channel: VoiceChannel, sim: AsteriskSimulator, digit: int
) -> None:
    task = asyncio.create_task(channel.send(attempt(number(digit))))
    await wait_for(lambda: sim.live_calls() and (digit == 3 or sim.live_calls()[0].answered))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: sim.stats.hangups_requested == 1 and not sim.live_calls())
    assert sim.stats.outcomes["hung_up_by_ami"] == 1
    await wait_for(lambda: not channel._tracker.active())
