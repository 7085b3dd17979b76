"""Result types of the brain's decisions.

Every decision carries a human sentence (`reason`, shown by `modelium models`, the API and
`GET /decisions`) and a short `reason_code` for metric labels, so the two never drift apart:
the code is low-cardinality, the sentence has the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelium.hardware.devices import Device

RUNTIME_RAY_SERVE = "ray_serve"
RUNTIME_VLLM = "vllm"
RUNTIME_TRITON = "triton"
ALL_RUNTIMES = (RUNTIME_RAY_SERVE, RUNTIME_VLLM, RUNTIME_TRITON)


@dataclass(frozen=True)
class RuntimeChoice:
    """Which runtime serves a model, and why."""

    runtime: str | None  # None = no enabled runtime can serve it
    reason: str
    # "override" | "triton-native" | "causal-lm-vllm" | "causal-lm-fallback"
    # | "hf-model-triton" | "hf-model-fallback" | "no-runtime"
    reason_code: str


@dataclass(frozen=True)
class PlacementDecision:
    """Which device a model's reservation goes on, or why none can take it."""

    device: Device | None  # None = refused
    reason: str
    # "best-fit" | "spread" | "pinned" | "no-fit" | "pinned-no-fit"
    # | "pinned-unknown-device" | "too-large"
    reason_code: str
    required_bytes: int
    free_bytes_after: int | None

    @property
    def ok(self) -> bool:
        return self.device is not None
