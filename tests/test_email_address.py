"""Addresses are normalised as email-validator does, whichever way: the per-domain cache gives
the same address or the same refusal as asking email-validator the whole address."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email

from gateway import email_address
from gateway.email_address import normalise_email

ADDRESSES = [
    # the usual
    "member1@example.be",
    "an.peeters+plp@Example.BE",
    "AN.PEETERS@EXAMPLE.BE",
    "o'brien@example.co.uk",
    "a!#$%&'*+-/=?^_`{|}~z@example.be",
    "x@sub-domain.example.be",
    # role mailboxes email-validator lowercases
    "Postmaster@example.be",
    "ABUSE@example.be",
    # international or quoted: the long way
    "andré@example.be",
    "user@münchen.de",
    "user@xn--mnchen-3ya.de",
    '"an peeters"@example.be',
    '"an"@example.be',
    "An Peeters <an@example.be>",
    "user@[127.0.0.1]",
    # refused
    "",
    "@example.be",
    "member@",
    "member@@example.be",
    "member@example",
    "member@localhost",
    "member@example.invalid",
    "member@x.local",
    "member@example..be",
    "member@-example.be",
    "member@example-.be",
    "member@example.be.",
    "member@.example.be",
    ".member@example.be",
    "member.@example.be",
    "mem..ber@example.be",
    " member@example.be",
    "member@example.be ",
    "member@exa_mple.be",
    "member@1.2.3.4",
    "member@example.123",
    "member@" + "a" * 64 + ".be",
    # lengths: a long local part (allowed unless strict), the whole address at 254 and 255
    "m" * 65 + "@example.be",
    "m" * 243 + "@example.be",
    "m" * 244 + "@example.be",
    "m" * 200 + "@" + "d" * 40 + ".example.be",
    "m" * 10 + "@" + ".".join(["d" * 60] * 4) + ".be",
]


def reference(raw: str) -> str:
    try:
        return str(validate_email(raw, check_deliverability=False).normalized)
    except EmailNotValidError:
        return "invalid_email"


def ours(raw: str) -> str:
    try:
        return normalise_email(raw)
    except ValueError as exc:
        return str(exc)


@pytest.mark.parametrize("raw", ADDRESSES)
def test_same_verdict_as_email_validator_cold_and_cached(raw: str) -> None:
    email_address._domain.cache_clear()
    expected = reference(raw)
    assert ours(raw) == expected  # the domain judged now
    assert ours(raw) == expected  # its verdict from the cache
    # Another member of the same domain after it, and this one after another member.
    local, _, domain = raw.rpartition("@")
    if local and domain:
        assert ours(f"other@{domain}") == reference(f"other@{domain}")
        assert ours(raw) == expected


def test_a_domain_is_judged_once() -> None:
    email_address._domain.cache_clear()
    for i in range(100):
        normalise_email(f"member{i}@example.be")
    info = email_address._domain.cache_info()
    assert (info.misses, info.hits) == (1, 99)
