"""Configuration of the voice channel (`[voice]`, `[voice.tts]`, `[voice.ami]`).

Each sub-section is its own frozen model so that the call and TTS parts grow independently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

LANGUAGES = ("fr", "nl", "de", "en")
# Adding an engine: a class in voice/tts.py, its name here, its section in TtsConfig.
EngineName = Literal["espeak", "gtts"]
AudioFormat = Literal["wav", "sln", "alaw"]

DEFAULT_ESPEAK_VOICES: dict[str, str] = {"fr": "fr-be", "nl": "nl", "de": "de", "en": "en-gb"}
DEFAULT_GTTS_LANGS: dict[str, str] = {"fr": "fr", "nl": "nl", "de": "de", "en": "en"}
_PLACEHOLDERS = ("{plp_name}", "{code_word}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EspeakConfig(_Section):
    """`[voice.tts.espeak]`: the offline engine."""

    binary: str = "espeak-ng"
    voices: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ESPEAK_VOICES))
    speed: int = Field(default=150, ge=80, le=450, description="words per minute")
    timeout: float = Field(default=15.0, gt=0, description="seconds before the process is killed")

    @field_validator("voices")
    @classmethod
    def _merge_voices(cls, v: dict[str, str]) -> dict[str, str]:
        return {**DEFAULT_ESPEAK_VOICES, **v}


class GttsConfig(_Section):
    """`[voice.tts.gtts]`: Google Translate's voices (needs the internet)."""

    langs: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_GTTS_LANGS))
    tld: str = Field(default="com", pattern=r"^[a-z.]{2,10}$", description="translate.google.<tld>")
    slow: bool = False
    timeout: float = Field(default=8.0, gt=0, description="seconds for the whole synthesis")

    @field_validator("langs")
    @classmethod
    def _merge_langs(cls, v: dict[str, str]) -> dict[str, str]:
        return {**DEFAULT_GTTS_LANGS, **v}


class TemplateConfig(_Section):
    """`[voice.tts.templates.<lang>]`: overrides of the spoken frame; unset keys keep defaults.

    `intro` may use `{plp_name}`, `code` uses `{code_word}`.
    """

    intro: str | None = None
    default_plp_name: str | None = None
    code: str | None = None
    repeat: str | None = None
    ack: str | None = None
    test_end: str | None = None

    @field_validator("intro", "code", "repeat", "ack", "test_end")
    @classmethod
    def _placeholders(cls, v: str | None) -> str | None:
        if v is None:
            return v
        rest = v
        for p in _PLACEHOLDERS:
            rest = rest.replace(p, "")
        if "{" in rest or "}" in rest:
            raise ValueError("only {plp_name} and {code_word} may appear in braces")
        return v


class TtsConfig(_Section):
    """`[voice.tts]`: engines, what the member hears, and the telephone audio."""

    engines: tuple[EngineName, ...] = Field(default=("espeak",), min_length=1)
    engines_by_lang: dict[str, tuple[EngineName, ...]] = Field(
        default_factory=dict, description="per-language override of `engines`"
    )
    plp_name: str = Field(default="", max_length=80, description="who calls; job options override")
    code_word: str = Field(
        default="", max_length=40, description="word members know; job overrides"
    )
    format: AudioFormat = "wav"
    leading_silence_ms: int = Field(default=300, ge=0, le=5000)
    trailing_silence_ms: int = Field(default=200, ge=0, le=5000)
    target_dbfs: float = Field(default=-18.0, ge=-40.0, le=-3.0, description="RMS loudness target")
    peak_dbfs: float = Field(
        default=-1.0, ge=-20.0, le=0.0, description="never louder than this peak"
    )
    convert_timeout: float = Field(default=30.0, gt=0, description="seconds for ffmpeg to convert")
    engine_cooldown: float = Field(
        default=60.0,
        ge=0,
        description="after a failure, try this engine last for this many seconds",
    )
    retention_days: float = Field(
        default=7.0, gt=0, description="unused audio older than this goes"
    )
    workers: int = Field(default=2, ge=1, le=16, description="threads for audio work off the loop")
    espeak: EspeakConfig = EspeakConfig()
    gtts: GttsConfig = GttsConfig()
    templates: dict[str, TemplateConfig] = Field(default_factory=dict)

    @field_validator("engines")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("an engine is listed twice")
        return v

    @field_validator("engines_by_lang", "templates")
    @classmethod
    def _languages(cls, v: dict[str, object]) -> dict[str, object]:
        unknown = sorted(set(v) - set(LANGUAGES))
        if unknown:
            raise ValueError(f"unknown language(s) {', '.join(unknown)}; known: {LANGUAGES}")
        return v

    def engines_for(self, lang: str) -> tuple[str, ...]:
        """The configured engine order for `lang`."""
        return self.engines_by_lang.get(lang, self.engines)


class VoiceConfig(_Section):
    """`[voice]`: the voice channel. `sounds_dir` is shared with Asterisk (it reads there)."""

    enabled: bool = False
    sounds_dir: Path = Path("/var/lib/asterisk/sounds/plp")
    tts: TtsConfig = TtsConfig()
