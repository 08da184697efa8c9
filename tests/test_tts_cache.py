"""Pre-synthesis once per language, the cache, single-flight, and a loop that never stalls."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.domain import compose_text
from voice.config import TemplateConfig, TtsConfig, VoiceConfig
from voice.synthesis import Synthesizer

from .tts_fixtures import voice_job, with_loop_lag


async def test_500_recipients_in_two_languages_two_syntheses(tmp_path: Path) -> None:
    synth = Synthesizer(VoiceConfig(sounds_dir=tmp_path))
    await synth.start()
    try:
        job = voice_job("j-500", {"fr": 300, "nl": 200}, others=40, ack=True, repeat=1)
        assert await synth.prepare(job) == {}
        assert synth.stats()["syntheses"] == 2  # e-mail-only German members need no audio

        # Every call renders its attempt's audio, all at once: nothing is synthesized again.
        voice = [r for r in job.recipients if "voice" in r.channels]
        rendered = await asyncio.gather(
            *(
                synth.render(
                    text=compose_text(job.message, r.lang, test=job.test),
                    lang=r.lang,
                    options=job.options,
                    test=job.test,
                )
                for r in voice
            )
        )
    finally:
        await synth.stop()
    stats = synth.stats()
    assert (stats["syntheses"], stats["cache_hits"], stats["espeak_syntheses"]) == (2, 500, 2)
    assert len({a.path for a in rendered}) == 2 and all(a.cached for a in rendered)
    assert {a.lang for a in rendered} == {"fr", "nl"}
    names = await asyncio.to_thread(lambda: sorted(p.name[:7] for p in tmp_path.iterdir()))
    assert names == ["plp-fr-", "plp-nl-"]


async def test_concurrent_identical_requests_share_one_synthesis(tmp_path: Path) -> None:
    synth = Synthesizer(VoiceConfig(sounds_dir=tmp_path))
    try:
        jobs = [voice_job(f"j{i}", {"de": 1}) for i in range(20)]
        results = await asyncio.gather(*(synth.prepare(j) for j in jobs))
        assert results == [{}] * 20
        stats = synth.stats()
        assert (stats["syntheses"], stats["cache_hits"]) == (1, 19)
        # A different choice (press 1) is a different audio.
        await synth.prepare(voice_job("j-ack", {"de": 1}, ack=True))
        assert synth.stats()["syntheses"] == 2
    finally:
        await synth.stop()


async def test_audio_on_disk_is_reused_after_a_restart(tmp_path: Path) -> None:
    job = voice_job("j-restart", {"en": 2}, test=True)
    first = Synthesizer(VoiceConfig(sounds_dir=tmp_path))
    try:
        await first.prepare(job)
    finally:
        await first.stop()
    second = Synthesizer(VoiceConfig(sounds_dir=tmp_path))
    try:
        await second.prepare(job)
        got = await second.render(
            text=compose_text(job.message, "en", test=True), lang="en", options={}, test=True
        )
    finally:
        await second.stop()
    stats = second.stats()
    assert (stats["syntheses"], stats["cache_hits"]) == (0, 2)
    assert got.cached and got.duration_s > 5


async def test_cancelled_caller_does_not_cancel_the_shared_synthesis(tmp_path: Path) -> None:
    synth = Synthesizer(VoiceConfig(sounds_dir=tmp_path))
    try:
        kw: dict[str, object] = {"text": "Alerte.", "lang": "fr", "options": {}, "test": False}
        impatient = asyncio.create_task(synth.render(**kw))  # type: ignore[arg-type]
        patient = asyncio.create_task(synth.render(**kw))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        impatient.cancel()
        got = await asyncio.wait_for(patient, 30)
        assert got.path.exists() and synth.stats()["syntheses"] == 1
    finally:
        await synth.stop()


async def test_long_synthesis_does_not_block_the_loop(tmp_path: Path) -> None:
    synth = Synthesizer(VoiceConfig(sounds_dir=tmp_path))
    text = " ".join([voice_job("x", {}).message["fr"]] * 45)  # ~3,000 characters
    try:
        work = synth.render(text=text, lang="fr", options={}, test=False)
        got, lag, took = await with_loop_lag(work)
    finally:
        await synth.stop()
    assert got.duration_s > 120  # several minutes of speech: real work was done
    # Were the work on the loop, one tick would wait for most of it (`took`); a busy
    # machine may delay a tick, never by half the synthesis.
    assert lag < took / 2, (lag, took)


async def test_a_reload_with_new_templates_makes_new_audio_for_the_next_jobs(
    tmp_path: Path,
) -> None:
    synth = Synthesizer(VoiceConfig(sounds_dir=tmp_path))
    try:
        assert await synth.prepare(voice_job("before", {"nl": 3})) == {}
        assert synth.stats()["syntheses"] == 1
        new = TtsConfig(
            templates={"nl": TemplateConfig(intro="Hier is de politie van {plp_name}.")}
        )
        synth.reconfigure(new)
        assert await synth.prepare(voice_job("after", {"nl": 3})) == {}
        assert synth.stats()["syntheses"] == 2, "the new introduction is new audio"
        assert await synth.prepare(voice_job("french", {"fr": 1})) == {}
        assert synth.stats()["syntheses"] == 3
        synth.reconfigure(new)  # unchanged again: cached audio is found again
        assert await synth.prepare(voice_job("again", {"nl": 1})) == {}
        assert synth.stats()["syntheses"] == 3
    finally:
        await synth.stop()


async def test_each_synthesis_is_timed_for_the_metrics_not_the_cache_hits(tmp_path: Path) -> None:
    """`plp_gateway_tts_synthesis_duration_seconds` is fed by the synthesizer's hook."""
    from gateway.metrics import Metrics

    metrics = Metrics("test", "node-a")
    timed: list[tuple[str, float]] = []

    def on_synthesis(engine: str, seconds: float) -> None:
        timed.append((engine, seconds))
        metrics.tts_duration(engine, seconds)

    synth = Synthesizer(VoiceConfig(sounds_dir=tmp_path), on_synthesis=on_synthesis)
    await synth.start()
    try:
        job = voice_job("j-timed", {"fr": 3}, others=0, ack=True, repeat=1)
        assert await synth.prepare(job) == {}
        assert await synth.prepare(job) == {}  # the same audio again: served, not timed
    finally:
        await synth.stop()
    assert [engine for engine, _ in timed] == ["espeak"]
    assert timed[0][1] > 0
    exposition = metrics.render().decode()
    assert 'plp_gateway_tts_synthesis_duration_seconds_count{engine="espeak"} 1.0' in exposition
