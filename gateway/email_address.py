"""E-mail addresses normalised as `email-validator` does, its domain verdicts kept per domain.

`email-validator` spends about two thirds of an address on its domain (IDNA, label rules),
and the members of a large job share a handful of domains. An address whose local part is a
plain ASCII dot-atom takes the domain's verdict from a cache filled by `email-validator`
itself; any other address (quoted, international, a display name, a role mailbox it
lowercases, a domain it refused) goes through `email-validator` whole. Either way the answer
is the one `validate_email(raw, check_deliverability=False)` gives.
"""

from __future__ import annotations

import functools
import re

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES, EMAIL_MAX_LENGTH

# An ASCII dot-atom (RFC 5322 atext, email-validator's DOT_ATOM_TEXT), one `@`, then what
# could be a host name: nothing email-validator would unquote, normalise or lowercase.
_ATEXT = r"[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]"
_SIMPLE = re.compile(rf"({_ATEXT}+(?:\.{_ATEXT}+)*)@([A-Za-z0-9.-]+)\Z")
_ROLE_MAILBOXES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)
_STAND_IN = "x"  # the local part the domain is judged with: one character, always valid


def normalise_email(raw: str) -> str:
    """The normalised address, or raise ValueError("invalid_email")."""
    m = _SIMPLE.match(raw)
    if m is not None:
        local, domain = m.groups()
        known = _domain(domain)
        if (
            known is not None
            and local.lower() not in _ROLE_MAILBOXES
            # email-validator's length rule on the address as given, normalised and in ASCII
            and len(raw) <= EMAIL_MAX_LENGTH
            and len(local) + 1 + max(len(known[0].encode()), len(known[1])) <= EMAIL_MAX_LENGTH
        ):
            return f"{local}@{known[0]}"
    try:
        return str(validate_email(raw, check_deliverability=False).normalized)
    except EmailNotValidError:
        raise ValueError("invalid_email") from None


@functools.lru_cache(maxsize=4096)
def _domain(domain: str) -> tuple[str, str] | None:
    """email-validator's normalised and ASCII forms of a domain it accepts; None when it
    refuses the domain with the stand-in local part (the caller then asks it the whole
    address, whose verdict may differ only by length)."""
    try:
        checked = validate_email(f"{_STAND_IN}@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    return str(checked.domain), str(checked.ascii_domain)
