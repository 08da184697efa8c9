"""Configuration of the voice channel (`[voice]`, `[voice.tts]`, `[voice.ami]`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class VoiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
