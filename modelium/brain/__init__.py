"""The brain: pure decision functions (no I/O, no clocks, no logging).

Runtime choice, placement by memory packing, eviction victims and idle unloads. Each result
carries a human reason and a short reason code; callers log and count them.
"""

from modelium.brain.decisions import (
    ALL_RUNTIMES,
    RUNTIME_RAY_SERVE,
    RUNTIME_TRITON,
    RUNTIME_VLLM,
    EvictionCandidate,
    EvictionPlan,
    PlacementDecision,
    RuntimeChoice,
)
from modelium.brain.placement import (
    STRATEGIES,
    idle_unload_candidates,
    place,
    plan_eviction,
    usable_bytes,
)
from modelium.brain.runtime_choice import TRITON_NATIVE_FORMATS, choose_runtime

__all__ = [
    "ALL_RUNTIMES",
    "RUNTIME_RAY_SERVE",
    "RUNTIME_TRITON",
    "RUNTIME_VLLM",
    "STRATEGIES",
    "TRITON_NATIVE_FORMATS",
    "EvictionCandidate",
    "EvictionPlan",
    "PlacementDecision",
    "RuntimeChoice",
    "choose_runtime",
    "idle_unload_candidates",
    "place",
    "plan_eviction",
    "usable_bytes",
]
