"""Putting models in the table: analysing folders, restoring what was persisted, adopting
runtime instances that still serve, and the start-up plan.

At start every folder of ``repository/`` is registered. A folder whose signature (sizes
and mtimes of its files) matches the persisted row keeps its profile (no re-analysis) and
its state: failed stays failed with its reason, what the user unloaded stays unloaded.
Then the restore plan asks the scheduler, in this order, for: pinned and always-loaded
models (may evict), what was resident before the restart (most used first), and models
never seen before (those two only into free room); everything else stays unloaded until
a request comes. Loads run ``max_concurrent_loads`` at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelium.analysis import InvalidModelError, ModelProfile
from modelium.brain import place
from modelium.orchestrator.admission import Priority
from modelium.orchestrator.context import Context
from modelium.orchestrator.records import (
    RESIDENT_STATES,
    ModelRecord,
    ModelState,
    Wanted,
)
from modelium.orchestrator.scheduler import Scheduler
from modelium.orchestrator.store import (
    StateStore,
    cached_profile,
    restore_into,
    was_failed,
)
from modelium.orchestrator.trust import dropped_code
from modelium.runtimes.ray_serve.signature import folder_signature

log = logging.getLogger(__name__)

S = ModelState
Rows = dict[str, dict[str, Any]]


class Registrar:
    def __init__(self, ctx: Context, scheduler: Scheduler, store: StateStore,
                 analyze: Callable[[Path, str], ModelProfile]) -> None:
        self.ctx = ctx
        self.scheduler = scheduler
        self.store = store
        self._analyze = analyze
        self._flushed: dict[str, int] = {}
        self.analysed = 0  # folders analysed (not taken from the store) since start
        self.from_store = 0

    # --------------------------------------------------------------- registering

    async def register_repository(self) -> Rows:
        """Register every folder of the repository; returns the persisted rows."""
        rows = self.store.load()
        repository = self.ctx.settings.model_repository
        repository.mkdir(parents=True, exist_ok=True)
        for folder in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
            await self.register(folder.name, folder, row=rows.get(folder.name))
        for name in set(rows) - {r.name for r in self.ctx.table}:
            self.store.delete(name)  # its folder is gone
        return rows

    async def register(self, name: str, path: Path, *, profile: ModelProfile | None = None,
                       row: dict[str, Any] | None = None, keep_state: bool = False) -> ModelRecord:
        """Register (or re-register a model that is not resident) from its folder.
        ``keep_state``: keep the current record's pins, wants and learnt costs (a retry)."""
        ctx = self.ctx
        existing = ctx.table.find(name)
        if existing is not None and existing.state in RESIDENT_STATES:
            raise RuntimeError(f"{name} is {existing.state.value}; re-drops go through replacement")
        record = ModelRecord(name=name, path=Path(path), pinned=ctx.planner.override(name).pinned)
        if existing is not None and keep_state:
            record.pinned, record.wanted, record.costs = existing.pinned, existing.wanted, existing.costs
            record.usage, record.revision, record.load_count = existing.usage, existing.revision, existing.load_count
        elif row is not None:
            restore_into(record, row)
            record.pinned = record.pinned or ctx.planner.override(name).pinned
        try:
            signature: str | None = await asyncio.to_thread(folder_signature, path)
        except OSError:
            signature = None
        cached = cached_profile(row, signature) if (row and signature and not keep_state) else None
        ctx.table.put(record)
        if profile is None and cached is not None:
            profile = cached
            self.from_store += 1
        if profile is None:
            self.analysed += 1
            try:
                profile = await asyncio.to_thread(self._analyze, Path(path), name)
            except InvalidModelError as exc:
                self._failed(record, f"invalid model folder: {exc}", "invalid")
                return record
            except Exception as exc:  # noqa: BLE001 - unreadable file, permission, ...
                self._failed(record, f"analysis failed: {type(exc).__name__}: {exc}", "error")
                return record
        self.store.set_signature(name, signature)
        record.profile = profile
        record.runs_dropped_code = await asyncio.to_thread(dropped_code, Path(path))
        ctx.table.set_state(record, S.ANALYZED)
        failed = was_failed(row) if cached is not None else None
        if failed:
            ctx.table.set_state(record, S.FAILED, failed)
        elif row is not None and not row.get("resident") and not keep_state:
            ctx.table.set_state(record, S.UNLOADED, row.get("reason") or "not loaded before the restart")
        return record

    def _failed(self, record: ModelRecord, reason: str, code: str) -> None:
        self.ctx.table.set_state(record, S.FAILED, reason)
        self.ctx.decide(record.name, "analyze", code, reason)

    # --------------------------------------------------------------- adoption

    async def adopt(self) -> None:
        """Instances an earlier run left serving (an external Ray cluster or Triton) are
        kept when their folder still matches; stale ones are removed by the managers."""
        ctx = self.ctx
        by_instance = {r.instance: r for r in ctx.table if r.state in (S.ANALYZED, S.UNLOADED)}
        known = {instance: r.path for instance, r in by_instance.items()}
        for manager in ctx.managers.values():
            report = await manager.adopt(known)
            for instance in report.adopted:
                if instance in by_instance:
                    self._mark_adopted(by_instance[instance], manager.name)
            for instance in report.removed:
                ctx.decide(instance, "adopt", "stale-app",
                           f"removed a stale {manager.name} app left by an earlier run")

    def _mark_adopted(self, record: ModelRecord, runtime: str) -> None:
        ctx = self.ctx
        ctx.planner.choose(record)
        record.runtime = runtime
        record.runtime_reason = f"adopted: already loaded in {runtime} by an earlier run"
        required = ctx.planner.required_bytes(record)
        device = ctx.inventory.get(record.device or "")
        if device is None:
            decision = place(required, ctx.inventory, ctx.ledger.by_device(),
                             max_utilization=ctx.settings.orchestration.max_gpu_memory_utilization)
            device = decision.device or ctx.inventory.devices[0]
        ctx.ledger.reserve(record.instance, device.id, required)
        record.reserved_bytes, record.device = required, device.id
        record.generation += 1
        record.loaded_at = ctx.clock()
        ctx.table.set_state(record, S.LOADING, "adopting")
        ctx.table.set_state(record, S.READY)
        record.endpoint = ctx.managers[runtime].openai_base_url(record.instance)
        ctx.metrics.mark_loaded(record.name, runtime, device.id)
        ctx.metrics.set_reserved(ctx.ledger.by_device())
        ctx.decide(record.name, "adopt", "adopted", f"adopted: still loaded in {runtime} from an earlier run")

    # --------------------------------------------------------------- restore plan

    def restore(self, rows: Rows) -> None:
        """Ask for what the user had; see the module doc."""
        ctx = self.ctx
        always = set(ctx.settings.orchestration.always_loaded)
        pinned, resident, fresh = [], [], []
        for record in ctx.table:
            if record.state not in (S.ANALYZED, S.UNLOADED):
                continue
            row = rows.get(record.name)
            if record.pinned or record.name in always:
                pinned.append(record)
            elif row is None:
                fresh.append(record)
            elif row.get("resident") and record.wanted == Wanted.AUTO:
                resident.append(record)
        resident.sort(key=lambda r: -r.usage.requests)
        start = ctx.clock()
        plan = [(r, True, Priority.HIGH) for r in pinned] + [(r, False, Priority.NORMAL) for r in resident] \
            + [(r, False, Priority.LOW) for r in fresh]
        for index, (record, may_evict, priority) in enumerate(plan):
            future = self.scheduler.want(record, explicit=may_evict, allow_evict=may_evict, priority=priority,
                                         wait_seconds=math.inf, since=start + index * 1e-6)
            future.add_done_callback(_quiet)
        ctx.decide("*", "restore", "plan",
                   f"{len(ctx.table)} model(s) registered ({self.from_store} from the store, "
                   f"{self.analysed} analysed); loading {len(pinned)} pinned, {len(resident)} previously "
                   f"loaded (most used first) and {len(fresh)} new")

    def flush_usage(self) -> None:
        """Persist request counters that changed since the last flush."""
        for record in self.ctx.table:
            if self._flushed.get(record.name) != record.usage.requests:
                self._flushed[record.name] = record.usage.requests
                self.store.save(record)


def _quiet(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
