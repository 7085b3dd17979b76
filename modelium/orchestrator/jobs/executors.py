"""How a job of each kind runs. ``predict``: :meth:`Orchestrator.predict`, exactly what
``POST /predict/NAME`` does (load on demand, the model's queue at the job's priority, one
retry when the runtime lost the model). The ``openai`` executor is the gateway's (it
relays to the model's OpenAI server: :mod:`modelium.gateway.jobs`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from modelium.orchestrator.admission import Priority
from modelium.orchestrator.jobs.records import Job

if TYPE_CHECKING:
    from modelium.orchestrator.jobs.runner import Executor
    from modelium.orchestrator.orchestrator import Orchestrator


def predict_executor(orchestrator: Orchestrator) -> Executor:
    settings = orchestrator.settings

    async def run(job: Job) -> dict[str, Any]:
        wait = min(settings.jobs.wait_seconds, settings.orchestration.scheduler.max_request_wait_seconds)
        started = time.perf_counter()
        record, outputs = await orchestrator.predict(
            job.model, job.payload["inputs"], job.payload.get("parameters") or {},
            wait_seconds=wait, priority=Priority(job.priority))
        return {"model": job.model, "runtime": record.runtime, "device": record.device, "outputs": outputs,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2)}

    return run
