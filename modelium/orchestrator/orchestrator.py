"""The orchestrator: the model table, loads and unloads, and the reconciling control loop.

It is the only component that changes model state. It asks the (pure) brain what to do,
records every decision with its reason, and tells runtime managers to do it. It never
parses HTTP (that is the gateway) and never decides policy itself (that is the brain).

Concurrency: one asyncio lock per model makes loads and unloads of one model strictly
sequential (concurrent callers wait for the same load), and one placement lock makes
"pick a device + reserve it in the ledger" atomic across models.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
from modelium.analysis import InvalidModelError, ModelProfile, analyze_folder
from modelium.brain import (
    EvictionCandidate,
    PlacementDecision,
    choose_runtime,
    idle_unload_candidates,
    place,
    plan_eviction,
)
from modelium.config import ModeliumSettings, ModelOverride
from modelium.analysis.profile import MemoryEstimate
from modelium.hardware import Device, Inventory, MemoryLedger
from modelium.metrics import LocalMetricSource, MetricSource, ModeliumMetrics
from modelium.orchestrator.errors import (
    LoadTimeoutError,
    ModelFailedError,
    NoCapacityError,
    NotReadyError,
    TooManyRequestsError,
    UnknownModelError,
)
from modelium.orchestrator.records import ModelRecord, ModelState
from modelium.orchestrator.sizing import size_for_runtime
from modelium.runtimes.base import (
    LoadRequest,
    ModelNotLoadedError,
    RuntimeLoadError,
    RuntimeManager,
)

log = logging.getLogger(__name__)

DECISION_LOG_SIZE = 500
MAX_RESTART_BACKOFF_SECONDS = 60.0


class Orchestrator:
    """Owns the model table and drives runtime managers toward the wanted state."""

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
        metric_source: MetricSource | None = None,
    ) -> None:
        self.settings = settings
        self.managers = dict(managers)
        self.inventory = inventory
        self.ledger = ledger
        self.metrics = metrics
        # Where the idle and eviction policies read QPS and idle time (in-flight counts are
        # always this process's own): Modelium's counters, or Prometheus when configured.
        self.metric_source: MetricSource = metric_source or LocalMetricSource(metrics)
        self._analyze = analyze
        # What the installed runtimes can do, for the brain: architectures the installed
        # vLLM serves (config may narrow it), and enabled runtimes that cannot run here.
        configured = settings.vllm.architectures
        self.vllm_architectures = frozenset(configured) if configured else vllm_architectures
        self.unavailable = dict(unavailable or {})
        self._records: dict[str, ModelRecord] = {}
        self._locks: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self._placement_lock = asyncio.Lock()
        self._load_slots = asyncio.Semaphore(settings.orchestration.max_concurrent_loads)
        self._gates: dict[str, _Gate] = {}
        self.decisions: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=DECISION_LOG_SIZE
        )
        self.quarantined: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self.ready = False  # set once runtimes are up and the repository is registered
        self.startup_error: str | None = None

    # ------------------------------------------------------------------ table access

    def models(self) -> list[ModelRecord]:
        return [self._records[name] for name in sorted(self._records)]

    def get(self, name: str) -> ModelRecord:
        record = self._records.get(name)
        if record is None:
            raise UnknownModelError(name, sorted(self._records))
        return record

    def override_for(self, name: str) -> ModelOverride:
        return self.settings.override_for(name)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start runtimes, register the repository, re-adopt what is still loaded."""
        for manager in self.managers.values():
            await manager.start()
        repository = self.settings.model_repository
        repository.mkdir(parents=True, exist_ok=True)
        for folder in sorted(p for p in repository.iterdir() if _is_model_folder(p)):
            self._register(folder.name, folder)
        known = {
            r.name: r.path for r in self._records.values() if r.state == ModelState.ANALYZED
        }
        for manager in self.managers.values():
            report = await manager.adopt(known)
            for name in report.adopted:
                await self._mark_adopted(self._records[name], manager.name)
            for name in report.removed:
                self._decide(name, "adopt", "stale-app", f"removed a stale {manager.name} app left by an earlier run")
        self.ready = True
        log.info("orchestrator started", extra={"models": len(self._records)})

    async def load_registered(self) -> None:
        """Load every registered model that is not loaded yet (start-up, best effort)."""
        for record in self.models():
            if record.state in (ModelState.ANALYZED, ModelState.UNLOADED):
                try:
                    await self.ensure_loaded(record.name)
                except Exception as exc:  # noqa: BLE001 - one model must not stop the others
                    log.warning("could not load %s at start-up: %s", record.name, exc)

    async def stop(self) -> None:
        """Unload everything and stop every runtime (and the processes they started)."""
        self.ready = False
        for manager in self.managers.values():
            try:
                await manager.stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping runtime %s failed", manager.name)
        for record in self._records.values():
            if record.state in (ModelState.READY, ModelState.LOADING, ModelState.UNLOADING,
                                ModelState.PARKED):
                self._release(record, ModelState.UNLOADED, "daemon stopped", "shutdown")

    # ------------------------------------------------------------------ drops

    def _register(self, name: str, path: Path) -> ModelRecord:
        record = ModelRecord(name=name, path=path, pinned=self.override_for(name).pinned)
        self._records[name] = record
        try:
            record.profile = self._analyze(path, name)
        except InvalidModelError as exc:
            record.set_state(ModelState.FAILED, f"invalid model folder: {exc}")
            self._decide(name, "analyze", "invalid", record.reason or "")
            return record
        except Exception as exc:  # noqa: BLE001 - unreadable file, permission, ...
            record.set_state(ModelState.FAILED, f"analysis failed: {exc}")
            self._decide(name, "analyze", "error", record.reason or "")
            return record
        record.set_state(ModelState.ANALYZED)
        return record

    async def add_model(self, name: str, repository_path: Path, *, load: bool = True) -> ModelRecord:
        """Register (or replace) a model already filed at ``repository_path`` and load it."""
        record = self._register(name, repository_path)
        if load and record.state == ModelState.ANALYZED:
            try:
                await self.ensure_loaded(name)
            except Exception as exc:  # noqa: BLE001 - state and reason are on the record
                log.warning("model %s not loaded: %s", name, exc)
        return record

    def record_quarantine(self, name: str, reason: str, path: Path) -> None:
        """A drop was rejected; it never enters the table but is listed by GET /status."""
        self.quarantined.append({"time": time.time(), "name": name, "reason": reason,
                                 "path": str(path)})
        self._decide(name, "quarantine", "invalid-drop", reason)

    async def unload_for_replacement(self, name: str) -> None:
        """Unload the current version of ``name`` before a new drop takes its folder."""
        if name in self._records:
            await self.unload(name, reason="replaced by a new drop", reason_code="replaced")

    # ------------------------------------------------------------------ loading

    async def ensure_loaded(self, name: str) -> ModelRecord:
        """Return the model once READY, loading it (once, whoever asks) if needed."""
        record = self.get(name)
        if record.state == ModelState.READY:
            return record
        async with self._locks[name]:
            record = self.get(name)  # may have been replaced while we waited
            if record.state == ModelState.READY:
                return record
            if record.state == ModelState.FAILED or record.profile is None:
                raise ModelFailedError(f"model {name!r} failed: {record.reason}")
            await self._load_locked(record)
            return record

    async def retry(self, name: str) -> ModelRecord:
        """Explicit load request: a FAILED model is re-analyzed and tried again."""
        record = self.get(name)
        if record.state == ModelState.FAILED:
            async with self._locks[name]:
                record = self._register(name, record.path)
        if record.state == ModelState.FAILED:
            raise ModelFailedError(f"model {name!r} failed: {record.reason}")
        return await self.ensure_loaded(name)

    async def _load_locked(self, record: ModelRecord) -> None:
        assert record.profile is not None
        name, profile = record.name, record.profile
        override = self.override_for(name)
        was_parked = record.state == ModelState.PARKED
        record.set_state(ModelState.LOADING)
        choice = choose_runtime(
            profile,
            enabled=self.settings.enabled_runtimes(),
            implemented=tuple(self.managers),
            override=override.runtime,
            vllm_architectures=self.vllm_architectures,
            unavailable=self.unavailable,
        )
        record.runtime, record.runtime_reason = choice.runtime, choice.reason
        self._decide(name, "choose_runtime", choice.reason_code, choice.reason)
        if choice.runtime is None:
            record.set_state(ModelState.FAILED, choice.reason)
            raise ModelFailedError(f"model {name!r} failed: {choice.reason}")

        record.memory, _ = self._estimate(record, choice.runtime, device=None)
        async with self._placement_lock:
            decision = await self._place_with_eviction(record, override)
            if decision.device is None:
                record.set_state(ModelState.UNLOADED, decision.reason)
                raise NoCapacityError(f"model {name!r} cannot be loaded now: {decision.reason}")
            self.ledger.reserve(name, decision.device.id, record.memory.total_bytes)
            self.metrics.set_reserved(self.ledger.by_device())
        record.device, record.placement_reason = decision.device.id, decision.reason
        _, runtime_options = self._estimate(record, choice.runtime, device=_runtime_device(decision.device))

        manager = self.managers[choice.runtime]
        started = time.monotonic()
        if was_parked and await self._wake(record, manager):
            self._finish_load(record, choice.runtime, decision.device.id, time.monotonic() - started)
            return
        try:
            request = LoadRequest(
                name=name,
                model_dir=record.path,
                profile=profile,
                device=_runtime_device(decision.device),
                memory=record.memory,
                options={**_runtime_options(override), **runtime_options},
            )
            async with self._load_slots:  # max_concurrent_loads across all models
                await manager.load(request)
        except Exception as exc:  # noqa: BLE001 - every load failure becomes a reason
            seconds = time.monotonic() - started
            self.metrics.observe_load(name, choice.runtime, seconds, ok=False)
            message = str(exc) if isinstance(exc, RuntimeLoadError) else f"{type(exc).__name__}: {exc}"
            self._release(record, ModelState.FAILED, f"load failed: {message}", None)
            self._decide(name, "load", "error", record.reason or "")
            raise ModelFailedError(f"model {name!r} failed: {record.reason}") from exc
        self._finish_load(record, choice.runtime, decision.device.id, time.monotonic() - started)

    def _finish_load(self, record: ModelRecord, runtime: str, device_id: str, seconds: float) -> None:
        record.load_seconds, record.loaded_at = round(seconds, 3), time.time()
        record.load_count += 1
        record.restart_at = None
        record.endpoint = self.managers[runtime].openai_base_url(record.name)
        record.set_state(ModelState.READY)
        self.metrics.observe_load(record.name, runtime, seconds, ok=True)
        self.metrics.mark_loaded(record.name, runtime, device_id)
        self._decide(record.name, "load", "ok", f"ready on {device_id} via {runtime} in {seconds:.2f}s")

    async def _wake(self, record: ModelRecord, manager: RuntimeManager) -> bool:
        """Wake a parked model; on failure stop it so a normal load can follow."""
        try:
            await manager.wake(record.name)  # type: ignore[attr-defined]
            return True
        except Exception as exc:  # noqa: BLE001 - fall back to a cold start
            log.warning("waking %s failed (%s); restarting it", record.name, exc)
            await manager.unload(record.name)
            return False

    def _estimate(self, record: ModelRecord, runtime: str | None,
                  device: Device | None) -> tuple[MemoryEstimate, dict[str, Any]]:
        assert record.profile is not None
        return size_for_runtime(
            record.profile, runtime, self.settings, self.override_for(record.name),
            device_kind="gpu" if self.inventory.has_gpu else "cpu", device=device,
        )

    async def _place_with_eviction(self, record: ModelRecord, override: ModelOverride) -> PlacementDecision:
        """Place the model; if it fits only after evicting idle models, evict them first."""
        assert record.memory is not None
        required = record.memory.total_bytes
        pinned_device = f"gpu:{override.gpu}" if override.gpu is not None else None
        if record.device is not None and self.ledger.device_of(record.name) is not None:
            pinned_device = record.device  # parked: its server lives on that GPU
        orchestration = self.settings.orchestration
        self.ledger.release(record.name)  # a reload must not count its own old reservation
        decision = self._place(required, pinned_device)
        self._decide(record.name, "place", decision.reason_code, decision.reason)
        if decision.device is not None or decision.reason_code not in ("no-fit", "pinned-no-fit"):
            return decision
        await self._refresh_metric_source()
        for device in self._devices_for(pinned_device):
            candidates = self._eviction_candidates(device.id)
            plan = plan_eviction(
                required,
                device,
                self.ledger.reserved_on(device.id),
                candidates,
                max_utilization=orchestration.max_gpu_memory_utilization,
            )
            if not plan.feasible:
                continue
            by_name = {c.name: c for c in candidates}
            victims = [by_name[v] for v in plan.victims if v in by_name]
            numbers = "; ".join(f"{c.name}: {self._numbers_text(c)}" for c in victims)
            self._decide(record.name, "evict", "make-room", f"{plan.reason} [{numbers}]",
                         numbers={c.name: self._numbers(c) for c in victims})
            parkable = {c.name for c in candidates if c.parked_residue_bytes}
            for victim in plan.victims:
                why = f"evicted to make room for {record.name}"
                if victim in by_name:
                    why += f" ({self._numbers_text(by_name[victim])})"
                if victim in parkable:
                    await self.park(victim, reason=why)
                else:
                    await self.unload(victim, reason=why, reason_code="evicted")
            decision = self._place(required, pinned_device)
            self._decide(record.name, "place", decision.reason_code, decision.reason)
            return decision
        return decision

    def _place(self, required: int, pinned_device: str | None) -> PlacementDecision:
        orchestration = self.settings.orchestration
        return place(
            required,
            self.inventory,
            self.ledger.by_device(),
            max_utilization=orchestration.max_gpu_memory_utilization,
            strategy=orchestration.placement,
            pinned_device=pinned_device,
        )

    def _devices_for(self, pinned_device: str | None):
        if pinned_device is None:
            return self.inventory.devices
        device = self.inventory.get(pinned_device)
        return (device,) if device else ()

    def _eviction_candidates(self, device_id: str | None = None) -> list[EvictionCandidate]:
        candidates = []
        for record in self._records.values():
            if record.state not in (ModelState.READY, ModelState.PARKED) or record.device is None:
                continue
            if device_id is not None and record.device != device_id:
                continue
            reservation = self.ledger.reservations().get(record.name)
            candidates.append(
                EvictionCandidate(
                    name=record.name,
                    device_id=record.device,
                    reserved_bytes=reservation[1] if reservation else 0,
                    idle_seconds=self.metric_source.idle_seconds(record.name),
                    qps=self.metric_source.qps(record.name),
                    pinned=record.pinned or record.name in self.settings.orchestration.always_loaded,
                    busy=self.metrics.in_flight(record.name) > 0,
                    parked_residue_bytes=self._park_residue(record),
                )
            )
        return candidates

    def _park_residue(self, record: ModelRecord) -> int | None:
        """GPU bytes the model would keep if parked instead of stopped, or None when it
        cannot be parked: parking is opt-in (``park``), vLLM-only, GPU-only, and needs
        host RAM for the weights."""
        if record.state != ModelState.READY or record.runtime != "vllm" or record.profile is None:
            return None
        device = self.inventory.get(record.device or "")
        if device is None or device.kind != "gpu" or not hasattr(self.managers.get("vllm"), "park"):
            return None
        if not self.settings.vllm.settings_for(self.override_for(record.name).vllm).park:
            return None
        if psutil.virtual_memory().available < record.profile.weight_bytes * 1.2:
            return None
        from modelium.runtimes.vllm.memory import PARK_RESIDUE_BYTES

        return PARK_RESIDUE_BYTES

    async def park(self, name: str, *, reason: str) -> ModelRecord:
        """Park a READY vLLM model (sleep mode): it keeps only a residue on its GPU and
        wakes in a fraction of a second on its next request. Falls back to unloading."""
        record = self.get(name)
        residue = self._park_residue(record)
        if residue is None:
            return await self.unload(name, reason=reason, reason_code="evicted")
        async with self._locks[name]:
            try:
                seconds = await self.managers["vllm"].park(name)
            except Exception as exc:  # noqa: BLE001 - parking is an optimisation
                log.warning("parking %s failed (%s); unloading it instead", name, exc)
                parked = False
            else:
                parked = True
            if parked:
                assert record.device is not None
                self.ledger.reserve(name, record.device, residue)
                self.metrics.set_reserved(self.ledger.by_device())
                self.metrics.mark_unloaded(name)
                self.metrics.count_unload(name, "vllm", "parked")
                record.set_state(ModelState.PARKED, f"{reason} (parked in {seconds:.1f}s)")
                self._decide(name, "park", "evicted", record.reason or "")
                return record
        return await self.unload(name, reason=reason, reason_code="evicted")

    async def _mark_adopted(self, record: ModelRecord, runtime: str) -> None:
        """A model still loaded from an earlier run: account for it as if we had loaded it."""
        assert record.profile is not None
        record.memory, _ = self._estimate(record, runtime, device=None)
        async with self._placement_lock:
            decision = self._place(record.memory.total_bytes, None)
            device = decision.device or self.inventory.devices[0]
            self.ledger.reserve(record.name, device.id, record.memory.total_bytes)
        record.runtime, record.device = runtime, device.id
        record.runtime_reason = f"adopted: already loaded in {runtime} by an earlier run"
        record.set_state(ModelState.READY)
        self.metrics.mark_loaded(record.name, runtime, device.id)
        self._decide(record.name, "adopt", "adopted", record.runtime_reason)

    # ------------------------------------------------------------------ unloading

    async def unload(self, name: str, *, reason: str = "unloaded on request", reason_code: str = "request") -> ModelRecord:
        record = self.get(name)
        async with self._locks[name]:
            if record.state not in (ModelState.READY, ModelState.LOADING, ModelState.PARKED):
                return record
            record.set_state(ModelState.UNLOADING, reason)
            manager = self.managers.get(record.runtime or "")
            if manager is not None:
                try:
                    await manager.unload(name)
                except Exception as exc:  # noqa: BLE001 - the model is gone from our view anyway
                    log.warning("unloading %s from %s failed: %s", name, record.runtime, exc)
            self._release(record, ModelState.UNLOADED, reason, reason_code)
            self._decide(name, "unload", reason_code, reason)
            return record

    def _release(self, record: ModelRecord, state: ModelState, reason: str, reason_code: str | None) -> None:
        was_loaded = record.state in (ModelState.READY, ModelState.UNLOADING)  # PARKED: already counted
        record.endpoint = None
        self.ledger.release(record.name)
        self.metrics.set_reserved(self.ledger.by_device())
        if was_loaded:
            self.metrics.mark_unloaded(record.name)
            if reason_code is not None:
                self.metrics.count_unload(record.name, record.runtime or "", reason_code)
        record.set_state(state, reason)

    # ------------------------------------------------------------------ serving

    async def predict(self, name: str, inputs: Any, parameters: dict[str, Any]) -> tuple[ModelRecord, Any]:
        """Run one request, loading the model on demand; retries once if the runtime lost it."""
        if not self.ready:
            raise NotReadyError(self.startup_error or "modelium is still starting; retry shortly")
        record = self.get(name)
        if record.state == ModelState.FAILED:
            raise ModelFailedError(f"model {name!r} failed: {record.reason}")
        async with self.in_flight(name):
            for attempt in (1, 2):
                record = await self._loaded_for_request(name)
                manager = self.managers[record.runtime or ""]
                try:
                    return record, await manager.infer(name, inputs, parameters)
                except ModelNotLoadedError:
                    if attempt == 2:
                        raise
                    await self.report_lost(name, "the runtime no longer had it loaded")
            raise AssertionError("unreachable")

    async def openai_target(self, name: str) -> tuple[ModelRecord, str | None]:
        """Load the model if needed; return it with the base URL of its OpenAI server, or
        None when its runtime has none (the gateway then goes through :meth:`predict`)."""
        if not self.ready:
            raise NotReadyError(self.startup_error or "modelium is still starting; retry shortly")
        record = self.get(name)
        if record.state == ModelState.FAILED:
            raise ModelFailedError(f"model {name!r} failed: {record.reason}")
        record = await self._loaded_for_request(name)
        return record, self.managers[record.runtime or ""].openai_base_url(name)

    async def _loaded_for_request(self, name: str) -> ModelRecord:
        """The model, loaded; a request waits at most ``load_wait_timeout_seconds`` for it
        (the load itself goes on for the requests after it). Cold starts are measured."""
        record = self.get(name)
        if record.state == ModelState.READY:
            return record
        timeout = self.settings.orchestration.load_wait_timeout_seconds
        started = time.monotonic()
        load = asyncio.ensure_future(self.ensure_loaded(name))
        load.add_done_callback(_consume_exception)
        try:
            record = await asyncio.wait_for(asyncio.shield(load), timeout)
        except TimeoutError:
            raise LoadTimeoutError(
                f"model {name!r} is still loading after {timeout:.0f}s; retry shortly"
            ) from None
        self.metrics.observe_cold_start(name, record.runtime or "", time.monotonic() - started)
        return record

    @contextlib.asynccontextmanager
    async def in_flight(self, name: str) -> AsyncIterator[None]:
        """Admit one request (at most ``max_concurrent_requests`` at once per model, at most
        ``max_queued_requests`` more waiting, else TooManyRequestsError) and mark the model
        busy meanwhile: busy models are never evicted or idle-unloaded."""
        orchestration = self.settings.orchestration
        gate = self._gates.get(name)
        if gate is None:
            limit = self.override_for(name).max_concurrent_requests or orchestration.max_concurrent_requests
            gate = self._gates[name] = _Gate(limit)
        if gate.semaphore.locked() and gate.waiting >= orchestration.max_queued_requests:
            self.metrics.count_rejected(name)
            raise TooManyRequestsError(
                f"model {name!r} is at its limit of {gate.limit} concurrent requests with "
                f"{gate.waiting} more waiting; retry later"
            )
        self.metrics.request_started(name)
        gate.waiting += 1
        try:
            await gate.semaphore.acquire()
        except BaseException:
            self.metrics.request_finished(name)
            raise
        finally:
            gate.waiting -= 1
        try:
            yield
        finally:
            gate.semaphore.release()
            self.metrics.request_finished(name)

    def set_pinned(self, name: str, pinned: bool) -> ModelRecord:
        """Pin (never evicted or idle-unloaded) or unpin a model at runtime."""
        record = self.get(name)
        record.pinned = pinned
        self._decide(name, "pin" if pinned else "unpin", "request",
                     f"{'pinned' if pinned else 'unpinned'} on request")
        return record

    async def report_lost(self, name: str, why: str) -> None:
        """A caller found the model's server gone: forget it so the next request reloads."""
        await self._forget_lost(self.get(name), why)

    async def _forget_lost(self, record: ModelRecord, why: str) -> None:
        """The runtime lost a READY model (crash): release it and schedule a restart with
        back-off, or fail it when it crashed too often within the restart window."""
        async with self._locks[record.name]:
            if record.state not in (ModelState.READY, ModelState.PARKED):
                return
            policy = self.settings.orchestration
            now = time.monotonic()
            record.crash_times = [t for t in record.crash_times
                                  if now - t < policy.restart_window_seconds] + [now]
            crashes = len(record.crash_times)
            if crashes > policy.max_restarts:
                reason = (f"crashed {crashes} times within {policy.restart_window_seconds:.0f}s; "
                          f"last: {why}")
                self._release(record, ModelState.FAILED, reason, "crashed")
                self._decide(record.name, "fail", "crash-loop", reason)
                return
            delay = min(2.0 ** crashes, MAX_RESTART_BACKOFF_SECONDS)
            record.restart_at = now + delay
            reason = f"{why}; restart {crashes} of {policy.max_restarts} in {delay:.0f}s"
            self._release(record, ModelState.UNLOADED, reason, "crashed")
            self._decide(record.name, "lost", "crash", reason)

    # ------------------------------------------------------------------ control loop

    async def run_control_loop(self) -> None:
        """Reconcile every ``decision_interval_seconds``; one failing step never stops it."""
        interval = self.settings.orchestration.decision_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile()
            except Exception:  # noqa: BLE001 - log and try again next tick
                log.exception("control loop step failed")

    async def reconcile(self) -> None:
        """Compare wanted and actual state once: find crashed models, restart those whose
        back-off has passed, unload idle ones."""
        await self._refresh_metric_source()
        for runtime, manager in self.managers.items():
            live = await manager.loaded_models()
            for record in self.models():
                if record.runtime == runtime and record.state in (ModelState.READY, ModelState.PARKED) \
                        and record.name not in live:
                    why = manager.exit_reason(record.name) or f"{runtime} no longer serves it (crashed or removed)"
                    await self._forget_lost(record, why)
        now = time.monotonic()
        for record in self.models():
            if record.restart_at is not None and now >= record.restart_at:
                record.restart_at = None
                if record.state == ModelState.UNLOADED:
                    self._decide(record.name, "restart", "crash", "restarting after a crash")
                    try:
                        await self.ensure_loaded(record.name)
                    except Exception as exc:  # noqa: BLE001 - reason is on the record
                        log.warning("restart of %s failed: %s", record.name, exc)
        orchestration = self.settings.orchestration
        by_timeout: dict[float, list[EvictionCandidate]] = collections.defaultdict(list)
        all_candidates = self._eviction_candidates()
        by_name = {c.name: c for c in all_candidates}
        for candidate in all_candidates:
            own = self.override_for(candidate.name).auto_unload_after_seconds
            by_timeout[orchestration.auto_unload_after_seconds if own is None else own].append(candidate)
        for idle_after, candidates in by_timeout.items():
            for name, reason in idle_unload_candidates(
                candidates,
                idle_after_seconds=idle_after,
                min_qps=orchestration.min_qps_threshold,
                always_loaded=orchestration.always_loaded,
            ):
                reason = f"{reason} ({self._numbers_text(by_name[name])})"
                self._decide(name, "idle_unload", "idle", reason,
                             numbers=self._numbers(by_name[name]))
                await self.unload(name, reason=reason, reason_code="idle")

    async def _refresh_metric_source(self) -> None:
        """One metrics snapshot per tick; a failing source must never stop the loop."""
        try:
            await self.metric_source.refresh()
        except Exception:  # noqa: BLE001 - sources fall back themselves; belt and braces
            log.exception("refreshing the metric source failed")

    def _numbers(self, candidate: EvictionCandidate) -> dict[str, Any]:
        """The numbers a policy decision about ``candidate`` used, and where they came from."""
        return {"idle_seconds": round(candidate.idle_seconds, 3), "qps": round(candidate.qps, 4),
                "source": self.metric_source.source_of(candidate.name)}

    def _numbers_text(self, candidate: EvictionCandidate) -> str:
        n = self._numbers(candidate)
        return f"idle {n['idle_seconds']:.1f}s, {n['qps']:.3f} qps, from {n['source']}"

    # ------------------------------------------------------------------ bookkeeping

    def _decide(self, model: str, action: str, reason_code: str, reason: str,
                numbers: dict[str, Any] | None = None) -> None:
        """Log, count and remember one decision (listed by GET /decisions); ``numbers``:
        the metrics behind it (idle seconds, QPS, their source), when a policy used any."""
        entry: dict[str, Any] = {"time": time.time(), "model": model, "action": action,
                                 "reason_code": reason_code, "reason": reason}
        if numbers is not None:
            entry["numbers"] = numbers
        self.decisions.append(entry)
        self.metrics.count_decision(action, reason_code)
        log.info("decision %s %s: %s", action, model, reason,
                 extra={"model": model, "action": action, "reason_code": reason_code})


class _Gate:
    """Per-model admission: a concurrency limit and a count of requests waiting for it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.semaphore = asyncio.Semaphore(limit)
        self.waiting = 0


def _consume_exception(task: asyncio.Future) -> None:
    """A shielded load whose waiter timed out still finishes; its error is on the record."""
    if not task.cancelled():
        task.exception()


def _runtime_device(device: Device) -> Device:
    """The device a runtime really runs on: a simulated GPU is planned on as a GPU (ledger,
    placement) but its models run on the CPU."""
    if not device.simulated:
        return device
    return dataclasses.replace(device, kind="cpu", index=None)


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".")


def _runtime_options(override: ModelOverride) -> dict[str, Any]:
    options: dict[str, Any] = {"num_replicas": override.num_replicas}
    if override.task:
        options["task"] = override.task
    return options
