"""Secrets in configuration: a value given literally, as `env:NAME` or as `file:/path`.

`file:` suits systemd credentials (`LoadCredential=` → `file:%d/name`). Kept apart from
`gateway.config` so that channel packages (`sms.config`, `voice.config`) can use it too.

The daemon resolves every secret while the configuration is validated and refuses to start
when one cannot be read. Admin commands that need no secret (`status`, `purge`, `check-config`)
validate with `defer_secrets()`: a secret that cannot be read here (a systemd credential exists
only inside the service) keeps its reference as value and is listed instead of failing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationInfo

# Key of the validation context that asks for deferred secrets: reference -> why unreadable.
_DEFERRED = "plp_deferred_secrets"
CREDENTIALS_DIR = "/run/credentials/"  # systemd's $CREDENTIALS_DIRECTORY lives below it


def is_reference(value: str) -> bool:
    return value.startswith(("env:", "file:"))


def service_only(reference: str) -> bool:
    """A systemd credential path: readable only inside the service that loads it."""
    return reference.startswith("file:") and CREDENTIALS_DIR in reference[5:]


def read_secret(value: str) -> str:
    """The secret itself; ValueError (a pydantic validation error) when it cannot be read."""
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    if value.startswith("file:"):
        path = Path(value[5:])
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            where = (
                " (a systemd credential: is it loaded with LoadCredential= in the unit?)"
                if service_only(value)
                else ""
            )
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}{where}") from None
    return value


def resolve_secret(value: str, info: ValidationInfo) -> str:
    try:
        return read_secret(value)
    except ValueError as exc:
        deferred = _deferred(info)
        if deferred is None:
            raise
        deferred[value] = str(exc)
        return value


def defer_secrets() -> dict[str, Any]:
    """A validation context in which unreadable secrets keep their reference (see
    `deferred_secrets`) instead of failing validation."""
    return {_DEFERRED: {}}


def deferred_secrets(context: dict[str, Any]) -> dict[str, str]:
    """Reference -> reason, for each secret `defer_secrets()` let through unread."""
    found: dict[str, str] = context[_DEFERRED]
    return found


def unresolved(value: str, info: ValidationInfo) -> bool:
    """True when `value` is a secret reference left unread: checks of the secret's content
    (length...) cannot apply to it."""
    deferred = _deferred(info)
    return deferred is not None and value in deferred


def _deferred(info: ValidationInfo) -> dict[str, str] | None:
    context = info.context
    if isinstance(context, dict):
        found = context.get(_DEFERRED)
        if isinstance(found, dict):
            return found
    return None


Secret = Annotated[str, AfterValidator(resolve_secret)]
