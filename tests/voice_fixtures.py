"""Shared parts of the voice tests: an in-process AMI simulator, a fake audio source,
attempts, and a VoiceChannel wired to the simulator over TCP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.channel import Attempt, Report
from gateway.domain import Job, Priority
from gateway.simulator_process import SimulatorProcess
from voice.call_channel import VoiceChannel
from voice.config import AmiConfig, CallRetry, RetryRule, VoiceConfig
from voice.simulator import AsteriskSimulator, SimConfig

ROOT = Path(__file__).resolve().parent.parent
TRANSCRIPTS = ROOT / "tests" / "voice_transcripts"
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


def with_originate_response(
    response: dict[str, Any], events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Put the OriginateResponse panoramisk handed to send_action() back into the stream,
    where Asterisk sent it: at the answer, or after the failed call's channels are gone."""
    if response["Response"] == "Success":
        half = response["Channel"]
        at = next(
            i
            for i, e in enumerate(events)
            if e["Event"] == "Newstate" and e["Channel"] == half and e["ChannelStateDesc"] == "Up"
        )
        return [*events[:at], response, *events[at:]]
    return [*events, response]


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
    address: str,
    delivery_id: int = 1,
    number_: int = 1,
    *,
    ack: bool = True,
    job: str = "job-1",
    interrupted: bool = False,
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
        interrupted=interrupted,
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


async def kill(channel: VoiceChannel, sends: Sequence[asyncio.Task[Any]] = ()) -> None:
    """ "kill -9": the process vanishes, its AMI socket closes, its calls stay up in Asterisk."""
    session = channel._ami._task
    assert session is not None
    session.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await session
    channel._ami._close()
    for task in sends:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(predicate: Any, within: float = 10.0) -> None:
    """Wait until `predicate()` is true (bounded): checked every 10 ms, since the state
    lives in counters of the simulator and the channel that have no event to await."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class AsteriskProcess(SimulatorProcess):
    """`plp-gateway simulate asterisk`: the gateway under test is a process too."""

    kind = "asterisk"
    title = "AMI simulator"

    def __init__(self, workdir: Path, *args: str, speed: float = SPEED) -> None:
        super().__init__(workdir, *args)
        self.speed = speed

    def options(self) -> list[str]:
        return ["--speed", str(self.speed), "--username", USER, "--secret", SECRET]

    async def calls(self) -> dict[str, int]:
        """Originates per number (E.164 without '+')."""
        counts: dict[str, int] = (await self.ctl("stats"))["calls_per_number"]
        return counts

    async def record(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = (await self.ctl("record"))["record"]
        return entries

    def config(self, sounds_dir: Path, retry: str = "", **extra: Any) -> str:
        """The gateway's `[voice]` TOML for this simulator, with test-sized timers."""
        keys: dict[str, Any] = {
            "enabled": True, "sounds_dir": str(sounds_dir), "channel": "Local/{number}@plp-phones",
            "ring_timeout": 15, "max_channels": 10, "calls_per_second": 0, "answer_margin": 10,
        }  # fmt: skip
        keys.update(extra)
        lines = ["[voice]"] + [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
        lines += [
            "[voice.ami]", 'host = "127.0.0.1"', f"port = {self.port}", f'username = "{USER}"',
            f'secret = "{SECRET}"', "reconnect_initial_delay = 0.05", "reconnect_max_delay = 0.5",
            "connect_timeout = 3",
        ]  # fmt: skip
        lines += ["[voice.retry]", retry] if retry else []
        return "\n".join(lines) + "\n"


def voice_job(job_id: str, recipients: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": job_id,
        "priority": "hot",
        "message": {
            "fr": "Alerte PLP: cambriolages rue des Tilleuls. Fermez portes et fenêtres.",
            "nl": "BIN-alarm: inbraken in de Lindestraat. Sluit deuren en ramen.",
            "de": "KPP-Alarm: Einbrüche in der Lindenstraße. Schließen Sie Türen.",
            "en": "PLP alert: burglaries in Linden Street. Lock doors and windows.",
        },
        "channels": ["voice"],
        "voice": {"ack": True, "repeat": 0},
        "recipients": recipients,
        "ttl": 900,
    }
    job.update(extra)
    return job


def member(i: int, last_digit: int, lang: str = "fr", **extra: Any) -> dict[str, Any]:
    """A member whose phone's last digit picks the simulated callee's behaviour."""
    return {"ref": f"v-{i:05d}", "phone": number(last_digit, i), "lang": lang, **extra}
