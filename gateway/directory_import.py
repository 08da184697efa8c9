"""Reading a PLP's member list from CSV or JSON: every bad row reported with its line and reason.

CSV: UTF-8, a header row; columns `ref,phone,email,lang,groups,no_voice` (more are allowed:
`quiet_hours`, `consent_at`; unknown ones are ignored); `groups` separated by `;`; `no_voice`
yes/no. JSON: a list of member objects with the same keys (`groups` a list or a `;` string),
or `{"plp": {...}, "members": [...]}` with the PLP's own metadata. A phone number is normalised
to E.164; one that a channel's number policy refuses is only a warning (the policy is applied
per channel when a job is sent).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

from .directory import Coordinator, Member, Plp, kind_text, valid_sender_id
from .domain import LANGUAGES
from .email_address import normalise_email
from .jobs import REF_PATTERN, parse_phone
from .numbers import NumberPolicy, kind_of

_REF = re.compile(REF_PATTERN)
_GROUP = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_QUIET = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")
_YES = {"yes", "y", "true", "1", "oui", "ja"}
_NO = {"no", "n", "false", "0", "", "non", "nee", "nein"}
REQUIRED_COLUMNS = ("ref", "phone", "email", "lang", "groups", "no_voice")


@dataclass(frozen=True)
class RowProblem:
    line: int  # the CSV line (the header is line 1), or the JSON member's position (1-based)
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class ImportFile:
    """What a file holds: the good members, every bad row, the warnings, the PLP's metadata."""

    members: list[Member] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    warnings: list[RowProblem] = field(default_factory=list)
    plp: Plp | None = None


class ImportError_(ValueError):
    """The file as a whole cannot be read (not UTF-8, no header, missing columns)."""


def read_file(
    data: bytes,
    plp_id: str,
    name: str = "",
    numbers: Mapping[str, NumberPolicy] | None = None,
    region: str = "BE",
) -> ImportFile:
    """Parse a CSV or JSON member list (JSON by the name's suffix or a leading `[`/`{`)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportError_(f"not UTF-8: {exc}") from None
    if name.endswith(".json") or text.lstrip()[:1] in ("[", "{"):
        return _read_json(text, plp_id, numbers or {}, region)
    return _read_csv(text, plp_id, numbers or {}, region)


def _read_csv(
    text: str, plp_id: str, numbers: Mapping[str, NumberPolicy], region: str
) -> ImportFile:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ImportError_(f"missing columns: {', '.join(missing)} (header row: {header})")
    reader.fieldnames = header
    rows = ((reader.line_num, row) for row in reader)
    return _members(rows, plp_id, numbers, region)


def _read_json(
    text: str, plp_id: str, numbers: Mapping[str, NumberPolicy], region: str
) -> ImportFile:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportError_(f"invalid JSON: {exc}") from None
    plp = None
    if isinstance(data, dict):
        plp = plp_from_json(plp_id, data.get("plp") or {})
        data = data.get("members", [])
    if not isinstance(data, list):
        raise ImportError_("a JSON member list is a list, or an object with `members`")
    out = _members(enumerate(data, 1), plp_id, numbers, region)
    out.plp = plp
    return out


def read_members(
    items: list[Any], plp_id: str, numbers: Mapping[str, NumberPolicy], region: str = "BE"
) -> ImportFile:
    """Members given as JSON objects (a directory sync over MQTT)."""
    return _members(enumerate(items, 1), plp_id, numbers, region)


def plp_from_json(plp_id: str, data: Any) -> Plp:
    """A PLP's metadata from `{"names": {...}, "zone", "code_word", "sender_id",
    "coordinators": [{"email", "phone"}]}`."""
    if not isinstance(data, dict):
        raise ImportError_("`plp` is an object")
    names = data.get("names") or {}
    if not isinstance(names, dict) or any(k not in LANGUAGES for k in names):
        raise ImportError_(f"`plp.names` maps languages ({', '.join(LANGUAGES)}) to names")
    coordinators = []
    for c in data.get("coordinators") or []:
        if not isinstance(c, dict):
            raise ImportError_("a coordinator is an object with `email` and/or `phone`")
        try:
            email = normalise_email(c["email"]) if c.get("email") else None
            phone = _e164(c["phone"], "BE") if c.get("phone") else None
        except ValueError as exc:
            raise ImportError_(f"coordinator: {exc}") from None
        coordinators.append(Coordinator(email, phone))
    sender_id = _opt(data.get("sender_id"))
    if sender_id is not None and not valid_sender_id(sender_id):
        raise ImportError_("`plp.sender_id`: a number, or at most 11 letters and digits")
    return Plp(
        id=plp_id,
        names={str(k): str(v) for k, v in names.items()},
        zone=_opt(data.get("zone")),
        code_word=_opt(data.get("code_word")),
        sender_id=sender_id,
        coordinators=tuple(coordinators),
    )


def _opt(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _e164(raw: str, region: str) -> str:
    return phonenumbers.format_number(parse_phone(raw, region), phonenumbers.PhoneNumberFormat.E164)


def _members(
    rows: Iterable[tuple[int, Any]],
    plp_id: str,
    numbers: Mapping[str, NumberPolicy],
    region: str,
) -> ImportFile:
    out = ImportFile()
    seen: dict[str, int] = {}
    for line, row in rows:
        if not isinstance(row, dict):
            out.problems.append(RowProblem(line, "not_an_object"))
            continue
        try:
            member, warnings = _member(row, plp_id, numbers, region)
        except _Bad as bad:
            out.problems.append(RowProblem(line, bad.reason, bad.detail))
            continue
        if member.ref in seen:
            out.problems.append(
                RowProblem(line, "duplicate_ref", f"same ref as line {seen[member.ref]}")
            )
            continue
        seen[member.ref] = line
        out.members.append(member)
        out.warnings += [RowProblem(line, w) for w in warnings]
    return out


class _Bad(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _text(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Bad("wrong_type", key)
    return value.strip()


def _member(
    row: Mapping[str, Any], plp_id: str, numbers: Mapping[str, NumberPolicy], region: str
) -> tuple[Member, list[str]]:
    ref = _text(row, "ref")
    if not ref:
        raise _Bad("missing_ref")
    if not _REF.match(ref):
        raise _Bad("invalid_ref", "letters, digits and . _ : - only, at most 64")
    warnings: list[str] = []
    phone = kind = None
    raw_phone = _text(row, "phone")
    if raw_phone:
        try:
            number = parse_phone(raw_phone, region)
        except ValueError:
            raise _Bad("invalid_phone") from None
        phone = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        number_kind = kind_of(number)
        kind = kind_text(number_kind)
        for channel, policy in sorted(numbers.items()):
            if not policy.allows(number_kind):
                warnings.append(f"number_not_allowed_on_{channel}")
    email = None
    raw_email = _text(row, "email")
    if raw_email:
        try:
            email = normalise_email(raw_email)
        except ValueError:
            raise _Bad("invalid_email") from None
    if phone is None and email is None:
        raise _Bad("no_address", "a phone number or an e-mail address is needed")
    lang = _text(row, "lang").lower()
    if lang not in LANGUAGES:
        raise _Bad("unknown_language", f"one of {', '.join(LANGUAGES)}")
    groups_value = row.get("groups")
    if isinstance(groups_value, list):
        groups = [str(g).strip().lower() for g in groups_value]
    else:
        groups = [g.strip().lower() for g in _text(row, "groups").split(";")]
    groups = [g for g in groups if g]
    bad_group = next((g for g in groups if not _GROUP.match(g)), None)
    if bad_group is not None:
        raise _Bad("invalid_group", "lower-case letters, digits, _ and -, at most 40")
    no_voice_value = row.get("no_voice")
    if isinstance(no_voice_value, bool):
        no_voice = no_voice_value
    else:
        flag = _text(row, "no_voice").lower()
        if flag not in _YES | _NO:
            raise _Bad("invalid_no_voice", "yes or no")
        no_voice = flag in _YES
    quiet = _text(row, "quiet_hours") or None
    if quiet is not None and not _QUIET.match(quiet):
        raise _Bad("invalid_quiet_hours", "HH:MM-HH:MM")
    consent = _text(row, "consent_at") or None
    member = Member(
        plp=plp_id,
        ref=ref,
        lang=lang,
        phone=phone,
        email=email,
        groups=tuple(sorted(set(groups))),
        no_voice=no_voice,
        quiet_hours=quiet,
        consent_at=consent,
        phone_kind=kind,
    )
    return member, warnings
