"""Configuration of the voice channel: `[voice]` (calls), `[voice.ami]`, `[voice.retry]`,
`[voice.tts]`.

One `VoiceConfig` is what the daemon reads and what `VoiceChannel` and `Synthesizer` take.
Each sub-section is its own frozen model so that the call and TTS parts grow independently.
`[voice.ami] secret` may be given as `env:NAME` or `file:/path` (see `gateway.secret`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.numbers import NumberPolicy
from gateway.secret import Secret

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


class AmiConfig(_Section):
    """`[voice.ami]`: the Asterisk Manager Interface session."""

    host: str = "127.0.0.1"
    port: int = Field(default=5038, ge=1, le=65535)
    username: str = "plp-gateway"
    secret: Secret = ""
    connect_timeout: float = Field(default=5.0, gt=0)
    action_timeout: float = Field(default=10.0, gt=0)
    ping_interval: float = Field(default=10.0, gt=0)
    reconnect_initial_delay: float = Field(default=0.5, gt=0)
    reconnect_max_delay: float = Field(default=30.0, gt=0)


class RetryRule(_Section):
    delay: float = Field(ge=0, description="seconds before calling again")
    max_attempts: int = Field(default=3, ge=1, le=100, description="attempts, counting the first")


class CallRetry(_Section):
    """`[voice.retry]`: per outcome, when to call again and how often at most."""

    busy: RetryRule = RetryRule(delay=60, max_attempts=4)
    no_answer: RetryRule = RetryRule(delay=120, max_attempts=3)
    congestion: RetryRule = RetryRule(delay=30, max_attempts=4)
    unreachable: RetryRule = RetryRule(delay=60, max_attempts=2)
    hung_up_early: RetryRule = RetryRule(delay=60, max_attempts=3)
    not_acknowledged: RetryRule = RetryRule(delay=120, max_attempts=2)
    failed: RetryRule = RetryRule(delay=60, max_attempts=3)  # playback failed, originate error
    link_down: RetryRule = RetryRule(delay=15, max_attempts=10)  # AMI down, call lost
    recall_unacknowledged: bool = True  # ack asked, answered, no "1": call again

    def rule(self, reason: str) -> RetryRule:
        value = getattr(self, reason, None)
        return value if isinstance(value, RetryRule) else self.failed

    @property
    def max_attempts(self) -> int:
        rules = [v for v in self.__dict__.values() if isinstance(v, RetryRule)]
        return max(r.max_attempts for r in rules)


class VoiceNumberPolicy(NumberPolicy):
    """`[voice.number_policy]`: fixed lines and mobiles of the allowed regions."""

    types: tuple[str, ...] = Field(
        default=("fixed_line", "mobile", "fixed_line_or_mobile"), min_length=1
    )


class VoiceConfig(_Section):
    """`[voice]`: the voice channel. `sounds_dir` is shared with Asterisk (it reads there)."""

    enabled: bool = False
    sounds_dir: Path = Path("/var/lib/asterisk/sounds/plp")
    channel: str = "PJSIP/{number}@operator"  # {number}: E.164 without "+", {e164}: with it
    context: str = "plp-alert"
    exten: str = "s"
    caller_id: str = '"Police PLP" <101>'
    max_channels: int = Field(default=4, ge=1, le=1000)
    calls_per_second: float = Field(default=2.0, ge=0, description="0 = unlimited")
    ring_timeout: float = Field(default=30.0, gt=0, le=300)
    answer_margin: float = Field(
        default=20.0, ge=0, description="extra seconds allowed beyond the audio"
    )
    ack_timeout: float = Field(default=6.0, gt=0, description="seconds the dialplan waits for '1'")
    ami: AmiConfig = AmiConfig()
    retry: CallRetry = CallRetry()
    tts: TtsConfig = TtsConfig()
    number_policy: VoiceNumberPolicy = VoiceNumberPolicy()

    @field_validator("channel")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{number}" not in v and "{e164}" not in v:
            raise ValueError("must contain {number} or {e164}")
        try:
            v.format(number="32470000000", e164="+32470000000")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"invalid template: {exc}") from None
        return v
