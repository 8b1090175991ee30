"""The base of every payload model: pydantic, JSON, extra keys ignored (older and newer payloads load)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(frozen=False, extra="ignore")
