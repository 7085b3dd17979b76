"""Request bodies the gateway accepts (validated by FastAPI; errors become 422)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    """``POST /predict/{model}``: inputs are a string or a list of strings for text
    models, or named tensors ``{"INPUT_NAME": nested list}`` for Triton tensor models; the
    runtime validates the exact shape, dtype and the parameters."""

    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str] | dict[str, Any] = Field(
        description="text, a batch of texts, or named tensors"
    )
    parameters: dict[str, Any] = Field(default_factory=dict, description="task parameters, e.g. max_new_tokens")
