"""The model table's rows: one `ModelRecord` per model name.

A record holds what the user wants (``pinned``, ``wanted``), what is true now (``state``,
``device``, the runtime ``instance`` key), and what was learnt about the model (``costs``,
``usage``), which the scheduler's victim choice reads and the state store persists. The
legal lifecycle transitions live in :mod:`modelium.orchestrator.table`.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelium.analysis.profile import MemoryEstimate, ModelProfile

#: Weight of the newest sample in the measured-cost moving averages.
EMA_WEIGHT = 0.3


class ModelState(str, enum.Enum):
    DISCOVERED = "discovered"
    ANALYZED = "analyzed"
    LOADING = "loading"  # a cold load or a wake from parked
    READY = "ready"
    DRAINING = "draining"  # chosen to go: new requests queue, in-flight ones finish
    UNLOADING = "unloading"  # being stopped or parked
    UNLOADED = "unloaded"
    PARKED = "parked"  # process kept, most device memory released (a runtime capability)
    FAILED = "failed"


#: States in which the model's runtime instance exists and holds memory.
RESIDENT_STATES = frozenset({ModelState.LOADING, ModelState.READY, ModelState.DRAINING,
                             ModelState.UNLOADING, ModelState.PARKED})
#: States the supervisor checks against the runtime (not in a transition of our own).
LIVE_STATES = frozenset({ModelState.READY, ModelState.DRAINING, ModelState.PARKED})


class Wanted(str, enum.Enum):
    """What the user last asked for; survives restarts."""

    AUTO = "auto"  # loaded on demand, evicted and idle-unloaded by policy
    UNLOADED = "unloaded"  # the user unloaded it: not loaded at start-up (a request still loads it)


def ema(old: float | None, sample: float) -> float:
    return sample if old is None else (1 - EMA_WEIGHT) * old + EMA_WEIGHT * sample


@dataclass
class Costs:
    """What this model measurably costs; persisted, so a restart keeps what it learnt."""

    load_seconds: float | None = None  # cold load, moving average
    wake_seconds: float | None = None  # parked -> ready
    unload_seconds: float | None = None
    service_seconds: float | None = None  # one request, moving average
    measured_bytes: int | None = None  # peak footprint measured while loaded
    measured_on: str | None = None  # the device it was measured on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Usage:
    """Request counts and an exponentially decayed request rate (the policy's "frequency",
    aged by its half-life: a model popular an hour ago is not popular now)."""

    requests: int = 0
    decayed: float = 0.0
    decayed_at: float = 0.0  # monotonic
    last_used: float | None = None  # monotonic, last request arrival (LRU)
    last_used_wall: float | None = None

    def note_request(self, now: float, half_life: float) -> None:
        self.decayed = self._decay(now, half_life) + 1.0
        self.decayed_at = now
        self.requests += 1
        self.last_used = now
        self.last_used_wall = time.time()

    def rate(self, now: float, half_life: float) -> float:
        """Requests per second: the decayed count divided by the decay's mean lifetime."""
        return self._decay(now, half_life) * math.log(2) / half_life

    def _decay(self, now: float, half_life: float) -> float:
        return self.decayed * 0.5 ** (max(0.0, now - self.decayed_at) / half_life)


@dataclass
class ModelRecord:
    """Everything the daemon knows about one model; changed only by the orchestrator."""

    name: str
    path: Path
    state: ModelState = ModelState.DISCOVERED
    profile: ModelProfile | None = None
    memory: MemoryEstimate | None = None  # the estimate for its runtime
    runtime: str | None = None
    runtime_reason: str | None = None
    device: str | None = None
    endpoint: str | None = None  # the runtime's own server for this model (vLLM), if any
    placement_reason: str | None = None
    reason: str | None = None  # why it is failed / not loaded / was unloaded
    pinned: bool = False
    wanted: Wanted = Wanted.AUTO
    revision: int = 1  # bumped by each re-drop
    reserved_bytes: int = 0  # what the ledger holds for it now
    costs: Costs = field(default_factory=Costs)
    usage: Usage = field(default_factory=Usage)
    load_count: int = 0
    generation: int = 0  # bumped when a load starts: tells the supervisor a snapshot is stale
    loaded_at: float | None = None  # monotonic, for the minimum residency window
    loaded_at_wall: float | None = None
    draining_since: float | None = None  # monotonic
    hold: str | None = None  # an operation (re-drop) that owns the record: no loads meanwhile
    runs_dropped_code: list[str] = field(default_factory=list)  # see orchestrator/trust.py
    crash_times: list[float] = field(default_factory=list)  # monotonic, within the window
    updated_at: float = field(default_factory=time.time)

    @property
    def instance(self) -> str:
        """The key the runtime knows this version by: NAME, then NAME.REVn after re-drops
        (upper case never occurs in model names, so it cannot clash with another model)."""
        return self.name if self.revision == 1 else f"{self.name}.REV{self.revision}"

    def reload_seconds(self, default: float) -> float:
        """What bringing it back costs: measured, else ``default``."""
        return self.costs.load_seconds if self.costs.load_seconds is not None else default

    def to_dict(self) -> dict[str, Any]:
        profile = self.profile
        estimate = self.memory.total_bytes if self.memory else None
        return {
            "name": self.name,
            "state": self.state.value,
            "runtime": self.runtime,
            "runtime_reason": self.runtime_reason,
            "device": self.device,
            "endpoint": self.endpoint,
            "placement_reason": self.placement_reason,
            "reason": self.reason,
            "pinned": self.pinned,
            "wanted": self.wanted.value,
            "revision": self.revision,
            "instance": self.instance,
            "path": str(self.path),
            "runs_dropped_code": list(self.runs_dropped_code),
            "task": profile.task if profile else None,
            "architecture": profile.architecture if profile else None,
            "parameters": profile.parameters if profile else None,
            "dtype": profile.dtype if profile else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "footprint": {"estimate_bytes": estimate, "reserved_bytes": self.reserved_bytes,
                          "measured_bytes": self.costs.measured_bytes},
            "costs": self.costs.to_dict(),
            "requests": self.usage.requests,
            "last_used": self.usage.last_used_wall,
            "load_seconds": self.costs.load_seconds,
            "loaded_at": self.loaded_at_wall,
            "load_count": self.load_count,
            "updated_at": self.updated_at,
        }
