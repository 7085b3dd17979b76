"""The model table's rows: one `ModelRecord` per model name, with its lifecycle state.

    DISCOVERED -> ANALYZED -> LOADING -> READY -> UNLOADING -> UNLOADED -> LOADING ...
                                          READY -> PARKED -> (wake) READY   (vLLM on a GPU)
                                  \\-> FAILED (reason kept; retried on an explicit load)
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelium.analysis.profile import MemoryEstimate, ModelProfile


class ModelState(str, enum.Enum):
    DISCOVERED = "discovered"
    ANALYZED = "analyzed"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    UNLOADED = "unloaded"
    PARKED = "parked"  # vLLM sleep mode: weights in host RAM, woken in ~0.1 s (GPU only)
    FAILED = "failed"


@dataclass
class ModelRecord:
    """Everything the daemon knows about one model; mutated only by the orchestrator."""

    name: str
    path: Path
    state: ModelState = ModelState.DISCOVERED
    profile: ModelProfile | None = None
    memory: MemoryEstimate | None = None
    runtime: str | None = None
    runtime_reason: str | None = None
    device: str | None = None
    endpoint: str | None = None  # the runtime's own server for this model (vLLM), if any
    placement_reason: str | None = None
    reason: str | None = None  # why it is failed / not loaded / was unloaded
    pinned: bool = False
    load_seconds: float | None = None
    loaded_at: float | None = None  # wall clock
    load_count: int = 0
    crash_times: list[float] = field(default_factory=list)  # monotonic, within the window
    restart_at: float | None = None  # monotonic time of a scheduled restart after a crash
    updated_at: float = field(default_factory=time.time)

    def set_state(self, state: ModelState, reason: str | None = None) -> None:
        self.state = state
        self.reason = reason
        self.updated_at = time.time()

    def to_dict(self) -> dict[str, Any]:
        profile = self.profile
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
            "path": str(self.path),
            "task": profile.task if profile else None,
            "architecture": profile.architecture if profile else None,
            "parameters": profile.parameters if profile else None,
            "dtype": profile.dtype if profile else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "load_seconds": self.load_seconds,
            "loaded_at": self.loaded_at,
            "load_count": self.load_count,
            "updated_at": self.updated_at,
        }
