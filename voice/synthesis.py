"""Alert audio for the voice channel: compose, synthesize once, cache, fall back, count.

`Synthesizer.prepare(job)` makes each language's audio when a job is accepted;
`render()` returns it per call from the cache. Identical requests running at the same time
share one synthesis; engines are tried in the configured order; all work is off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ParamSpec, TypeVar

from gateway.domain import Job, compose_text

from . import audio
from .compose import compose, spoken_options, templates_for
from .config import TtsConfig, VoiceConfig
from .tts import EngineError, TtsEngine, TtsFailed, build_engines

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
_TOUCH_INTERVAL = 3600.0  # refresh a used file's mtime at most hourly (retention is by age)


@dataclass(frozen=True)
class RenderedAudio:
    """A telephone-ready file. `asterisk_name` is what `Playback()` wants (no extension)."""

    path: Path
    asterisk_name: str
    engine: str
    voice: str
    lang: str
    duration_s: float
    fallback_used: bool
    cached: bool = False


_Key = tuple[str, str, str]  # (lang, composed text, format)


class Synthesizer:
    """Produces and caches the audio of alerts. One per daemon; `stop()` releases threads."""

    def __init__(
        self,
        config: VoiceConfig,
        *,
        engines: Mapping[str, TtsEngine] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_synthesis: Callable[[str, float], None] | None = None,
    ) -> None:
        self._config = config
        self._on_synthesis = on_synthesis  # (engine, seconds) after each synthesis, e.g. metrics
        self._tts = config.tts
        self._dir = config.sounds_dir
        self._engines = dict(engines) if engines is not None else build_engines(config.tts)
        self._clock = clock
        self._executor = ThreadPoolExecutor(
            max_workers=config.tts.workers, thread_name_prefix="tts-audio"
        )
        self._memo: dict[_Key, RenderedAudio] = {}
        self._inflight: dict[_Key, asyncio.Task[RenderedAudio]] = {}
        self._touched: dict[Path, float] = {}
        self._failed_at: dict[str, float] = {}
        self._counts: dict[str, int] = {"syntheses": 0, "cache_hits": 0, "fallbacks": 0}
        self._counts["failures"] = 0
        for name in self._engines:
            self._counts[f"{name}_syntheses"] = 0
            self._counts[f"{name}_failures"] = 0
        self._last_fallback = ""
        self._last_error = ""
        self._profile = _profile(self._tts)

    def reconfigure(self, tts: TtsConfig) -> None:
        """A configuration reload: templates, the engines' order, loudness and silences,
        cool-down and retention apply to the next syntheses (the composed text or the audio
        profile changes the cache key, so nothing stale is played). The engines' own settings
        (`[voice.tts.espeak]`, `[voice.tts.gtts]`) and `workers` need a restart."""
        old, self._tts = self._tts, tts
        if (old.espeak, old.gtts, old.workers) != (tts.espeak, tts.gtts, tts.workers):
            log.warning("reload: [voice.tts] engine settings and workers need a restart")
        self._profile = _profile(tts)
        self._memo.clear()  # its keys do not hold the profile; the files on disk (named by it) stay

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Create the sounds directory (shared with Asterisk)."""
        await self._run(self._dir.mkdir, mode=audio.DIR_MODE, parents=True, exist_ok=True)

    async def stop(self) -> None:
        """Cancel syntheses in progress and release the engines' and our threads."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for engine in self._engines.values():
            engine.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- the API the voice channel uses --------------------------------------------------

    async def prepare(self, job: Job) -> dict[str, str]:
        """Make the audio of each language of the job's voice recipients, once per language.

        Returns {lang: "tts_failed"} for the languages no engine could produce.
        """
        langs = _voice_langs(job)

        async def one(lang: str) -> tuple[str, str | None]:
            text = compose_text(job.message, lang, test=job.test)
            try:
                await self.render(text=text, lang=lang, options=job.options, test=job.test)
            except TtsFailed:
                return lang, "tts_failed"
            return lang, None

        results = await asyncio.gather(*(one(lang) for lang in langs))
        return {lang: reason for lang, reason in results if reason is not None}

    async def render(
        self, *, text: str, lang: str, options: Mapping[str, object], test: bool
    ) -> RenderedAudio:
        """The audio a member hears for this attempt; raises TtsFailed when no engine works."""
        spoken = compose(
            text,
            lang,
            spoken_options(options, self._tts),
            templates_for(lang, self._tts.templates),
            test=test,
        )
        key: _Key = (lang, spoken, self._tts.format)
        hit = self._memo.get(key)
        if hit is not None and await self._still_there(hit.path):
            self._counts["cache_hits"] += 1
            return replace(hit, cached=True)
        task = self._inflight.get(key)
        if task is not None:
            self._counts["cache_hits"] += 1  # shares a synthesis already running
            return replace(await asyncio.shield(task), cached=True)
        task = asyncio.create_task(self._produce(lang, spoken), name=f"tts-{lang}")
        self._inflight[key] = task
        task.add_done_callback(lambda t: self._settle(key, t))
        return await asyncio.shield(task)

    def composed_text(
        self, *, text: str, lang: str, options: Mapping[str, object], test: bool
    ) -> str:
        """The exact text `render` would speak (for the CLI and for review)."""
        opts = spoken_options(options, self._tts)
        return compose(text, lang, opts, templates_for(lang, self._tts.templates), test=test)

    def audio_paths(self, job: Job) -> set[Path]:
        """Every file `prepare(job)` may have made: per language, one per configured engine
        (a fallback engine makes its own file)."""
        paths: set[Path] = set()
        for lang in _voice_langs(job):
            text = compose_text(job.message, lang, test=job.test)
            spoken = self.composed_text(text=text, lang=lang, options=job.options, test=job.test)
            for name in self._tts.engines_for(lang):
                engine = self._engines.get(name)
                if engine is None or engine.voice(lang) is None:
                    continue
                paths.add(self._audio_path(engine, lang, spoken))
        return paths

    def _audio_path(self, engine: TtsEngine, lang: str, spoken: str) -> Path:
        """Where `engine` puts (or put) the audio of `spoken`: the name is a hash of what
        makes the sound, so the same text in the same voice is made once."""
        fmt = self._tts.format
        stem = audio.audio_name(
            engine=engine.name,
            voice=engine.fingerprint(lang),
            lang=lang,
            text=spoken,
            fmt=fmt,
            profile=self._profile,
        )
        return self._dir / (stem + audio.EXTENSIONS[fmt])

    async def forget(self, jobs: Collection[Job], keep: Collection[Job] = ()) -> int:
        """Delete the audio of purged `jobs`, except files that jobs in `keep` (still
        running, same text) use; count the files removed."""
        gone: set[Path] = set()
        for job in jobs:
            gone |= self.audio_paths(job)
        for job in keep:
            gone -= self.audio_paths(job)
        if not gone:
            return 0
        removed = await self._run(audio.remove, gone)
        for key, hit in list(self._memo.items()):
            if hit.path in gone:
                del self._memo[key]
                self._touched.pop(hit.path, None)
        return removed

    def stats(self) -> dict[str, int | str]:
        """Counters for the health topic / metrics. No personal data, no message text."""
        out: dict[str, int | str] = dict(self._counts)
        out["in_flight"] = len(self._inflight)
        out["cached_files"] = len(self._memo)
        out["last_fallback"] = self._last_fallback
        out["last_error"] = self._last_error
        return out

    async def cleanup(self, keep: Collection[Path] = ()) -> int:
        """Remove audio unused for `[voice.tts] retention_days`, except `keep` (calls live)."""
        max_age = self._tts.retention_days * 86400
        removed = await self._run(audio.cleanup, self._dir, max_age_s=max_age, keep=keep)
        if removed:
            for key, hit in list(self._memo.items()):
                if not await self._run(hit.path.exists):
                    del self._memo[key]
                    self._touched.pop(hit.path, None)
        return removed

    # --- synthesis -----------------------------------------------------------------------

    def _settle(self, key: _Key, task: asyncio.Task[RenderedAudio]) -> None:
        self._inflight.pop(key, None)
        if task.cancelled():
            return
        if task.exception() is None:
            self._memo[key] = task.result()

    def _order(self, lang: str) -> list[str]:
        """Configured order; an engine that failed recently goes last (it is still tried)."""
        configured = [n for n in self._tts.engines_for(lang) if n in self._engines]
        now = self._clock()
        cooldown = self._tts.engine_cooldown

        def cooling(name: str) -> bool:
            failed = self._failed_at.get(name)
            return failed is not None and now - failed < cooldown

        return [n for n in configured if not cooling(n)] + [n for n in configured if cooling(n)]

    async def _produce(self, lang: str, spoken: str) -> RenderedAudio:
        configured = [n for n in self._tts.engines_for(lang) if n in self._engines]
        first = configured[0] if configured else ""
        errors: list[str] = []
        for name in self._order(lang):
            engine = self._engines[name]
            voice = engine.voice(lang)
            if voice is None:
                errors.append(f"{name}: no_voice")
                continue
            try:
                rendered = await self._with_engine(engine, voice, lang, spoken)
            except (EngineError, audio.AudioError, OSError) as exc:
                self._engine_failed(name, lang, str(exc))
                errors.append(str(exc))
                continue
            except Exception as exc:  # an engine's bug must not stop an alert: next engine
                log.exception("tts: engine %s crashed for lang=%s", name, lang)
                self._engine_failed(name, lang, f"{name}: {type(exc).__name__}")
                errors.append(f"{name}: {type(exc).__name__}")
                continue
            if name != first:
                rendered = replace(rendered, fallback_used=True)
                self._counts["fallbacks"] += 1
                why = errors[-1] if errors else "cooling down"
                self._last_fallback = f"{lang}: {first} -> {name} ({why})"
                log.warning("tts: fallback for lang=%s: %s", lang, self._last_fallback)
            return rendered
        self._counts["failures"] += 1
        detail = "; ".join(errors) or "no engine configured"
        self._last_error = f"{lang}: {detail}"[:300]
        log.error("tts: no engine could speak lang=%s: %s", lang, detail)
        raise TtsFailed(detail)

    def _engine_failed(self, name: str, lang: str, detail: str) -> None:
        self._counts[f"{name}_failures"] += 1
        self._failed_at[name] = self._clock()
        self._last_error = f"{lang}: {detail}"[:300]
        log.warning("tts: engine %s failed for lang=%s: %s", name, lang, detail)

    async def _with_engine(
        self, engine: TtsEngine, voice: str, lang: str, spoken: str
    ) -> RenderedAudio:
        fmt = self._tts.format
        path = self._audio_path(engine, lang, spoken)
        size = await self._run(_size, path)
        if size is not None:  # made earlier (before a restart): no synthesis needed
            self._counts["cache_hits"] += 1
            duration = audio.duration_of(size, fmt)
            return self._result(engine, voice, lang, path, duration=duration, cached=True)
        started = self._clock()
        produced = await engine.synthesize(spoken, lang)
        pcm = await audio.decode(produced.data, limit_s=self._tts.convert_timeout)
        data = await self._run(self._finish, pcm, fmt)
        await self._run(audio.write_atomic, path, data)
        self._counts["syntheses"] += 1
        self._counts[f"{engine.name}_syntheses"] += 1
        duration = audio.duration_of(len(data), fmt)
        took = self._clock() - started
        if self._on_synthesis is not None:
            self._on_synthesis(engine.name, took)
        log.info(
            "tts: synthesized lang=%s engine=%s voice=%s: %.1f s of audio in %.2f s -> %s",
            lang,
            engine.name,
            voice,
            duration,
            took,
            path.name,
        )
        return self._result(engine, voice, lang, path, duration=duration, cached=False)

    def _finish(self, pcm: bytes, fmt: str) -> bytes:
        seg = audio.telephone_segment(
            pcm,
            leading_silence_ms=self._tts.leading_silence_ms,
            trailing_silence_ms=self._tts.trailing_silence_ms,
            target_dbfs=self._tts.target_dbfs,
            peak_dbfs=self._tts.peak_dbfs,
        )
        return audio.encode(seg, fmt)

    def _result(
        self,
        engine: TtsEngine,
        voice: str,
        lang: str,
        path: Path,
        *,
        duration: float,
        cached: bool,
    ) -> RenderedAudio:
        return RenderedAudio(
            path=path,
            asterisk_name=str(path.with_suffix("")),
            engine=engine.name,
            voice=voice,
            lang=lang,
            duration_s=round(duration, 3),
            fallback_used=False,
            cached=cached,
        )

    async def _still_there(self, path: Path) -> bool:
        """A cached file still exists (retention or an operator may remove it); keep it fresh."""
        now = time.time()
        touch = now - self._touched.get(path, 0.0) >= _TOUCH_INTERVAL
        present = await self._run(_check, path, touch)
        if present and touch:
            self._touched[path] = now
        return present

    async def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))


def _voice_langs(job: Job) -> list[str]:
    """The languages of the job's voice recipients that its message has."""
    langs = sorted({r.lang for r in job.recipients if "voice" in r.channels})
    return [lang for lang in langs if lang in job.message]


def _check(path: Path, touch: bool) -> bool:
    """Whether `path` exists; with `touch`, also mark it as used now (for retention)."""
    try:
        if touch:
            os.utime(path)
            return True
        return path.exists()
    except FileNotFoundError:
        return False


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _profile(tts: TtsConfig) -> str:
    """The audio processing settings, part of every audio file's key."""
    return (
        f"{tts.leading_silence_ms}:{tts.trailing_silence_ms}:{tts.target_dbfs:g}:{tts.peak_dbfs:g}"
    )
