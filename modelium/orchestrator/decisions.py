"""The decision log: what the orchestrator did and why, listed by ``GET /decisions``.

Every entry is logged (JSON, with the model and reason code as fields), counted in
``modelium_decisions_total{action, reason}`` and kept (the newest ``size``). ``numbers``
holds what a policy decision was computed from (idle seconds, rates, reload costs...), so
an operator can check why *that* model was chosen.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

from modelium.logs import current_request_id
from modelium.metrics import ModeliumMetrics

log = logging.getLogger("modelium.orchestrator")

DECISION_LOG_SIZE = 500


class DecisionLog:
    def __init__(self, metrics: ModeliumMetrics, size: int = DECISION_LOG_SIZE) -> None:
        self._metrics = metrics
        self.entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)

    def __call__(self, model: str, action: str, reason_code: str, reason: str,
                 numbers: dict[str, Any] | None = None) -> None:
        entry: dict[str, Any] = {"time": time.time(), "model": model, "action": action,
                                 "reason_code": reason_code, "reason": reason}
        if numbers is not None:
            entry["numbers"] = numbers
        request_id = current_request_id()
        if request_id is not None:  # the request this decision was made for (a load it caused)
            entry["request_id"] = request_id
        self.entries.append(entry)
        self._metrics.count_decision(action, reason_code)
        log.info("decision %s %s: %s", action, model, reason,
                 extra={"model": model, "action": action, "reason_code": reason_code})

    def newest(self, limit: int = 100, model: str | None = None) -> list[dict[str, Any]]:
        entries = [d for d in reversed(self.entries) if model is None or d["model"] == model]
        return entries[:limit]

    def __iter__(self):
        return iter(list(self.entries))

    def __len__(self) -> int:
        return len(self.entries)
