"""Masking of personal data for everything that leaves the store (logs, MQTT, CLI)."""

from __future__ import annotations

import hashlib
import re

import phonenumbers
from phonenumbers import Leniency, PhoneNumberFormat, PhoneNumberMatcher

#: Numbers written without a country code are read as Belgian.
REGION = "BE"
# Where a number can be: a run of digits, possibly grouped by spaces, dots, dashes, slashes
# or brackets, 7 characters or more, not glued to a word or a dash (`zone5344-2026-000123` is
# an id). Only these runs go to libphonenumber's matcher (~15 us a call even without a number).
_CANDIDATE_RE = re.compile(r"(?<![\w.+-])\+?\(?\d[\d \t\u00a0./()-]{5,}\d(?!\w)")
# A number with its country code but no `+` or `00` (`32470123412`, as AMI and SMSCs write
# them): one run of 9-15 digits, not part of a decimal or a longer id.
_BARE_RE = re.compile(r"(?<![\w.+])[1-9]\d{8,14}(?!\w|\.\d)")
# A last net for forms the matcher finds invalid but that still dial: E.164 and Belgian
# national numbers written in one piece.
_PHONE_RE = re.compile(r"(?<![\w.])\+\d{7,15}\b|\b0[1-9]\d{7,8}\b")
_DECIMAL_RE = re.compile(r"\d+\.\d+")
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


def mask_phone(number: str) -> str:
    """`+32470123412` -> `+32470****12`: enough to recognise, not to dial. Other forms of a
    number (`0470 12 34 12`, `32470123412`) are masked in their E.164 form."""
    if not number.startswith("+"):
        number = _as_e164(number) or number
    if len(number) < 8:
        return "****"
    return number[:6] + "****" + number[-2:]


def mask_email(address: str) -> str:
    """`an.peeters@example.be` -> `a***@example.be`."""
    local, sep, domain = address.partition("@")
    if not sep:
        return "***"
    return (local[:1] or "") + "***@" + domain


def mask_address(address: str) -> str:
    """Mask a phone number or an e-mail address, whichever it is."""
    return mask_email(address) if "@" in address else mask_phone(address)


def pseudonymous_ref(job_id: str, index: int) -> str:
    """A stable recipient ref for recipients sent without one: no personal data in it."""
    digest = hashlib.sha256(f"{job_id}\x00{index}".encode()).hexdigest()[:10]
    return f"r-{digest}"


def address_hash(value: str) -> str:
    """Short hash of an identifier that must not be shown (SMSC ids, numbers)."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def erased_ref(key: str) -> str:
    """The pseudonym that stands for an erased member (`<plp>:<ref>`) in stored deliveries:
    one per member, so that their deliveries still count as one member."""
    return f"erased-{address_hash(key)}"


def scrub(text: str) -> str:
    """Mask every phone number and e-mail address in free text, whatever its format:
    `0470 12 34 12`, `+32 470 12 34 12`, `0032470123412`, `32470123412` all become
    `+32470****12` (the E.164 form of the number, masked)."""
    if "@" in text:
        text = _EMAIL_RE.sub(lambda m: mask_email(m.group(0)), text)
    return _CANDIDATE_RE.sub(_mask_candidate, text)


def _mask_candidate(m: re.Match[str]) -> str:
    if _DECIMAL_RE.fullmatch(m.group(0)):
        return m.group(0)  # a decimal (Asterisk's Uniqueid `1795929293.1`, a time): no number
    text = _mask_numbers(m.group(0))
    return _PHONE_RE.sub(_mask_match, _BARE_RE.sub(_mask_bare, text))


def _e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def _as_e164(text: str) -> str | None:
    """A number written nationally or without its `+`, in E.164; None if it is not one."""
    for candidate, region in ((text, REGION), ("+" + text.lstrip("+"), None)):
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return _e164(number)
    return None


def _mask_numbers(text: str) -> str:
    """Numbers as people write them (national, international, grouped), by libphonenumber."""
    matches = list(PhoneNumberMatcher(text, REGION, leniency=Leniency.VALID))
    for m in reversed(matches):  # from the end, so earlier offsets stay right
        text = text[: m.start] + mask_phone(_e164(m.number)) + text[m.end :]
    return text


def _mask_bare(m: re.Match[str]) -> str:
    run = m.group(0)
    try:
        number = phonenumbers.parse("+" + run, None)
    except phonenumbers.NumberParseException:
        return run
    return mask_phone(_e164(number)) if phonenumbers.is_valid_number(number) else run


def _mask_match(m: re.Match[str]) -> str:
    return mask_phone(m.group(0))
