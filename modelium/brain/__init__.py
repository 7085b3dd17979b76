"""The brain: pure decision functions (no I/O, no clocks, no logging).

Runtime choice, placement by memory packing, eviction victims by expected cost, the swap
rule and idle unloads. Each result carries a human reason; callers log and count them.
"""

from modelium.brain.decisions import (
    ALL_RUNTIMES,
    RUNTIME_RAY_SERVE,
    RUNTIME_TRITON,
    RUNTIME_VLLM,
    PlacementDecision,
    RuntimeChoice,
)
from modelium.brain.placement import STRATEGIES, place, usable_bytes
from modelium.brain.runtime_choice import TRITON_NATIVE_FORMATS, choose_runtime
from modelium.brain.victims import (
    ORDERS,
    Demand,
    Resident,
    RoomPlan,
    Verdict,
    blocked_reason,
    idle_unload_candidates,
    plan_room,
    reachable_slack,
    swap_verdict,
)

__all__ = [
    "ALL_RUNTIMES",
    "ORDERS",
    "RUNTIME_RAY_SERVE",
    "RUNTIME_TRITON",
    "RUNTIME_VLLM",
    "STRATEGIES",
    "TRITON_NATIVE_FORMATS",
    "Demand",
    "PlacementDecision",
    "Resident",
    "RoomPlan",
    "RuntimeChoice",
    "Verdict",
    "blocked_reason",
    "choose_runtime",
    "idle_unload_candidates",
    "place",
    "plan_room",
    "reachable_slack",
    "swap_verdict",
    "usable_bytes",
]
