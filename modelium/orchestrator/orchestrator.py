"""The orchestrator: the thin facade the gateway, the CLI's routes and the drop handler use.

It builds the parts and wires them together, each in a module of its own:

* :mod:`.table` the model table and its transition table; :mod:`.store` its persisted
  copy (SQLite), restored at start by :mod:`.registration`;
* :mod:`.admission` per-model gates and bounded priority queues with deadlines;
* :mod:`.scheduler` who gets memory next (placement, victims by expected cost, drains,
  swaps, tiers), carried out by :mod:`.actions`;
* :mod:`.supervisor` crashes, judged by the runtimes' own answers;
* :mod:`.replacement` atomic re-drops.

A request does ``async with orchestrator.serving(name) as s`` (or :meth:`predict`): it
waits in the model's queue until the scheduler has made the model READY and a slot is
free, or until its wait budget runs out (LoadTimeoutError with a computed Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from modelium.analysis import ModelProfile, analyze_folder
from modelium.config import ModeliumSettings
from modelium.hardware import Inventory, MemoryLedger
from modelium.metrics import LocalMetricSource, MetricSource, ModeliumMetrics
from modelium.orchestrator.admission import Admission, Lease, Priority
from modelium.orchestrator.context import Context
from modelium.orchestrator.decisions import DecisionLog
from modelium.orchestrator.errors import (
    LoadTimeoutError,
    ModelFailedError,
    NotReadyError,
    RequestTimeoutError,
    TooManyRequestsError,
)
from modelium.orchestrator.jobs import PREDICT, Jobs, JobStore
from modelium.orchestrator.jobs.executors import predict_executor
from modelium.orchestrator.records import ModelRecord, ModelState, ema
from modelium.orchestrator.registration import Registrar
from modelium.orchestrator.replacement import Replacer
from modelium.orchestrator.runtime_plan import RuntimePlanner
from modelium.orchestrator.scheduler import Scheduler
from modelium.orchestrator.store import StateStore
from modelium.orchestrator.supervisor import Supervisor
from modelium.orchestrator.table import ModelTable
from modelium.runtimes.base import ModelNotLoadedError, RuntimeManager

log = logging.getLogger(__name__)

S = ModelState
STOP_RUNTIME_TIMEOUT_SECONDS = 45.0


@dataclass
class Serving:
    """An admitted request: the model, the runtime instance it goes to, and (for runtimes
    with their own OpenAI server) that server's base URL."""

    record: ModelRecord
    instance: str
    base_url: str | None
    generation: int
    lease: Lease
    device: str  # where it is served (the record may move on during a re-drop)


def _first_set(value: int | None, default: int) -> int:
    return default if value is None else value


class Orchestrator:
    def __init__(
        self,
        settings: ModeliumSettings,
        managers: Mapping[str, RuntimeManager],
        inventory: Inventory,
        ledger: MemoryLedger,
        metrics: ModeliumMetrics,
        *,
        analyze: Callable[[Path, str], ModelProfile] = analyze_folder,
        vllm_architectures: frozenset[str] | None = None,
        unavailable: Mapping[str, str] | None = None,
        triton_backends: frozenset[str] | None = None,
        metric_source: MetricSource | None = None,
        store: StateStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.managers = dict(managers)
        self.inventory = inventory
        self.ledger = ledger
        self.metrics = metrics
        self.metric_source: MetricSource = metric_source or LocalMetricSource(metrics)
        self.store = store if store is not None else StateStore(None)
        self.table = ModelTable()
        self.decisions = DecisionLog(metrics)
        self.clock = clock
        orchestration = settings.orchestration
        self.admission = Admission(
            serving_instance=self._serving_instance,
            limit_of=lambda n: settings.override_for(n).max_concurrent_requests
            or orchestration.max_concurrent_requests,
            queue_limit_of=lambda n: _first_set(settings.override_for(n).max_queued_requests,
                                                orchestration.max_queued_requests),
            clock=clock,
            on_wait=metrics.observe_queue_wait,
        )
        planner = RuntimePlanner(settings, self.managers, inventory,
                                 vllm_architectures=vllm_architectures, unavailable=unavailable,
                                 triton_backends=triton_backends)
        self.ctx = Context(settings, self.table, ledger, self.admission, self.managers, inventory,
                           metrics, self.decisions, planner, self.metric_source, clock)
        self.scheduler = Scheduler(self.ctx)
        self.scheduler.host_park_budget = int(psutil.virtual_memory().total
                                              * orchestration.scheduler.park_host_memory_fraction)
        self.admission.on_change = self.scheduler.on_queue_change
        self.supervisor = Supervisor(self.ctx, self.scheduler)
        self.registrar = Registrar(self.ctx, self.scheduler, self.store, analyze)
        self.replacer = Replacer(self.ctx, self.scheduler, self.registrar)
        self.table.add_listener(lambda record, _old: self.store.save(record))
        self.jobs = Jobs(settings.jobs, JobStore(self.store.connection), metrics.jobs,
                         executors={PREDICT: predict_executor(self)}, queue_position=self.admission.position)
        metrics.scheduling.set_views(self._queue_depths, self._model_memory)
        self.quarantined: deque[dict[str, Any]] = deque(maxlen=100)
        self.ready = False  # set once runtimes are up and the repository is registered
        self.startup_error: str | None = None

    # ------------------------------------------------------------------ table access

    def models(self) -> list[ModelRecord]:
        return list(self.table)

    def get(self, name: str) -> ModelRecord:
        return self.table.get(name)

    def _serving_instance(self, name: str) -> str | None:
        record = self.table.find(name)
        return record.instance if record is not None and record.state == S.READY else None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start runtimes, register the repository (restoring what was persisted),
        re-adopt what still runs, then let the restore plan load what the user had."""
        for manager in self.managers.values():
            await manager.start()
        plan = await self.registrar.register_repository()
        await self.registrar.adopt()
        self.ready = True
        self.registrar.restore(plan)
        self.jobs.start()  # after the restore: jobs queue behind what the user had
        log.info("orchestrator started", extra={"models": len(self.table)})

    async def stop(self) -> None:
        """Stop deciding, cancel running actions, stop every runtime (in parallel). The
        store keeps what was resident, so the next start loads it again."""
        self.ready = False
        await self.jobs.stop()  # running jobs stay "running" in the store: they run again
        self.scheduler.stop()
        for task in list(self.scheduler.actions.tasks) + list(self.replacer.tasks):
            task.cancel()
        await asyncio.gather(*self.scheduler.actions.tasks, *self.replacer.tasks, return_exceptions=True)

        async def stop_one(manager: RuntimeManager) -> None:
            try:
                await asyncio.wait_for(manager.stop(), STOP_RUNTIME_TIMEOUT_SECONDS)
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping runtime %s failed", manager.name)

        await asyncio.gather(*(stop_one(m) for m in self.managers.values()))
        self.registrar.flush_usage()
        self.store.close()

    # ------------------------------------------------------------------ drops

    async def add_model(self, name: str, path: Path, *, profile: ModelProfile | None = None,
                        load: bool = True, wait: bool = False) -> ModelRecord:
        """Register a model filed at ``path`` and (unless ``load`` is false) ask for it to
        be loaded; ``wait`` returns only once that load finished (or failed)."""
        record = await self.registrar.register(name, path, profile=profile)
        if load and record.state == S.ANALYZED:
            future = self.scheduler.want(record, explicit=True, allow_evict=True)
            if wait:
                with contextlib.suppress(Exception):
                    await future
        return record

    def replace_model(self, name: str, staged: Path, profile: ModelProfile) -> asyncio.Task[None]:
        """A re-drop of ``name`` (filed at ``staged``): swapped in atomically in the
        background (see :mod:`.replacement`); the task is returned for tests."""
        return self.replacer.start(name, staged, profile)

    def record_quarantine(self, name: str, reason: str, path: Path) -> None:
        """A drop was rejected; it never enters the table but is listed by GET /status."""
        self.quarantined.append({"time": time.time(), "name": name, "reason": reason,
                                 "path": str(path)})
        self.decisions(name, "quarantine", "invalid-drop", reason)

    # ------------------------------------------------------------------ serving

    @contextlib.asynccontextmanager
    async def serving(self, name: str, *, wait_seconds: float | None = None,
                      priority: Priority = Priority.NORMAL) -> AsyncIterator[Serving]:
        """Admit one request to ``name``, loading it on demand; released on exit."""
        serving = await self.acquire(name, wait_seconds=wait_seconds, priority=priority)
        try:
            yield serving
        finally:
            self.release(serving)

    async def acquire(self, name: str, *, wait_seconds: float | None = None,
                      priority: Priority = Priority.NORMAL) -> Serving:
        if not self.ready:
            raise NotReadyError(self.startup_error or "modelium is still starting; retry shortly",
                                retry_after=5)
        record = self.table.get(name)
        if record.state == S.FAILED:
            raise ModelFailedError(f"model {name!r} failed: {record.reason}")
        orchestration = self.settings.orchestration
        wait = orchestration.load_wait_timeout_seconds if wait_seconds is None else wait_seconds
        wait = min(wait, orchestration.scheduler.max_request_wait_seconds)
        now = self.clock()
        cold = record.state != S.READY
        record.usage.note_request(now, orchestration.scheduler.rate_half_life_seconds)
        try:
            lease = await self.admission.acquire(name, deadline=now + wait, priority=priority,
                                                 retry_after=lambda: self.retry_after(name))
        except TooManyRequestsError:
            self.metrics.count_rejected(name)
            raise
        record = self.table.get(name)
        if cold:
            self.metrics.observe_cold_start(name, record.runtime or "", self.clock() - now)
        self.metrics.request_started(name)
        device = record.device or ""
        self.metrics.activity.begin(device, "serving")
        manager = self.managers[record.runtime or ""]
        return Serving(record, lease.instance, manager.openai_base_url(lease.instance),
                       record.generation, lease, device)

    def release(self, serving: Serving) -> None:
        if serving.lease.released:
            return
        self.metrics.activity.end(serving.device, "serving")
        self.metrics.request_finished(serving.record.name)
        serving.lease.release()

    async def infer(self, serving: Serving, inputs: Any, parameters: dict[str, Any]) -> Any:
        """Run one request on an admitted model (timing its service for the policy), at most
        ``gateway.request_timeout_seconds``: a hung runtime must not hold the slot forever."""
        started = self.clock()
        timeout = self.settings.gateway.request_timeout_seconds
        manager = self.managers[serving.record.runtime or ""]
        try:
            outputs = await asyncio.wait_for(manager.infer(serving.instance, inputs, parameters), timeout)
        except TimeoutError:
            raise RequestTimeoutError(f"model {serving.record.name!r} did not answer within {timeout:.0f}s "
                                      "(gateway.request_timeout_seconds)") from None
        costs = serving.record.costs
        costs.service_seconds = ema(costs.service_seconds, self.clock() - started)
        return outputs

    async def predict(self, name: str, inputs: Any, parameters: dict[str, Any], *,
                      wait_seconds: float | None = None,
                      priority: Priority = Priority.NORMAL) -> tuple[ModelRecord, Any]:
        """One request, loading the model on demand; tried once more when the runtime
        confirms it lost the model."""
        for attempt in (1, 2):
            async with self.serving(name, wait_seconds=wait_seconds, priority=priority) as serving:
                try:
                    return serving.record, await self.infer(serving, inputs, parameters)
                except ModelNotLoadedError as exc:
                    lost = await self.supervisor.confirm_lost(serving.record, serving.generation, str(exc))
                    if attempt == 2 or not lost:
                        raise
        raise AssertionError("unreachable")

    async def report_lost(self, serving: Serving, why: str) -> bool:
        """A caller found the model's server gone; True when the runtime confirms it."""
        return await self.supervisor.confirm_lost(serving.record, serving.generation, why)

    def retry_after(self, name: str) -> float:
        """Seconds until a request for ``name`` would likely be served: its (measured) load
        time when it is not serving, plus the queue ahead of it at its service rate."""
        record = self.table.find(name)
        if record is None:
            return 1.0
        queued = self.admission.queued(name)
        service = record.costs.service_seconds or 1.0
        eta = service * (queued + 1) / max(1, self.admission.limit(name))
        if record.state != S.READY:
            eta += self.scheduler.reload_seconds(record)
        return float(max(1, math.ceil(eta)))

    # ------------------------------------------------------------------ user commands

    async def load(self, name: str, *, wait_seconds: float | None = None) -> ModelRecord:
        """Load now (a failed model is analysed and tried again); may evict others."""
        record = self.table.get(name)
        if record.state == S.FAILED:
            record = await self.registrar.register(name, record.path, keep_state=True)
            if record.state == S.FAILED:
                raise ModelFailedError(f"model {name!r} failed: {record.reason}")
        wait = self.settings.orchestration.load_wait_timeout_seconds if wait_seconds is None else wait_seconds
        future = self.scheduler.want(record, explicit=True, allow_evict=True, priority=Priority.HIGH,
                                     wait_seconds=wait)
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            raise LoadTimeoutError(f"model {name!r} is still loading after {wait:.0f}s; it goes on "
                                   "loading", retry_after=self.retry_after(name)) from None

    async def unload(self, name: str, *, reason: str = "unloaded on request") -> ModelRecord:
        """Drain (in-flight requests finish) and stop; stays unloaded across restarts
        until something asks for it."""
        record = self.table.get(name)
        return await self.scheduler.request_unload(record, reason, "request")

    def set_pinned(self, name: str, pinned: bool) -> ModelRecord:
        """Pin (never evicted or idle-unloaded; loaded now if it is not) or unpin."""
        record = self.table.get(name)
        record.pinned = pinned
        self.table.touch(record)
        self.decisions(name, "pin" if pinned else "unpin", "request",
                       f"{'pinned' if pinned else 'unpinned'} on request")
        if pinned and record.state in (S.ANALYZED, S.UNLOADED, S.PARKED):
            self.scheduler.want(record, explicit=True, allow_evict=True)
        return record

    # ------------------------------------------------------------------ control loop

    async def run_control_loop(self) -> None:
        """Tick every ``decision_interval_seconds``; one failing step never stops it."""
        interval = self.settings.orchestration.decision_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - log and try again next tick
                log.exception("control loop step failed")

    async def tick(self) -> None:
        """One pass: fresh metrics, crashes, idle unloads, footprints, counters persisted."""
        try:
            await self.metric_source.refresh()
        except Exception:  # noqa: BLE001 - sources fall back themselves; belt and braces
            log.exception("refreshing the metric source failed")
        await self.supervisor.reconcile()
        self.scheduler.idle_unloads()
        for record in self.table.in_states(S.READY):
            device = self.inventory.get(record.device or "")
            if device is not None:
                await self.scheduler.actions.measure(record, device)
        self.registrar.flush_usage()

    async def quiesce(self) -> None:
        """Wait until nothing is being decided, loaded, unloaded or replaced (tests)."""
        while True:
            await self.scheduler.quiesce()
            if not self.replacer.tasks:
                return
            await asyncio.gather(*list(self.replacer.tasks), return_exceptions=True)

    # ------------------------------------------------------------------ views

    def _queue_depths(self) -> dict[str, dict[str, int]]:
        return {r.name: {p.name.lower(): n for p, n in self.admission.depth_by_priority(r.name).items()}
                for r in self.table}

    def _model_memory(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.table:
            kinds = {"reserved": r.reserved_bytes}
            if r.memory is not None:
                kinds["estimate"] = r.memory.total_bytes
            if r.costs.measured_bytes:
                kinds["measured"] = r.costs.measured_bytes
            out[r.name] = kinds
        return out

    def status(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.describe(),
                "switching_share": self.metrics.activity.switching_share(),
                "unknown_runtimes": dict(self.supervisor.unknown)}

