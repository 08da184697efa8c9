"""Alert audio through the daemon: made once per language when the job is accepted, reused
for every call, and made off the event loop (MQTT and other channels keep flowing)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GatewayFactory
from tests.fixtures import Observer, email_job, members
from tests.voice_fixtures import AsteriskProcess, member, voice_job


@pytest.fixture
def quick_asterisk(tmp_path: Path) -> Iterator[AsteriskProcess]:
    """Short calls (1 s of message at 20x speed) on a large trunk."""
    workdir = tmp_path / "quick-ami"
    workdir.mkdir()
    sim = AsteriskProcess(workdir, "--playback", "1", "--max-channels", "60")
    sim.start()
    yield sim
    sim.stop()


def voice_health(observer: Observer) -> dict[str, object]:
    msgs = observer.on("/gateway/test/health")
    health: dict[str, object] = msgs[-1].json()["links"]["voice"] if msgs else {}
    return health


async def test_120_recipients_in_two_languages_make_exactly_two_syntheses(
    gateway: GatewayFactory, observer: Observer, quick_asterisk: AsteriskProcess, tmp_path: Path
) -> None:
    # Three waves of 40 calls at once, each wanting one of the two audio files.
    gateway(quick_asterisk.config(tmp_path / "sounds", max_channels=40))
    recipients = [member(i, 6, ("fr", "nl")[i % 2]) for i in range(120)]
    job = voice_job("v-120", recipients, voice={"ack": False, "repeat": 0})
    await observer.publish_job(job)
    status = await observer.wait_job("v-120", "done", timeout=60)
    assert status["totals"] == {"delivered": 120}

    def settled() -> dict[str, object] | None:
        tts = voice_health(observer).get("tts")
        return tts if isinstance(tts, dict) and tts.get("cache_hits", 0) >= 120 else None

    tts = await observer.wait(settled, timeout=30)  # health: on change, within 0.5 s
    assert tts["syntheses"] == 2, tts  # one per language, at acceptance
    assert tts["espeak_syntheses"] == 2 and tts["fallbacks"] == 0 and tts["failures"] == 0
    files = sorted(p.suffix for p in (tmp_path / "sounds").iterdir())
    assert files == [".wav", ".wav"]
    assert (await quick_asterisk.ctl("stats"))["originates"] == 120


async def test_a_slow_synthesis_does_not_block_mqtt_or_other_channels(
    gateway: GatewayFactory, observer: Observer, asterisk: AsteriskProcess, tmp_path: Path
) -> None:
    espeak = shutil.which("espeak-ng")
    assert espeak is not None
    slow = tmp_path / "slow-espeak"
    slow.write_text(f'#!/bin/sh\ncase "$*" in *--stdout*) sleep 4;; esac\nexec {espeak} "$@"\n')
    slow.chmod(0o755)
    extra = f'[voice.tts.espeak]\nbinary = "{slow}"\n'
    gateway(asterisk.config(tmp_path / "sounds") + extra)
    await observer.publish_job(voice_job("v-slow", [member(1, 1)]))

    def synthesizing() -> bool:
        tts = voice_health(observer).get("tts")
        return isinstance(tts, dict) and tts.get("in_flight") == 1

    await observer.wait(synthesizing, timeout=10)
    # While espeak-ng works on the alert (4 s), an e-mail job is accepted, sent and
    # reported, and the health topic keeps being answered: the loop is free.
    await observer.publish_job(email_job("e-during", members(3)))
    status = await observer.wait_job("e-during", "done", timeout=10)
    assert status["totals"] == {"delivered": 3}
    assert synthesizing(), "the e-mail job finished while the synthesis was still running"
    assert (await asterisk.ctl("stats"))["originates"] == 0, "no call before its audio"
    status = await observer.wait_job("v-slow", "done", timeout=30)
    assert status["totals"] == {"acknowledged": 1}
