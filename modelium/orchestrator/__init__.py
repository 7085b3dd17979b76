"""The model table, its state machine, drop handling and the control loop."""

from modelium.orchestrator.drops import DropHandler
from modelium.orchestrator.errors import (
    LoadTimeoutError,
    ModelFailedError,
    NoCapacityError,
    NotReadyError,
    OrchestratorError,
    RequestTimeoutError,
    TooManyRequestsError,
    UnknownModelError,
)
from modelium.orchestrator.admission import Priority
from modelium.orchestrator.orchestrator import Orchestrator, Serving
from modelium.orchestrator.records import ModelRecord, ModelState
from modelium.orchestrator.store import StateStore

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
    "Priority",
    "RequestTimeoutError",
    "Serving",
    "StateStore",
    "TooManyRequestsError",
    "UnknownModelError",
]
