"""Configuration of the SMS channel (`[sms]` and `[[sms.smsc]]`).

`password` may be given as `env:NAME` or `file:/path` (see `gateway.secret`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.numbers import NumberPolicy
from gateway.secret import Secret, unresolved

IdFormat = Literal["text", "dec", "hex"]
BindMode = Literal["transceiver", "transmitter_receiver"]

DEFAULT_REPLY_KEYWORDS: tuple[str, ...] = (
    "OK",
    "1",
    "BIEN RECU",
    "RECU",
    "ONTVANGEN",
    "GOED ONTVANGEN",
    "ERHALTEN",
    "RECEIVED",
)

_ALNUM_SENDER = re.compile(r"^[A-Za-z0-9 ._-]{1,11}$")
_NUMERIC_SENDER = re.compile(r"^\+?\d{3,15}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SmsRetryConfig(_Section):
    """Retry policy the scheduler applies to temporary SMS failures."""

    max_attempts: int = Field(default=6, ge=1, le=100)
    initial_delay: float = Field(default=5.0, ge=0)
    max_delay: float = Field(default=300.0, ge=0)
    factor: float = Field(default=2.0, ge=1)
    jitter: float = Field(default=0.2, ge=0, le=1)


class SmsNumberPolicy(NumberPolicy):
    """`[sms.number_policy]`. Mobile only: in the default regions phonenumbers tells mobile
    from fixed line for every number (it never answers `fixed_line_or_mobile` there); add
    `fixed_line_or_mobile` only with a region whose plan does not tell them apart (e.g. US)."""

    types: tuple[str, ...] = Field(default=("mobile",), min_length=1)


class SmscConfig(_Section):
    """One SMPP 3.4 link (`[[sms.smsc]]`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    host: str = "localhost"
    port: int = Field(default=2775, ge=1, le=65535)
    system_id: str = Field(max_length=15)
    password: Secret = ""  # SMPP 3.4: at most 8 characters once `env:`/`file:` is resolved
    system_type: str = Field(default="", max_length=12)
    bind_mode: BindMode = "transceiver"
    window: int = Field(default=10, ge=1, le=1000, description="outstanding submit_sm per bind")
    rate: float = Field(default=0.0, ge=0, description="submit_sm per second, 0 = unlimited")
    connect_timeout: float = Field(default=10.0, gt=0)
    response_timeout: float = Field(
        default=10.0, gt=0, description="seconds to wait for any *_resp"
    )
    enquire_link_interval: float = Field(default=30.0, gt=0)
    reconnect_initial_delay: float = Field(default=1.0, gt=0)
    reconnect_max_delay: float = Field(default=60.0, gt=0)
    throttle_pause: float = Field(default=1.0, ge=0, description="pause after ESME_RTHROTTLED")
    throttle_factor: float = Field(
        default=0.8, gt=0, lt=1, description="rate multiplier on throttling"
    )
    recovery_interval: float = Field(
        default=5.0, gt=0, description="seconds between rate increases"
    )
    submit_id_format: IdFormat = "text"
    receipt_id_format: IdFormat = "text"

    @field_validator("password")
    @classmethod
    def _password(cls, v: str, info: ValidationInfo) -> str:
        if len(v) > 8 and not unresolved(v, info):  # a reference left unread: no length yet
            raise ValueError("SMPP 3.4 passwords have at most 8 characters")
        return v


class SmsConfig(_Section):
    """`[sms]`: the channel as a whole."""

    enabled: bool = False
    sender: str = "PLP"
    smsc: tuple[SmscConfig, ...] = ()
    max_parts: int = Field(default=10, ge=1, le=255)
    too_long: Literal["truncate", "fail"] = "truncate"
    reject_non_mobile: bool = True
    default_region: str = Field(default="BE", pattern=r"^[A-Z]{2}$")
    max_validity: float = Field(default=3 * 86400, gt=60, description="cap on validity_period (s)")
    link_wait: float = Field(default=2.0, ge=0, description="seconds send() waits for a bound link")
    # Receipts of reachable phones come within seconds; one missing after ten minutes is a
    # phone switched off or out of coverage (the SMSC keeps trying until the validity
    # period). The job is then `done` with those members counted `sent`; a late receipt
    # still updates them.
    receipt_wait: float = Field(
        default=600.0, gt=0, description="seconds a `sent` SMS keeps its job running"
    )
    reply_keywords: tuple[str, ...] = DEFAULT_REPLY_KEYWORDS
    retry: SmsRetryConfig = SmsRetryConfig()
    number_policy: SmsNumberPolicy = SmsNumberPolicy()

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str) -> str:
        if not (_NUMERIC_SENDER.match(v) or _ALNUM_SENDER.match(v)):
            raise ValueError("must be 1-11 letters/digits or an international number")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> SmsConfig:
        names = [s.name for s in self.smsc]
        if len(names) != len(set(names)):
            raise ValueError("[[sms.smsc]] names must be unique")
        if self.enabled and not self.smsc:
            raise ValueError("sms is enabled but no [[sms.smsc]] is configured")
        return self
