"""Real espeak-ng audio in every language is telephone-ready; formats; atomic files; retention."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gateway.domain import compose_text
from voice import audio
from voice.config import TtsConfig, VoiceConfig
from voice.synthesis import Synthesizer

from .tts_fixtures import read_wav, voice_job

TEXTS = voice_job("texts", {}).message


@pytest.mark.parametrize("lang", ["fr", "nl", "de", "en"])
async def test_espeak_audio_is_telephone_ready(tmp_path: Path, lang: str) -> None:
    synth = Synthesizer(VoiceConfig(sounds_dir=tmp_path))
    await synth.start()
    try:
        text = compose_text(TEXTS, lang, test=False)
        spoken = synth.composed_text(text=text, lang=lang, options={}, test=False)
        got = await synth.render(text=text, lang=lang, options={}, test=False)
    finally:
        await synth.stop()

    assert got.engine == "espeak" and not got.fallback_used and got.lang == lang
    assert got.path.parent == tmp_path and got.path.suffix == ".wav"
    assert got.asterisk_name == str(tmp_path / got.path.stem)
    wav = read_wav(got.path)
    assert (wav.rate, wav.channels, wav.width) == (8000, 1, 2)
    assert wav.duration == pytest.approx(got.duration_s, abs=0.01)
    # Speech at 150 words/min: roughly 12-16 characters a second; allow a wide band.
    assert len(spoken) / 25 < wav.duration < len(spoken) / 6, (len(spoken), wav.duration)
    assert wav.rms_dbfs(0.3) > -30, "speech must be clearly audible"
    assert wav.rms_dbfs(0.3) < -10, "loudness is levelled, not clipped"
    assert 0.28 <= wav.leading_silence() < 1.0
    assert wav.rms_dbfs(0, 0.28) == float("-inf"), "leading silence is digital silence"


@pytest.mark.parametrize(("fmt", "bytes_per_second"), [("sln", 16000), ("alaw", 8000)])
async def test_raw_formats(tmp_path: Path, fmt: str, bytes_per_second: int) -> None:
    config = VoiceConfig(sounds_dir=tmp_path, tts=TtsConfig(format=fmt))
    synth = Synthesizer(config)
    try:
        got = await synth.render(text="Test.", lang="en", options={}, test=False)
    finally:
        await synth.stop()
    assert got.path.suffix == f".{fmt}"
    size = got.path.stat().st_size
    assert size / bytes_per_second == pytest.approx(got.duration_s, abs=0.01)
    assert got.duration_s > 1.0


def test_leading_silence_is_configurable(tmp_path: Path) -> None:
    pcm = (b"\x00\x10" * 4000) + (b"\x00\xf0" * 4000)  # 1 s of a loud square wave
    seg = audio.telephone_segment(
        pcm, leading_silence_ms=500, trailing_silence_ms=0, target_dbfs=-18, peak_dbfs=-1
    )
    path = tmp_path / "x.wav"
    audio.write_atomic(path, audio.encode(seg, "wav"))
    wav = read_wav(path)
    assert wav.leading_silence() == pytest.approx(0.5, abs=0.002)
    assert wav.rms_dbfs(0.5) == pytest.approx(-18, abs=0.5)


def test_silent_engine_output_is_rejected() -> None:
    with pytest.raises(audio.AudioError):
        audio.telephone_segment(
            b"\x00" * 16000,
            leading_silence_ms=0,
            trailing_silence_ms=0,
            target_dbfs=-18,
            peak_dbfs=-1,
        )


def test_write_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "plp-fr-abc.wav"
    audio.write_atomic(path, b"one")
    audio.write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["plp-fr-abc.wav"]
    assert path.stat().st_mode & 0o777 == 0o640  # Asterisk reads by group, no one else


def test_names_are_content_hashes() -> None:
    base = {"engine": "espeak", "voice": "fr-be@150", "lang": "fr", "text": "a", "fmt": "wav"}
    name = audio.audio_name(profile="p", **base)
    assert name.startswith("plp-fr-") and name == audio.audio_name(profile="p", **base)
    for change in ({"engine": "gtts"}, {"voice": "fr"}, {"text": "b"}, {"fmt": "sln"}):
        assert audio.audio_name(profile="p", **{**base, **change}) != name
    assert audio.audio_name(profile="q", **base) != name


def test_retention_removes_old_unused_files(tmp_path: Path) -> None:
    now = time.time()
    old = now - 10 * 86400

    def make(name: str, mtime: float) -> Path:
        p = tmp_path / name
        p.write_bytes(b"x")
        os.utime(p, (mtime, mtime))
        return p

    stale = make("plp-fr-old.wav", old)
    in_use = make("plp-nl-old.wav", old)
    fresh = make("plp-de-new.wav", now)
    foreign = make("other.wav", old)
    temp = make(".tmp-abc.wav", now - 7200)
    removed = audio.cleanup(tmp_path, max_age_s=7 * 86400, keep=[in_use], now=now)
    assert removed == 2
    assert not stale.exists() and not temp.exists()
    assert in_use.exists() and fresh.exists() and foreign.exists()


async def test_synthesizer_cleanup_forgets_removed_files(tmp_path: Path) -> None:
    synth = Synthesizer(VoiceConfig(sounds_dir=tmp_path, tts=TtsConfig(retention_days=1)))
    try:
        first = await synth.render(text="Un.", lang="fr", options={}, test=False)
        kept = await synth.render(text="Deux.", lang="fr", options={}, test=False)
        for p in (first.path, kept.path):
            os.utime(p, (time.time() - 3 * 86400,) * 2)
        assert await synth.cleanup(keep=[kept.path]) == 1
        assert not first.path.exists() and kept.path.exists()
        again = await synth.render(text="Un.", lang="fr", options={}, test=False)
        assert again.path == first.path and again.path.exists() and not again.cached
        assert synth.stats()["syntheses"] == 3
    finally:
        await synth.stop()
