"""Configuration of voice calls: `[voice]` call keys, `[voice.ami]`, `[voice.retry]`.

The lead merges these fields into `voice.config.VoiceConfig`; `CallConfig` is what
`VoiceChannel` reads.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AmiConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=5038, ge=1, le=65535)
    username: str = "plp-gateway"
    secret: str = ""  # resolved from env:/file: by the daemon's config loader
    connect_timeout: float = Field(default=5.0, gt=0)
    action_timeout: float = Field(default=10.0, gt=0)
    ping_interval: float = Field(default=10.0, gt=0)
    reconnect_initial_delay: float = Field(default=0.5, gt=0)
    reconnect_max_delay: float = Field(default=30.0, gt=0)


class RetryRule(_Section):
    delay: float = Field(ge=0, description="seconds before calling again")
    max_attempts: int = Field(default=3, ge=1, le=100, description="attempts, counting the first")


class CallRetry(_Section):
    """Per outcome: when to call again and how often at most."""

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


class CallConfig(_Section):
    enabled: bool = False
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
