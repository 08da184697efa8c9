"""`[security]` configuration: job signatures (keys per sender, replay window).

Imports nothing from gateway.config (which embeds this model) to avoid an import cycle.
"""

from __future__ import annotations

import re

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .secret import unresolved

KID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_KEY_LENGTH = 32
MAX_REPLAY_WINDOW = 86400.0  # seconds; the store keeps purged job ids this long


class SecurityConfig(BaseModel):
    """Keys are secrets: their UTF-8 bytes are the HMAC key (e.g. `openssl rand -hex 32`).

    gateway.config may subclass this with `keys: dict[str, Secret]` so that `env:`/`file:`
    values are resolved before the checks below run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    require_signature: bool = False
    replay_window: float = Field(
        default=300.0, gt=0, le=MAX_REPLAY_WINDOW, description="seconds, both directions"
    )
    keys: dict[str, str] = Field(default_factory=dict, description="key id -> secret")
    sign_with: str | None = Field(default=None, description="key id `plp-gateway send` signs with")

    @field_validator("keys")
    @classmethod
    def _key_ids(cls, v: dict[str, str]) -> dict[str, str]:
        for kid in v:
            if not KID_RE.match(kid):
                raise ValueError(f"key id {kid!r} must match {KID_RE.pattern}")
        return v

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> SecurityConfig:
        for kid, secret in self.keys.items():
            # A key left unread (an admin command outside the service) has no length yet.
            if len(secret.encode()) < MIN_KEY_LENGTH and not unresolved(secret, info):
                raise ValueError(f"key {kid!r} is shorter than {MIN_KEY_LENGTH} bytes")
        if self.require_signature and not self.keys:
            raise ValueError("require_signature = true needs at least one key in [security.keys]")
        if self.sign_with is not None and self.sign_with not in self.keys:
            raise ValueError(f"sign_with {self.sign_with!r} is not a key id in [security.keys]")
        return self

    def key_bytes(self) -> dict[str, bytes]:
        return {kid: secret.encode() for kid, secret in self.keys.items()}
