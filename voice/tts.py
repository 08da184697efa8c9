"""Speech engines behind one small interface: text + language -> audio bytes, never blocking.

`EspeakEngine` (offline, the default) runs espeak-ng as a subprocess; `GttsEngine` (online)
runs gTTS in its own threads. Each enforces its own timeout. Adding an engine is one class
here, its name in `voice.config.EngineName` and a line in `build_engines`.
"""

from __future__ import annotations

import abc
import asyncio
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

from gtts import gTTS, gTTSError

from gateway.errors import PermanentError

from .config import EspeakConfig, GttsConfig, TtsConfig
from .pipe import run_piped

log = logging.getLogger(__name__)


class EngineError(Exception):
    """One engine could not speak this text; the next engine is tried.

    `reason` is short and machine-readable: timeout, unavailable, no_voice, failed, http_error.
    """

    def __init__(self, engine: str, reason: str, detail: str = "") -> None:
        self.engine = engine
        self.reason = reason
        self.detail = detail
        super().__init__(f"{engine}: {reason}" + (f": {detail}" if detail else ""))


class TtsFailed(PermanentError):
    """No engine could produce the audio (reason `tts_failed`).

    Permanent: every engine was already tried with its timeout, so calling again later would
    only delay the job's fallback channel, which is what must take over now.
    """

    def __init__(self, detail: str = "") -> None:
        super().__init__("tts_failed", detail)


@dataclass(frozen=True)
class EngineAudio:
    """What an engine produced: encoded audio and its container (decoded by ffmpeg)."""

    data: bytes
    container: str  # "wav", "mp3"


class TtsEngine(abc.ABC):
    """One speech engine. `synthesize` must not block the event loop and must time out."""

    name: ClassVar[str]

    @abc.abstractmethod
    def voice(self, lang: str) -> str | None:
        """The engine's voice for `lang`, or None when it has none."""

    def fingerprint(self, lang: str) -> str:
        """Everything besides the text that changes the audio (part of the file name)."""
        return self.voice(lang) or ""

    @abc.abstractmethod
    async def synthesize(self, text: str, lang: str) -> EngineAudio:
        """Speak `text` in `lang` or raise EngineError."""

    def close(self) -> None:  # noqa: B027 - an optional hook, most engines own nothing
        """Release threads or processes the engine owns."""


class EspeakEngine(TtsEngine):
    """espeak-ng, offline; the text goes on stdin (never on the command line)."""

    name = "espeak"

    def __init__(self, config: EspeakConfig) -> None:
        self._config = config
        self._known: frozenset[str] | None = None

    async def _known_voices(self) -> frozenset[str]:
        """Voices espeak-ng has (it silently speaks English for an unknown `-v`)."""
        if self._known is None:
            out = await self._run([self._config.binary, "--voices"], b"")
            names: set[str] = set()
            for line in out.decode(errors="replace").splitlines()[1:]:
                cols = line.split()
                if len(cols) >= 5:
                    names.update({cols[1].lower(), cols[3].lower()})
                    names.add(cols[4].rsplit("/", 1)[-1].lower())
            self._known = frozenset(names)
        return self._known

    async def _run(self, argv: list[str], stdin: bytes) -> bytes:
        try:
            status, out, err = await run_piped(argv, stdin, self._config.timeout)
        except TimeoutError:
            raise EngineError(self.name, "timeout", f"{self._config.timeout:g} s") from None
        except OSError as exc:
            raise EngineError(self.name, "unavailable", exc.strerror or str(exc)) from exc
        if status != 0:
            detail = err.decode(errors="replace").strip()[:200]
            raise EngineError(self.name, "failed", f"exit {status}: {detail}")
        return out

    def voice(self, lang: str) -> str | None:
        return self._config.voices.get(lang)

    def fingerprint(self, lang: str) -> str:
        return f"{self.voice(lang)}@{self._config.speed}"

    async def synthesize(self, text: str, lang: str) -> EngineAudio:
        voice = self.voice(lang)
        if voice is None:
            raise EngineError(self.name, "no_voice", lang)
        if voice.split("+", 1)[0].lower() not in await self._known_voices():
            raise EngineError(self.name, "no_voice", f"espeak-ng has no voice {voice!r}")
        argv = [self._config.binary, "-v", voice, "-s", str(self._config.speed), "-b", "1"]
        out = await self._run([*argv, "--stdout"], text.encode("utf-8"))
        if len(out) <= 44:
            raise EngineError(self.name, "failed", "no audio")
        return EngineAudio(out, "wav")


class GttsEngine(TtsEngine):
    """gTTS (Google Translate voices, MP3). Blocking HTTP, so it runs in its own threads.

    The overall timeout abandons a hung request at once; the thread itself ends when
    the requests timeout (the same value) expires.
    """

    name = "gtts"

    def __init__(self, config: GttsConfig, *, threads: int = 4) -> None:
        self._config = config
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gtts")

    def voice(self, lang: str) -> str | None:
        code = self._config.langs.get(lang)
        return f"{code}.{self._config.tld}" if code else None

    def fingerprint(self, lang: str) -> str:
        return f"{self.voice(lang)}{'@slow' if self._config.slow else ''}"

    async def synthesize(self, text: str, lang: str) -> EngineAudio:
        code = self._config.langs.get(lang)
        if code is None:
            raise EngineError(self.name, "no_voice", lang)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._blocking, text, code)
        try:
            data = await asyncio.wait_for(future, self._config.timeout)
        except TimeoutError:
            raise EngineError(self.name, "timeout", f"{self._config.timeout:g} s") from None
        return EngineAudio(data, "mp3")

    def _blocking(self, text: str, code: str) -> bytes:
        timeout = self._config.timeout
        tts = gTTS(
            text,
            lang=code,
            tld=self._config.tld,
            slow=self._config.slow,
            lang_check=False,
            timeout=(min(3.0, timeout), timeout),
        )
        buf = io.BytesIO()
        try:
            tts.write_to_fp(buf)
        except gTTSError as exc:
            status = getattr(getattr(exc, "rsp", None), "status_code", None)
            if _timed_out(exc):
                # The requests timeout equals the overall one: whichever fires first, it is
                # the same "timeout".
                reason = "timeout"
            elif status is None:
                reason = "failed"  # no answer: connection refused, DNS
            else:
                reason = "http_error" if status >= 400 else "bad_response"
            raise EngineError(self.name, reason, str(exc)[:200]) from None
        if not buf.getvalue():
            raise EngineError(self.name, "failed", "empty response")
        return buf.getvalue()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _timed_out(exc: BaseException) -> bool:
    """Whether a gTTS error was caused by a requests timeout (anywhere in its chain)."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.Timeout):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def build_engines(config: TtsConfig) -> dict[str, TtsEngine]:
    """The engines the configuration uses, by name."""
    wanted = set(config.engines)
    for order in config.engines_by_lang.values():
        wanted.update(order)
    engines: dict[str, TtsEngine] = {}
    if "espeak" in wanted:
        engines["espeak"] = EspeakEngine(config.espeak)
    if "gtts" in wanted:
        engines["gtts"] = GttsEngine(config.gtts)
    return engines
