"""Request bodies the gateway accepts (validated by FastAPI; errors become 422)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    """``POST /predict/{model}``: inputs are a string or a list of strings for
    transformers tasks; the runtime validates the exact shape and the parameters."""

    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str] = Field(description="text, or a batch of texts")
    parameters: dict[str, Any] = Field(default_factory=dict, description="task parameters, e.g. max_new_tokens")
