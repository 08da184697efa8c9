"""The job payload as dispatch publishes it: validation, normalisation and the JSON Schema.

`parse_job()` turns raw MQTT bytes into a domain `Job` or raises `JobRejected` with a list of
machine-readable errors (JSON path, code, message). Per-recipient address problems do not
reject a job: they fail that recipient's delivery on that channel.

Work and memory are bounded before any per-item work: the payload is read by
`gateway.payload.read_json` (its count of values, depth, numbers), the recipients are
counted before one is validated, no other object or list may be large, and a rejection lists
at most MAX_ERRORS errors (and how many there were).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Set
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import attrgetter
from typing import Annotated, Any, Literal

import phonenumbers
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError

from .config import JobsConfig
from .directory import Audience, plp_options, recipient_ref, to_recipients
from .domain import Job, Priority, Recipient
from .email_address import normalise_email
from .job_hash import SLICE, JobDigest, hash_of
from .job_id import JOB_ID_PATTERN, valid_job_id
from .numbers import NumberPolicy, kind_of
from .payload import PayloadError, read_json
from .privacy import pseudonymous_ref

Lang = Literal["fr", "nl", "de", "en"]
ChannelName = Literal["email", "sms", "voice"]
MAX_ERRORS = 20  # errors listed on jobs/rejected; `errors_total` counts them all
MAX_MEMBERS = 64  # members of any object or list of a job but `recipients` (a job needs <= 8)
SUBJECT_LENGTH = 250

# Characters refused at intake (docs/security.md, "Hostile payloads"): C0 controls (a text may
# hold line feeds and tabs), DEL, C1 controls and the bidi embeddings, overrides and isolates
# that make a text read otherwise than it is; in one-line fields (e-mail subject, spoken
# names) also line and paragraph separators: they would split a mail header.
_UNSAFE_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """Free text from outside (a cancel's reason) made one safe line: control, line-break and
    bidi characters become spaces. For text the gateway keeps and shows, not for alerts
    (an alert with them is refused, never changed)."""
    return _UNSAFE_IN_LINE.sub(" ", text)


REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _datetime_text(value: Any) -> Any:
    # JSON has no datetime: a string in RFC 3339 (never a number taken as a Unix time).
    if not isinstance(value, str):
        raise PydanticCustomError("datetime_type", "Input should be an RFC 3339 string")
    return value


# Parsed from a string although the model is strict: jobs are validated from parsed JSON.
JsonDatetime = Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_datetime_text)]


class VoiceOptions(_Model):
    """Options of the voice channel for this job."""

    ack: bool = Field(False, description="ask the member to press 1 to confirm")
    repeat: int = Field(0, ge=0, le=3, description="how many times the text is repeated")
    plp_name: str | None = Field(None, max_length=80, description="who calls, said first")
    code_word: str | None = Field(None, max_length=40, description="word members know")


_StrictStr = Annotated[str, Strict()]


# A slotted dataclass, not a model: a 100,000-member job holds 100,000 of them (8 MB, where
# models took 49 MB) and validates them 2.7 times faster. Same schema, same errors (each field
# strict; `_CODE_MAP` names the dataclass's error types as the model's).
@pydantic_dataclass(config=ConfigDict(extra="forbid", title="RecipientIn"), frozen=True, slots=True)
class RecipientIn:
    ref: _StrictStr | None = Field(
        default=None,
        pattern=REF_PATTERN,
        description="dispatch's id of the member (no personal data)",
    )
    phone: _StrictStr | None = Field(
        default=None, max_length=40, description="any format; default region BE"
    )
    email: _StrictStr | None = Field(default=None, max_length=320)
    lang: Lang | None = Field(
        default=None, description="the member's language; else the job's first"
    )
    channels: Annotated[list[ChannelName], Strict()] | None = Field(
        default=None, min_length=1, description="overrides the job's channels for this member"
    )


PLP_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
GROUP_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"


class AudienceIn(_Model):
    """Members of the gateway's PLP directory, resolved when the job is accepted."""

    plps: list[Annotated[str, Field(pattern=PLP_ID_PATTERN)]] = Field(
        min_length=1, description="PLP ids, e.g. zone5344-tilleuls"
    )
    groups: list[Annotated[str, Field(pattern=GROUP_PATTERN)]] = Field(
        default_factory=list, description="only members of one of these groups (default: all)"
    )


class JobIn(_Model):
    """An alert job. Unknown fields are rejected."""

    id: str = Field(pattern=JOB_ID_PATTERN, description="idempotency key; one topic level")
    priority: Literal["hot", "cold"]
    test: bool = Field(False, description="a drill: every message says it is a test")
    message: dict[Lang, str] = Field(min_length=1, description="one text per language")
    subject: dict[Lang, Annotated[str, Field(max_length=SUBJECT_LENGTH)]] = Field(
        default_factory=dict, description="e-mail subject, one line"
    )
    channels: list[ChannelName] = Field(min_length=1)
    recipients: list[RecipientIn] = Field(
        default_factory=list, description="members given here; or `audience`, or `follows`"
    )
    audience: AudienceIn | None = Field(
        None, description="members from the PLP directory, instead of or besides recipients"
    )
    follows: str | None = Field(
        None,
        pattern=JOB_ID_PATTERN,
        description="an earlier job: this one goes to the members it reached, on the channel"
        " that reached each (no recipients nor audience then)",
    )
    expires_at: JsonDatetime | None = None
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
    """A payload that cannot become a job: its first MAX_ERRORS errors and `total`.
    `job_id` is set when an id that keeps the id rule could be read."""

    def __init__(
        self, errors: list[JobErrorItem], job_id: str | None = None, total: int | None = None
    ) -> None:
        self.errors = errors[:MAX_ERRORS]
        self.total = max(total or 0, len(errors))
        self.job_id = job_id
        super().__init__("; ".join(f"{e.path}: {e.code}" for e in self.errors))


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _json_path(loc: tuple[int | str, ...]) -> str:
    path = "$"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _NAME.fullmatch(part):
            path += f".{part}"
        else:  # a member name from outside: escaped and cut, it goes to logs and MQTT
            path += f"[{json.dumps(part[:64])}]"
    return path


_CODE_MAP = {
    "json_invalid": "invalid_json",
    "model_type": "not_an_object",
    "dataclass_type": "not_an_object",  # a member (RecipientIn)
    "dict_type": "not_an_object",
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "unexpected_keyword_argument": "unknown_field",  # a member's (RecipientIn)
    "literal_error": "invalid_value",
    "string_pattern_mismatch": "invalid_format",
    "too_short": "too_short",
    "too_long": "too_long",
    "string_too_long": "too_long",
    # A number outside its allowed range (`ttl: -5`, `voice.repeat: 9`).
    "greater_than": "out_of_range",
    "greater_than_equal": "out_of_range",
    "less_than": "out_of_range",
    "less_than_equal": "out_of_range",
}

# A member's errors say what a model's said (RecipientIn is a dataclass).
_MESSAGES = {
    "unexpected_keyword_argument": "Extra inputs are not permitted",
    "dataclass_type": "Input should be a valid dictionary or instance of RecipientIn",
}


def _errors_from(
    exc: ValidationError, prefix: tuple[int | str, ...] = (), offset: int = 0
) -> list[JobErrorItem]:
    """Our errors from pydantic's; `prefix` and `offset` place a slice of a list in the job."""
    items = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(p for p in err["loc"] if p != "[key]")
        if offset and loc and isinstance(loc[0], int):
            loc = (loc[0] + offset, *loc[1:])
        loc = prefix + loc
        code = _CODE_MAP.get(err["type"], err["type"])
        if err["type"] == "literal_error" and "[key]" in err["loc"]:
            code = "unknown_language" if loc and loc[0] in ("message", "subject") else code
        elif err["type"] == "literal_error" and loc and loc[-1] == "lang":
            code = "unknown_language"
        elif err["type"].endswith("_type") or err["type"].endswith("_parsing"):
            code = "wrong_type" if err["type"] not in _CODE_MAP else code
        message = _MESSAGES.get(err["type"], err["msg"])
        items.append(JobErrorItem(_json_path(loc), code, message))
    return items


def content_hash(payload: bytes) -> str:
    """Hash of the job's meaning, not its bytes: re-sends with other key order still match."""
    return hash_of(read_json(payload))


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
    number: phonenumbers.PhoneNumber,
    channels: Set[str],
    policies: Mapping[str, NumberPolicy],
    e164: str | None = None,
) -> frozenset[str]:
    """The channels among `channels` whose number policy refuses `number` (`e164`, its E.164
    form: the channels, which check again before sending, then find the answer)."""
    judged = [c for c in channels if c in policies]
    if not judged:
        return frozenset()
    kind = kind_of(number, e164)
    return frozenset(c for c in judged if not policies[c].allows(kind))


def parse_job(
    payload: bytes,
    limits: JobsConfig,
    enabled_channels: frozenset[str],
    now: datetime | None = None,
    phone_region: str = "BE",
    numbers: Mapping[str, NumberPolicy] | None = None,
    resolved: Resolved | None = None,
) -> tuple[Job, JobIn]:
    """Validate raw bytes into a Job. Raises JobRejected with every problem found.

    `numbers` holds each phone channel's number policy: a member's number outside it fails on
    that channel (`number_not_allowed`), the member's other channels go on. `resolved` holds
    what the store said of the job's `audience` and `follows` (`gateway.intake` asks it)."""
    now = now or datetime.now(UTC)
    resolved = resolved or Resolved()
    spec = validate_job(payload, limits, enabled_channels, now, resolved)
    return _to_domain(spec, limits, now, phone_region, numbers or {}, resolved), spec


def validate_job(
    payload: bytes,
    limits: JobsConfig,
    enabled_channels: frozenset[str],
    now: datetime | None = None,
    resolved: Resolved | None = None,
) -> JobIn:
    """Validate raw bytes into a job's spec, every member included, or raise JobRejected.
    Nothing per member that cannot reject the job (parsing numbers) is done here: a large job
    turns its members into domain recipients chunk by chunk (`job_header`, `members`)."""
    return _validate(payload, limits, enabled_channels, now, resolved, hashed=False)[0]


def validate_and_hash(
    payload: bytes,
    limits: JobsConfig,
    enabled_channels: frozenset[str],
    now: datetime,
    resolved: Resolved | None = None,
) -> tuple[JobIn, str]:
    """`validate_job` and `content_hash` with one parse (a 10 MB job's takes ~0.13 s)."""
    spec, digest = _validate(payload, limits, enabled_channels, now, resolved, hashed=True)
    assert digest is not None
    return spec, digest


def _validate(
    payload: bytes,
    limits: JobsConfig,
    enabled_channels: frozenset[str],
    now: datetime | None,
    resolved: Resolved | None,
    hashed: bool,
) -> tuple[JobIn, str | None]:
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
    try:
        # The depth is bounded by the schema (4 levels) for a job that passes; for one that
        # does not, the reading below, depth first, names its errors as it always did.
        return _checked(
            read_job(payload, limits, depth=False), limits, enabled_channels, now, resolved, hashed
        )
    except JobRejected:
        pass
    return _checked(read_job(payload, limits), limits, enabled_channels, now, resolved, hashed)


def _checked(
    data: dict[str, Any],
    limits: JobsConfig,
    enabled_channels: frozenset[str],
    now: datetime,
    resolved: Resolved | None,
    hashed: bool,
) -> tuple[JobIn, str | None]:
    """The job in a parsed payload, validated (with its content hash), or JobRejected. Its
    members are freed from `data` as they are validated."""
    job_id = data["id"] if valid_job_id(data.get("id")) else None
    oversized = _oversized(data)
    if oversized is not None:
        raise JobRejected([oversized], job_id)
    errors: list[JobErrorItem] = []
    total = 0
    recipients = data.get("recipients")
    large = isinstance(recipients, list) and len(recipients) > SLICE
    # A large job's members go into the hash as they are validated, before they are freed.
    hasher = JobDigest(data) if hashed and large else None
    digest = hash_of(data) if hashed and not large else None
    if isinstance(recipients, list):
        if len(recipients) > limits.max_recipients:
            # At once: validating a million members only to refuse them is the attack.
            detail = f"{len(recipients)} recipients > limit {limits.max_recipients}"
            raise JobRejected([JobErrorItem("$.recipients", "too_many_recipients", detail)], job_id)
        checked, errors, total = _recipients(recipients, hasher)
        digest = hasher.hexdigest() if hasher is not None else digest
        # When some failed, any valid member stands in for the list: its errors are counted.
        data = {**data, "recipients": checked if not total else [RecipientIn()]}
    try:
        spec = JobIn.model_validate(data)
    except ValidationError as exc:
        errors = _errors_from(exc)[:MAX_ERRORS] + errors
        total += exc.error_count()
    if total:
        raise JobRejected(errors, job_id, total)
    errors = _semantic_errors(spec, limits, enabled_channels, now)
    errors += _reference_errors(spec, resolved or Resolved(), limits)
    if errors:
        raise JobRejected(errors, spec.id)
    return spec, digest


@dataclass(frozen=True)
class Resolved:
    """What the store knows of a job's `audience` (its members) and `follows` (the earlier
    job's members that it reached, each on the channel that reached them; None: no such
    job)."""

    audience: Audience | None = None
    followed: tuple[Recipient, ...] | None = None
    followed_options: Mapping[str, object] | None = None


def wants_store(data: Mapping[str, Any]) -> tuple[tuple[list[str], list[str]] | None, str | None]:
    """(the audience's PLPs and groups, the followed job's id) to ask the store for, when the
    payload names them well enough to ask; the schema judges the rest."""
    audience = data.get("audience")
    asked = None
    if isinstance(audience, dict):
        plps, groups = audience.get("plps"), audience.get("groups", [])
        if (
            isinstance(plps, list)
            and isinstance(groups, list)
            and 0 < len(plps) <= MAX_MEMBERS
            and len(groups) <= MAX_MEMBERS
            and all(isinstance(p, str) for p in plps + groups)
        ):
            asked = (plps, groups)
    follows = data.get("follows")
    return asked, follows if valid_job_id(follows) else None


def _reference_errors(spec: JobIn, resolved: Resolved, limits: JobsConfig) -> list[JobErrorItem]:
    """Who the job goes to: recipients, an audience the directory knows, or a follow-up."""
    errors: list[JobErrorItem] = []
    if spec.follows is not None:
        if spec.recipients or spec.audience is not None:
            errors.append(
                JobErrorItem(
                    "$.follows", "conflict", "a follow-up goes to the earlier job's members only"
                )
            )
        elif resolved.followed is None:
            errors.append(JobErrorItem("$.follows", "unknown_job", f"no job {spec.follows}"))
        elif not resolved.followed:
            errors.append(
                JobErrorItem("$.follows", "nobody_reached", "the earlier job reached nobody")
            )
        return errors
    if not spec.recipients and spec.audience is None:
        # An empty list is too short, as it always was; no list at all is a missing field.
        code = "too_short" if "recipients" in spec.model_fields_set else "missing_field"
        errors.append(JobErrorItem("$.recipients", code, "give recipients, audience or follows"))
    if spec.audience is not None:
        found = resolved.audience
        if found is None:
            errors.append(JobErrorItem("$.audience", "no_directory", "the directory is not read"))
        else:
            errors += [
                JobErrorItem(f"$.audience.plps[{i}]", "unknown_plp", "not in the directory")
                for i in found.unknown_plps
            ]
            errors += [
                JobErrorItem(f"$.audience.groups[{i}]", "unknown_group", "no member in it")
                for i in found.unknown_groups
            ]
            total = len(found.members) + len(spec.recipients)
            if total > limits.max_recipients:
                errors.append(
                    JobErrorItem(
                        "$.audience",
                        "too_many_recipients",
                        f"{total} recipients > limit {limits.max_recipients}",
                    )
                )
            refs = {r.ref for r in spec.recipients if r.ref is not None}
            several = len({m.plp for m in found.members}) > 1
            twice = next((m for m in found.members if recipient_ref(m, several) in refs), None)
            if twice is not None:
                errors.append(
                    JobErrorItem("$.audience", "duplicate_ref", f"{twice.ref} is in recipients too")
                )
    return errors


def read_job(payload: bytes, limits: JobsConfig, depth: bool = True) -> dict[str, Any]:
    """The payload as a JSON object, read within bounds, or JobRejected. `depth=False`: its
    depth bounded by the caller (`gateway.payload.read_json`)."""
    # A job of max_recipients members needs about 12 values each, its texts a few more (the
    # commas in them count too): beyond that the payload is refused before it is parsed.
    max_values = 16 * limits.max_recipients + 4 * limits.max_text_length + 1000
    try:
        data = read_json(payload, max_values, depth=depth)
    except PayloadError as exc:
        raise JobRejected([JobErrorItem("$", exc.code, exc.detail)]) from None
    if not isinstance(data, dict):
        raise JobRejected([JobErrorItem("$", "not_an_object", "a job is a JSON object")])
    return data


def _oversized(data: dict[str, Any]) -> JobErrorItem | None:
    """The first object or list with more than MAX_MEMBERS members among those pydantic
    looks into member by member (one error each): the job, its message, subject, channels,
    voice and fallback, each recipient and its channels. Anything deeper than the schema is
    one type error, whatever its size; the recipients are counted against max_recipients."""
    places: list[tuple[tuple[int | str, ...], Any]] = [((), data)]
    places += [((k,), data.get(k)) for k in ("message", "subject", "channels", "voice", "fallback")]
    audience = data.get("audience")
    places.append((("audience",), audience))
    if isinstance(audience, dict):
        places += [(("audience", k), audience.get(k)) for k in ("plps", "groups")]
    recipients = data.get("recipients")
    if isinstance(recipients, list) and not _members_small(recipients):
        # No allocation per member: a 100,000-member loop that allocates wakes the collector.
        for i, member in enumerate(recipients):
            if isinstance(member, dict) and (
                len(member) > MAX_MEMBERS or _size(member.get("channels")) > MAX_MEMBERS
            ):
                places += [
                    (("recipients", i), member),
                    (("recipients", i, "channels"), member.get("channels")),
                ]
                break
    for loc, value in places:
        if _size(value) > MAX_MEMBERS:
            detail = f"{_size(value)} members > limit {MAX_MEMBERS}"
            return JobErrorItem(_json_path(loc), "too_many_items", detail)
    return None


def _members_small(recipients: list[Any]) -> bool:
    """True when every member is an object of at most MAX_MEMBERS members, its `channels`
    absent, null or a list of at most MAX_MEMBERS: the usual job, told at C speed (map, no
    Python loop: 100,000 members in ~10 ms). False sends the caller to the loop that says
    which member is too large (or that none is)."""
    if not set(map(type, recipients)) <= {dict}:
        return False
    if max(map(len, recipients), default=0) > MAX_MEMBERS:
        return False
    channels = [c for c in map(dict.get, recipients, repeat("channels")) if c is not None]
    if not set(map(type, channels)) <= {list}:
        return False
    return max(map(len, channels), default=0) <= MAX_MEMBERS


def _size(value: Any) -> int:
    return len(value) if isinstance(value, dict | list) else 0


_RECIPIENT_LIST = TypeAdapter(list[RecipientIn])


def _recipients(
    items: list[Any], hasher: JobDigest | None = None
) -> tuple[list[RecipientIn], list[JobErrorItem], int]:
    """Validate members by slices: the first MAX_ERRORS errors are kept, all are counted,
    and pydantic never holds the errors of more than one slice (900,000 at once took 200 MB).
    Each valid slice goes into `hasher` while no member has failed (then, no hash is used)."""
    checked: list[RecipientIn] = []
    errors: list[JobErrorItem] = []
    total = 0
    # SLICE members at a time, validated and hashed: pydantic holds every error of a slice.
    for start in range(0, len(items), SLICE):
        part = items[start : start + SLICE]
        try:
            checked += _RECIPIENT_LIST.validate_python(part)
            if hasher is not None and not total:
                hasher.add(part, valid=True)
        except ValidationError as exc:
            total += exc.error_count()
            if len(errors) < MAX_ERRORS:
                errors += _errors_from(exc, ("recipients",), start)
        # The parsed members go as their models come (the list is the parser's, read once):
        # a 100,000-member job never holds both at once (~50 MB less at its peak).
        items[start : start + SLICE] = [None] * len(part)
    return checked, errors[:MAX_ERRORS], total


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
        else:
            errors += _characters(f"$.message.{lang}", text, _UNSAFE_IN_TEXT)
    for lang, line in spec.subject.items():
        errors += _characters(f"$.subject.{lang}", line, _UNSAFE_IN_LINE)
    if spec.voice is not None:
        for name in ("plp_name", "code_word"):
            value = getattr(spec.voice, name)
            if value is not None:
                errors += _characters(f"$.voice.{name}", value, _UNSAFE_IN_LINE)
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
    try:
        expires = _expiry(spec, limits, now)
    except OverflowError:
        # ttl 1e300, or expires_at 0001-01-01 / 9999-12-31 with an offset: not a UTC time.
        path = "$.expires_at" if spec.expires_at is not None else "$.ttl"
        errors.append(JobErrorItem(path, "out_of_range", "beyond the dates a job can have"))
        return errors
    if expires <= now:
        errors.append(JobErrorItem("$.expires_at", "expired", "the job expired before it arrived"))
    elif expires - now > timedelta(seconds=limits.max_ttl):
        errors.append(
            JobErrorItem("$.expires_at", "too_far", f"more than {limits.max_ttl:.0f} s ahead")
        )
    if _members_distinct(spec.recipients):
        return errors
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
    return errors


_REF = attrgetter("ref")
_CHANNELS = attrgetter("channels")


def _members_distinct(recipients: list[RecipientIn]) -> bool:
    """No two members with one ref, no member listing a channel twice: the usual job, told
    without a Python loop over every member (the loop that names the culprits runs otherwise)."""
    refs = [ref for ref in map(_REF, recipients) if ref is not None]
    if len(set(refs)) != len(refs):
        return False
    own = [c for c in map(_CHANNELS, recipients) if c is not None]
    return all(len(set(c)) == len(c) for c in own)


def _characters(path: str, text: str, unsafe: re.Pattern[str]) -> list[JobErrorItem]:
    found = unsafe.search(text)
    if found is None:
        return []
    char = f"U+{ord(found.group()):04X}"
    return [
        JobErrorItem(
            path, "invalid_characters", f"{char} at character {found.start()} is not allowed"
        )
    ]


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
    resolved: Resolved,
) -> Job:
    recipients = members(spec, 0, member_count(spec, resolved), region, numbers, resolved)
    return replace(job_header(spec, limits, now, resolved), recipients=tuple(recipients))


def member_count(spec: JobIn, resolved: Resolved) -> int:
    """How many members a validated job has: its recipients then its audience's members, or
    the members a follow-up reaches."""
    if spec.follows is not None and resolved.followed is not None:
        return len(resolved.followed)
    audience = resolved.audience if spec.audience is not None else None
    return len(spec.recipients) + (len(audience.members) if audience is not None else 0)


def members(
    spec: JobIn,
    start: int,
    stop: int,
    region: str,
    numbers: Mapping[str, NumberPolicy],
    resolved: Resolved | None = None,
) -> list[Recipient]:
    """The domain recipients of members `start` to `stop` of a validated spec: its own
    recipients first, then its audience's members (`resolved`); a follow-up's are the members
    the earlier job reached."""
    resolved = resolved or Resolved()
    languages = tuple(spec.message)
    if spec.follows is not None and resolved.followed is not None:
        return [
            replace(r, index=i, lang=r.lang if r.lang in languages else languages[0])
            for i, r in enumerate(resolved.followed[start:stop], start)
        ]
    given = len(spec.recipients)
    recipients = _given(spec, start, min(stop, given), region, numbers, languages)
    if spec.audience is not None and resolved.audience is not None and stop > given:
        recipients += to_recipients(
            resolved.audience,
            spec.channels,
            languages,
            {str(k): str(v) for k, v in spec.fallback.items()},
            numbers,
            given,
            slice(max(start - given, 0), stop - given),
        )
    return recipients


def _given(
    spec: JobIn,
    start: int,
    stop: int,
    region: str,
    numbers: Mapping[str, NumberPolicy],
    languages: tuple[str, ...],
) -> list[Recipient]:
    """The domain recipients of the job's own members `start` to `stop`."""
    recipients = []
    for i in range(start, stop):
        r = spec.recipients[i]
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
                refused = refused_channels(number, needed, numbers, phone)
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
    return recipients


_RELEASED = RecipientIn()


def release_members(spec: JobIn, start: int, stop: int) -> None:
    """Members `start` to `stop` are no longer needed (their recipients are stored): dropped
    from the spec, which would otherwise hold a 100,000-member job whole (~60 MB)."""
    spec.recipients[start:stop] = [_RELEASED] * (min(stop, len(spec.recipients)) - start)


def job_header(
    spec: JobIn, limits: JobsConfig, now: datetime, resolved: Resolved | None = None
) -> Job:
    """The job without its recipients (they come by `members`)."""
    resolved = resolved or Resolved()
    options: dict[str, object] = {}
    if spec.voice is not None:
        options["voice"] = spec.voice.model_dump()
    if spec.audience is not None and resolved.audience is not None:
        found = resolved.audience
        options["audience"] = spec.audience.model_dump()
        plp = found.plps.get(spec.audience.plps[0]) if len(spec.audience.plps) == 1 else None
        if plp is not None:
            options["plp"] = plp_options(plp)
            voice = options.get("voice")
            if plp.code_word and not (isinstance(voice, dict) and voice.get("code_word")):
                # A call says the PLP's code word too (voice/compose.py reads it here).
                base = voice if isinstance(voice, dict) else VoiceOptions().model_dump()
                options["voice"] = {**base, "code_word": plp.code_word}
    if spec.follows is not None and resolved.followed is not None:
        options["follows"] = spec.follows
        for key in ("plp", "audience"):  # the earlier job's PLP: its code word, its sender id
            if resolved.followed_options and key in resolved.followed_options:
                options[key] = resolved.followed_options[key]
    return Job(
        id=spec.id,
        priority=Priority.parse(spec.priority),
        test=spec.test,
        message={str(k): v for k, v in spec.message.items()},
        subject={str(k): v for k, v in spec.subject.items()},
        channels=tuple(spec.channels),
        recipients=(),
        expires_at=_expiry(spec, limits, now),
        options=options,
        fallback={str(k): str(v) for k, v in spec.fallback.items()},
    )
