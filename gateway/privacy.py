"""Masking of personal data for everything that leaves the store (logs, MQTT, CLI)."""

from __future__ import annotations

import hashlib
import re

# E.164 (how numbers live inside the gateway) and Belgian national format.
_PHONE_RE = re.compile(r"(?<![\w.])\+\d{7,15}\b|\b0[1-9]\d{7,8}\b")
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


def mask_phone(number: str) -> str:
    """`+32470123412` -> `+32470****12`: enough to recognise, not to dial."""
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


def scrub(text: str) -> str:
    """Mask anything that looks like a phone number or e-mail address in free text."""
    text = _EMAIL_RE.sub(lambda m: mask_email(m.group(0)), text)
    return _PHONE_RE.sub(lambda m: mask_phone(m.group(0)), text)
