"""Configuration of the SMS channel (`[sms]` and `[[sms.smsc]]`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SmsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    sender: str = "PLP"
