"""Shared parts of the voice tests: an in-process AMI simulator, a fake audio source,
attempts, and a VoiceChannel wired to the simulator over TCP."""

from __future__ import annotations

import asyncio
import json
import wave
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.channel import Attempt, Report
from gateway.domain import Job, Priority
from voice.call_channel import VoiceChannel
from voice.config import AmiConfig, CallRetry, RetryRule, VoiceConfig
from voice.simulator import AsteriskSimulator, SimConfig

TRANSCRIPTS = Path(__file__).resolve().parent / "voice_transcripts"
SPEED = 20.0  # the simulator runs 20x faster than a real call
USER, SECRET = "plp-test", "s3cret"


def number(last_digit: int, index: int = 0) -> str:
    """A Belgian mobile number whose last digit picks the simulated callee's behaviour."""
    return f"+32470{index:05d}{last_digit}"


def load_transcript(name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(action_response, events) of one reference transcript."""
    lines = (TRANSCRIPTS / name).read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])["action_response"]
    return first, [json.loads(line) for line in lines[1:]]


@dataclass(frozen=True)
class FakeRendered:
    path: Path
    asterisk_name: str
    engine: str
    duration_s: float
    fallback_used: bool = False


class FakeAudio:
    """Stands in for voice.synthesis.Synthesizer: a real 8 kHz WAV of `seconds` of tone."""

    def __init__(self, directory: Path, seconds: float = 2.0) -> None:
        self.directory = directory
        self.seconds = seconds
        self.missing = False  # render a name whose file does not exist
        self.renders = 0
        directory.mkdir(parents=True, exist_ok=True)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def stats(self) -> Mapping[str, object]:
        return {}

    async def prepare(self, job: Job) -> Mapping[str, str]:
        return {}

    async def render(
        self, *, text: str, lang: str, options: Mapping[str, object], test: bool
    ) -> FakeRendered:
        self.renders += 1
        base = self.directory / f"alert-{lang}"
        if self.missing:
            base = self.directory / f"gone-{lang}"
            return FakeRendered(base.with_suffix(".wav"), str(base), "fake", self.seconds)
        path = base.with_suffix(".wav")
        if not path.exists():
            frames = int(8000 * self.seconds)
            with wave.open(str(path), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(8000)
                w.writeframes(b"\x10\x00\xf0\xff" * (frames // 2))
        return FakeRendered(path, str(base), "fake", self.seconds)


def attempt(
    address: str, delivery_id: int = 1, number_: int = 1, *, ack: bool = True, job: str = "job-1"
) -> Attempt:
    return Attempt(
        delivery_id=delivery_id,
        job_id=job,
        channel="voice",
        ref=f"r{delivery_id}",
        address=address,
        lang="fr",
        text="Alerte: cambriolage signalé rue de la Loi.",
        subject="",
        priority=Priority.HOT,
        number=number_,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        test=False,
        options={"voice": {"ack": ack, "repeat": 1}},
    )


def sim_config(**over: Any) -> SimConfig:
    values: dict[str, Any] = {"username": USER, "secret": SECRET, "speed": SPEED}
    values.update(over)
    return SimConfig(**values)


def call_config(sim: AsteriskSimulator, **over: Any) -> VoiceConfig:
    ami: dict[str, Any] = {
        "host": sim.host,
        "port": sim.port,
        "username": USER,
        "secret": SECRET,
        "reconnect_initial_delay": 0.05,
        "reconnect_max_delay": 0.5,
        "ping_interval": 5.0,
    }
    ami.update(over.pop("ami", {}))
    values: dict[str, Any] = {
        "enabled": True,
        "channel": "Local/{number}@plp-phones",
        "ring_timeout": 15.0,
        "max_channels": 30,
        "ami": AmiConfig(**ami),
        "retry": CallRetry(
            busy=RetryRule(delay=60, max_attempts=3),
            not_acknowledged=RetryRule(delay=120, max_attempts=2),
        ),
    }
    values.update(over)
    return VoiceConfig(**values)


async def started_channel(cfg: VoiceConfig, audio: FakeAudio) -> VoiceChannel:
    reports: asyncio.Queue[Report] = asyncio.Queue()
    ch = VoiceChannel(cfg, reports, audio)
    await ch.start()
    return ch


async def wait_for(predicate: Any, within: float = 10.0) -> None:
    """Wait until `predicate()` is true (bounded): checked every 10 ms, since the state
    lives in counters of the simulator and the channel that have no event to await."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
