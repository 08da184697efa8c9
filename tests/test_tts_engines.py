"""Engines and fallback: gTTS against a local stand-in for its service, espeak-ng for real."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import PermanentError
from voice.config import EspeakConfig, GttsConfig, TtsConfig, VoiceConfig
from voice.synthesis import Synthesizer
from voice.tts import EngineError, EspeakEngine, GttsEngine, TtsFailed

from .tts_fixtures import (
    PROXY_VARS,
    GttsStub,
    gtts_pointed_at,
    make_mp3,
    read_wav,
    voice_job,
    with_loop_lag,
)

GTTS_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def mp3() -> bytes:
    return make_mp3("This audio comes from the stub of the online service.")


@pytest.fixture
def stub(mp3: bytes, monkeypatch: pytest.MonkeyPatch) -> Iterator[GttsStub]:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    server = GttsStub(mp3)
    server.start()
    with gtts_pointed_at(server):
        yield server
    server.stop()


def _config(
    tmp_path: Path, engines: tuple[str, ...] = ("gtts", "espeak"), **tts: object
) -> VoiceConfig:
    return VoiceConfig(
        sounds_dir=tmp_path,
        tts=TtsConfig(
            engines=engines,
            gtts=GttsConfig(timeout=GTTS_TIMEOUT),
            **tts,
        ),
    )


async def test_gtts_success_converts_its_mp3(tmp_path: Path, stub: GttsStub) -> None:
    synth = Synthesizer(_config(tmp_path))
    try:
        got = await synth.render(text="Alerte.", lang="fr", options={}, test=False)
    finally:
        await synth.stop()
    assert stub.requests >= 1
    assert (got.engine, got.voice, got.fallback_used) == ("gtts", "fr.com", False)
    wav = read_wav(got.path)
    assert (wav.rate, wav.channels, wav.width) == (8000, 1, 2)
    assert wav.rms_dbfs(0.3) > -30 and wav.leading_silence() >= 0.28
    stats = synth.stats()
    assert (stats["gtts_syntheses"], stats["espeak_syntheses"], stats["fallbacks"]) == (1, 0, 0)


async def test_slow_gtts_falls_back_to_espeak_within_the_timeout(
    tmp_path: Path, stub: GttsStub
) -> None:
    stub.mode = "slow"
    synth = Synthesizer(_config(tmp_path))
    try:
        work = synth.render(text="Inbraak.", lang="nl", options={}, test=False)
        got, lag, elapsed = await with_loop_lag(work)
    finally:
        await synth.stop()
    assert (got.engine, got.fallback_used) == ("espeak", True)
    assert GTTS_TIMEOUT * 0.9 <= elapsed < GTTS_TIMEOUT + 5.0, elapsed
    # Held, one tick would wait the whole timeout; a busy machine delays a tick far less.
    assert lag < GTTS_TIMEOUT / 2, "waiting for the online engine must not hold the loop"
    stats = synth.stats()
    assert (stats["fallbacks"], stats["gtts_failures"], stats["espeak_syntheses"]) == (1, 1, 1)
    assert "gtts -> espeak" in str(stats["last_fallback"])
    assert "timeout" in str(stats["last_fallback"])


async def test_gtts_http_error_falls_back_at_once(tmp_path: Path, stub: GttsStub) -> None:
    stub.mode = "error"
    synth = Synthesizer(_config(tmp_path))
    try:
        started = time.monotonic()
        got = await synth.render(text="Einbruch.", lang="de", options={}, test=False)
        elapsed = time.monotonic() - started
        assert (got.engine, got.fallback_used) == ("espeak", True)
        assert elapsed < GTTS_TIMEOUT + 5.0
        assert "http_error" in str(synth.stats()["last_fallback"])
        # Within the cool-down the failed engine goes last: no new request, no waiting.
        requests = stub.requests
        again = await synth.render(text="Zweiter Einbruch.", lang="de", options={}, test=False)
        assert (again.engine, again.fallback_used) == ("espeak", True)
        assert stub.requests == requests
    finally:
        await synth.stop()


async def test_gtts_engine_error_reasons(stub: GttsStub) -> None:
    engine = GttsEngine(GttsConfig(timeout=GTTS_TIMEOUT))
    try:
        stub.mode = "error"
        with pytest.raises(EngineError) as err:
            await engine.synthesize("x", "fr")
        assert err.value.reason == "http_error"
        stub.mode = "slow"
        with pytest.raises(EngineError) as err:
            await engine.synthesize("x", "fr")
        assert err.value.reason == "timeout"
    finally:
        engine.close()


async def test_espeak_timeout_and_missing_binary(tmp_path: Path) -> None:
    script = tmp_path / "hung-espeak"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    hung = EspeakEngine(EspeakConfig(binary=str(script), timeout=0.3))
    started = time.monotonic()
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(hung.synthesize("x", "fr"), 10)
    assert err.value.reason == "timeout"
    assert time.monotonic() - started < 5
    missing = EspeakEngine(EspeakConfig(binary="/nonexistent/espeak-ng"))
    with pytest.raises(EngineError) as err:
        await missing.synthesize("x", "fr")
    assert err.value.reason == "unavailable"
    with pytest.raises(EngineError) as err:
        await EspeakEngine(EspeakConfig()).synthesize("x", "xx")
    assert err.value.reason == "no_voice"


async def test_no_engine_works_tts_failed_per_language(tmp_path: Path) -> None:
    config = VoiceConfig(
        sounds_dir=tmp_path,
        tts=TtsConfig(espeak=EspeakConfig(voices={"nl": "no-such-voice"})),
    )
    synth = Synthesizer(config)
    try:
        job = voice_job("j-fail", {"fr": 3, "nl": 3})
        assert await synth.prepare(job) == {"nl": "tts_failed"}
        with pytest.raises(TtsFailed) as err:
            await synth.render(text="Inbraak.", lang="nl", options={}, test=False)
        assert isinstance(err.value, PermanentError) and err.value.reason == "tts_failed"
        stats = synth.stats()
        assert stats["failures"] == 2 and stats["syntheses"] == 1
        assert "nl" in str(stats["last_error"])
    finally:
        await synth.stop()


async def test_engine_order_per_language(tmp_path: Path, stub: GttsStub) -> None:
    config = _config(tmp_path, engines=("espeak",), engines_by_lang={"en": ("gtts", "espeak")})
    synth = Synthesizer(config)
    try:
        fr = await synth.render(text="Alerte.", lang="fr", options={}, test=False)
        en = await synth.render(text="Alert.", lang="en", options={}, test=False)
    finally:
        await synth.stop()
    assert (fr.engine, en.engine) == ("espeak", "gtts")
    assert not fr.fallback_used and not en.fallback_used
