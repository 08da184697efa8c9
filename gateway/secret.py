"""Secrets in configuration: a value given literally, as `env:NAME` or as `file:/path`.

`file:` suits systemd credentials (`LoadCredential=` → `file:%d/name`). Kept apart from
`gateway.config` so that channel packages (`sms.config`, `voice.config`) can use it too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator


def resolve_secret(value: str) -> str:
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
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    return value


Secret = Annotated[str, AfterValidator(resolve_secret)]
