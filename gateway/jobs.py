"""The job payload as dispatch publishes it: validation, normalisation and the JSON Schema.

`parse_job()` turns raw MQTT bytes into a domain `Job` or raises `JobRejected` with a list of
machine-readable errors (JSON path, code, message). Per-recipient address problems do not
reject a job: they fail that recipient's delivery on that channel.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from .config import JobsConfig
from .domain import Job, Priority, Recipient
from .numbers import NumberPolicy, kind_of
from .privacy import pseudonymous_ref

Lang = Literal["fr", "nl", "de", "en"]
ChannelName = Literal["email", "sms", "voice"]
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class VoiceOptions(_Model):
    """Options of the voice channel for this job."""

    ack: bool = Field(False, description="ask the member to press 1 to confirm")
    repeat: int = Field(0, ge=0, le=3, description="how many times the text is repeated")
    plp_name: str | None = Field(None, max_length=80, description="who calls, said first")
    code_word: str | None = Field(None, max_length=40, description="word members know")


class RecipientIn(_Model):
    ref: str | None = Field(
        None, pattern=REF_PATTERN, description="dispatch's id of the member (no personal data)"
    )
    phone: str | None = Field(None, max_length=40, description="any format; default region BE")
    email: str | None = Field(None, max_length=320)
    lang: Lang | None = Field(None, description="the member's language; else the job's first")
    channels: list[ChannelName] | None = Field(
        None, min_length=1, description="overrides the job's channels for this member"
    )


class JobIn(_Model):
    """An alert job. Unknown fields are rejected."""

    id: str = Field(pattern=JOB_ID_PATTERN, description="idempotency key; one topic level")
    priority: Literal["hot", "cold"]
    test: bool = Field(False, description="a drill: every message says it is a test")
    message: dict[Lang, str] = Field(min_length=1, description="one text per language")
    subject: dict[Lang, str] = Field(default_factory=dict, description="e-mail subject")
    channels: list[ChannelName] = Field(min_length=1)
    recipients: list[RecipientIn] = Field(min_length=1)
    expires_at: AwareDatetime | None = None
    ttl: float | None = Field(None, gt=0, description="seconds; instead of expires_at")
    voice: VoiceOptions | None = None
    fallback: dict[ChannelName, ChannelName] = Field(
        default_factory=dict, description='e.g. {"voice": "sms"}'
    )


def job_json_schema() -> dict[str, Any]:
    schema = JobIn.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://plp-alert-gateway.example/schema/job.json"
    return schema


@dataclass(frozen=True)
class JobErrorItem:
    path: str
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "code": self.code, "message": self.message}


class JobRejected(Exception):
    """A payload that cannot become a job. `job_id` is set when one could be read."""

    def __init__(self, errors: list[JobErrorItem], job_id: str | None = None) -> None:
        self.errors = errors
        self.job_id = job_id
        super().__init__("; ".join(f"{e.path}: {e.code}" for e in errors))


def _json_path(loc: tuple[int | str, ...]) -> str:
    path = "$"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


_CODE_MAP = {
    "json_invalid": "invalid_json",
    "model_type": "not_an_object",
    "dict_type": "not_an_object",
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "literal_error": "invalid_value",
    "string_pattern_mismatch": "invalid_format",
    "too_short": "too_short",
    "too_long": "too_long",
    "string_too_long": "too_long",
}


def _errors_from(exc: ValidationError) -> list[JobErrorItem]:
    items = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p != "[key]")
        code = _CODE_MAP.get(err["type"], err["type"])
        if err["type"] == "literal_error" and "[key]" in err["loc"]:
            code = "unknown_language" if loc and loc[0] in ("message", "subject") else code
        elif err["type"] == "literal_error" and loc and loc[-1] == "lang":
            code = "unknown_language"
        elif err["type"].endswith("_type") or err["type"].endswith("_parsing"):
            code = "wrong_type" if err["type"] not in _CODE_MAP else code
        items.append(JobErrorItem(_json_path(loc), code, err["msg"]))
    return items


def _peek_id(payload: bytes) -> str | None:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict):
        value = data.get("id")
        if (
            isinstance(value, str)
            and len(value) <= 128
            and value.isprintable()
            and " " not in value
        ):
            return value
    return None


def content_hash(payload: bytes) -> str:
    """Hash of the job's meaning, not its bytes: re-sends with other key order still match."""
    canonical = json.dumps(json.loads(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_phone(raw: str, region: str = "BE") -> phonenumbers.PhoneNumber:
    """A valid number (emergency and short numbers are not), or raise
    ValueError("invalid_phone")."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise ValueError("invalid_phone") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("invalid_phone")
    return number


def normalise_phone(raw: str, region: str = "BE") -> str:
    """E.164, or raise ValueError("invalid_phone")."""
    return phonenumbers.format_number(parse_phone(raw, region), phonenumbers.PhoneNumberFormat.E164)


def refused_channels(
    number: phonenumbers.PhoneNumber, channels: Set[str], policies: Mapping[str, NumberPolicy]
) -> frozenset[str]:
    """The channels among `channels` whose number policy refuses `number`."""
    judged = [c for c in channels if c in policies]
    if not judged:
        return frozenset()
    kind = kind_of(number)
    return frozenset(c for c in judged if not policies[c].allows(kind))


def normalise_email(raw: str) -> str:
    try:
        return str(validate_email(raw, check_deliverability=False).normalized)
    except EmailNotValidError:
        raise ValueError("invalid_email") from None


def parse_job(
    payload: bytes,
    limits: JobsConfig,
    enabled_channels: frozenset[str],
    now: datetime | None = None,
    phone_region: str = "BE",
    numbers: Mapping[str, NumberPolicy] | None = None,
) -> tuple[Job, JobIn]:
    """Validate raw bytes into a Job. Raises JobRejected with every problem found.

    `numbers` holds each phone channel's number policy: a member's number outside it fails on
    that channel (`number_not_allowed`), the member's other channels go on."""
    now = now or datetime.now(UTC)
    if len(payload) > limits.max_payload_bytes:
        raise JobRejected(
            [
                JobErrorItem(
                    "$",
                    "payload_too_large",
                    f"{len(payload)} bytes > limit {limits.max_payload_bytes}",
                )
            ],
            None,
        )
    job_id = _peek_id(payload)
    try:
        spec = JobIn.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        raise JobRejected(_errors_from(exc), job_id) from None
    errors = _semantic_errors(spec, limits, enabled_channels, now)
    if errors:
        raise JobRejected(errors, spec.id)
    return _to_domain(spec, limits, now, phone_region, numbers or {}), spec


def _semantic_errors(
    spec: JobIn, limits: JobsConfig, enabled: frozenset[str], now: datetime
) -> list[JobErrorItem]:
    errors: list[JobErrorItem] = []
    if len(spec.recipients) > limits.max_recipients:
        errors.append(
            JobErrorItem(
                "$.recipients",
                "too_many_recipients",
                f"{len(spec.recipients)} recipients > limit {limits.max_recipients}",
            )
        )
    for lang, text in spec.message.items():
        if not text.strip():
            errors.append(JobErrorItem(f"$.message.{lang}", "empty_text", "text is empty"))
        elif len(text) > limits.max_text_length:
            errors.append(
                JobErrorItem(
                    f"$.message.{lang}",
                    "text_too_long",
                    f"{len(text)} characters > limit {limits.max_text_length}",
                )
            )
    if len(set(spec.channels)) != len(spec.channels):
        errors.append(JobErrorItem("$.channels", "duplicate_channel", "a channel is listed twice"))
    for ch in spec.channels:
        if ch not in enabled:
            errors.append(
                JobErrorItem(
                    "$.channels", "channel_disabled", f"{ch} is not enabled on this gateway"
                )
            )
    for src, dst in spec.fallback.items():
        if dst not in enabled:
            errors.append(
                JobErrorItem(f"$.fallback.{src}", "channel_disabled", f"{dst} is not enabled")
            )
        if src == dst:
            errors.append(
                JobErrorItem(f"$.fallback.{src}", "invalid_value", "falls back to itself")
            )
    if spec.expires_at is not None and spec.ttl is not None:
        errors.append(JobErrorItem("$.ttl", "conflict", "give expires_at or ttl, not both"))
    expires = _expiry(spec, limits, now)
    if expires <= now:
        errors.append(JobErrorItem("$.expires_at", "expired", "the job expired before it arrived"))
    elif expires - now > timedelta(seconds=limits.max_ttl):
        errors.append(
            JobErrorItem("$.expires_at", "too_far", f"more than {limits.max_ttl:.0f} s ahead")
        )
    seen: dict[str, int] = {}
    for i, r in enumerate(spec.recipients):
        if r.ref is not None:
            if r.ref in seen:
                errors.append(
                    JobErrorItem(
                        f"$.recipients[{i}].ref",
                        "duplicate_ref",
                        f"same ref as recipient {seen[r.ref]}",
                    )
                )
            seen.setdefault(r.ref, i)
        if r.channels is not None and len(set(r.channels)) != len(r.channels):
            errors.append(
                JobErrorItem(f"$.recipients[{i}].channels", "duplicate_channel", "listed twice")
            )
        if len(errors) > 100:
            errors.append(JobErrorItem("$", "too_many_errors", "stopped after 100 errors"))
            break
    return errors


def _expiry(spec: JobIn, limits: JobsConfig, now: datetime) -> datetime:
    if spec.expires_at is not None:
        return spec.expires_at.astimezone(UTC)
    ttl = spec.ttl or (limits.hot_ttl if spec.priority == "hot" else limits.cold_ttl)
    return now + timedelta(seconds=ttl)


def _to_domain(
    spec: JobIn,
    limits: JobsConfig,
    now: datetime,
    region: str,
    numbers: Mapping[str, NumberPolicy],
) -> Job:
    languages = tuple(spec.message)
    recipients = []
    for i, r in enumerate(spec.recipients):
        phone = email = phone_error = email_error = None
        refused: frozenset[str] = frozenset()
        # Only the addresses this member's channels (and fallbacks) can use are parsed:
        # parsing is the costly part of a 100,000-recipient job.
        channels = tuple(r.channels or spec.channels)
        needed = set(channels) | {spec.fallback[c] for c in channels if c in spec.fallback}
        wants_phone = bool(needed & {"sms", "voice"})
        if r.phone is not None and wants_phone:
            try:
                number = parse_phone(r.phone, region)
            except ValueError as exc:
                phone_error = str(exc)
            else:
                phone = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                refused = refused_channels(number, needed, numbers)
        if r.email is not None and "email" in needed:
            try:
                email = normalise_email(r.email)
            except ValueError as exc:
                email_error = str(exc)
        lang = r.lang if r.lang in languages else languages[0]
        recipients.append(
            Recipient(
                index=i,
                ref=r.ref or pseudonymous_ref(spec.id, i),
                lang=lang,
                channels=channels,
                phone=phone,
                email=email,
                phone_error=phone_error,
                email_error=email_error,
                phone_refused=refused,
            )
        )
    options: dict[str, object] = {}
    if spec.voice is not None:
        options["voice"] = spec.voice.model_dump()
    return Job(
        id=spec.id,
        priority=Priority.parse(spec.priority),
        test=spec.test,
        message={str(k): v for k, v in spec.message.items()},
        subject={str(k): v for k, v in spec.subject.items()},
        channels=tuple(spec.channels),
        recipients=tuple(recipients),
        expires_at=_expiry(spec, limits, now),
        options=options,
        fallback={str(k): str(v) for k, v in spec.fallback.items()},
    )
