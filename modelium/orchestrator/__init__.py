"""The model table, its state machine, drop handling and the control loop."""

from modelium.orchestrator.drops import DropHandler
from modelium.orchestrator.errors import (
    LoadTimeoutError,
    ModelFailedError,
    NoCapacityError,
    NotReadyError,
    OrchestratorError,
    TooManyRequestsError,
    UnknownModelError,
)
from modelium.orchestrator.orchestrator import Orchestrator
from modelium.orchestrator.records import ModelRecord, ModelState

__all__ = [
    "DropHandler",
    "LoadTimeoutError",
    "ModelFailedError",
    "ModelRecord",
    "ModelState",
    "NoCapacityError",
    "NotReadyError",
    "Orchestrator",
    "OrchestratorError",
    "TooManyRequestsError",
    "UnknownModelError",
]
