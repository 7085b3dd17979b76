"""What the orchestrator's parts share: one object, so each part can be built alone in a
test (with fakes for the managers and a fake clock) and the simulator can drive them all."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from modelium.config import ModeliumSettings
from modelium.hardware import Inventory, MemoryLedger
from modelium.metrics import MetricSource, ModeliumMetrics
from modelium.orchestrator.admission import Admission
from modelium.orchestrator.decisions import DecisionLog
from modelium.orchestrator.runtime_plan import RuntimePlanner
from modelium.orchestrator.table import ModelTable
from modelium.runtimes.base import RuntimeManager


@dataclass
class Context:
    settings: ModeliumSettings
    table: ModelTable
    ledger: MemoryLedger
    admission: Admission
    managers: Mapping[str, RuntimeManager]
    inventory: Inventory
    metrics: ModeliumMetrics
    decide: DecisionLog
    planner: RuntimePlanner
    metric_source: MetricSource
    clock: Callable[[], float]  # monotonic seconds (the event loop's clock)
