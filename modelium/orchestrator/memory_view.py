"""What the scheduler's decisions read: loaded models as the brain sees them, and memory
per device *in use now* versus *committed* (see :mod:`.scheduler`).

A mixin of :class:`~modelium.orchestrator.scheduler.Scheduler`: it reads the scheduler's
context, drains, claims and retiring instances, and changes nothing.
"""

from __future__ import annotations

import math

from modelium.brain import Resident, usable_bytes
from modelium.orchestrator.context import Context
from modelium.orchestrator.plans import Claim, Drain
from modelium.orchestrator.records import ModelRecord, ModelState
from modelium.runtimes.base import Capability

S = ModelState
#: Parked -> ready before the first measurement, as a share of a cold load (vLLM sleep
#: mode woke in 0.11 s against a 71-135 s cold start on an H100).
ASSUMED_WAKE_SHARE = 0.1


class MemoryViews:
    ctx: Context
    drains: dict[str, Drain]
    claims: dict[str, Claim]
    retiring: dict[str, tuple[str, str, str]]
    host_park_budget: int
    _runtime_load_seconds: dict[str, float]

    def residents(self, now: float) -> list[Resident]:
        """Loaded and parked models that could give up memory (not loading, not going)."""
        ctx = self.ctx
        always = set(ctx.settings.orchestration.always_loaded)
        out = []
        for record in ctx.table.in_states(S.READY, S.PARKED):
            if record.device is None or record.hold is not None:
                continue
            residue = self.park_residue(record) if record.state == S.READY else None
            reserved = record.reserved_bytes
            out.append(Resident(
                name=record.name, device_id=record.device, reserved_bytes=reserved,
                freed_bytes=reserved - residue if residue is not None else reserved,
                pinned=record.pinned or record.name in always,
                in_flight=ctx.admission.in_flight(record.name),
                queued=ctx.admission.queued(record.name),
                rate=self.rate_of(record, now),
                reload_seconds=self.reload_seconds(record),
                # From ready, not from its first admitted request: waiters handed a slot at
                # ready resume only after the scheduler's next decision, and a window
                # counted from them let an urgent swap evict the model before it served.
                resident_seconds=now - record.loaded_at if record.loaded_at is not None else math.inf,
                idle_seconds=ctx.metric_source.idle_seconds(record.name),
                last_used=record.usage.last_used if record.usage.last_used is not None else -math.inf,
                loaded_at=record.loaded_at if record.loaded_at is not None else now,
                parked=record.state == S.PARKED,
            ))
        return out

    def rate_of(self, record: ModelRecord, now: float) -> float:
        """Requests per second: this gateway's aged rate, or the metric source's (every
        gateway, over its QPS window) when that is higher."""
        half_life = self.ctx.settings.orchestration.scheduler.rate_half_life_seconds
        return max(record.usage.rate(now, half_life), self.ctx.metric_source.qps(record.name))

    def park_residue(self, record: ModelRecord) -> int | None:
        """Bytes ``record`` would keep if parked instead of stopped, or None: its runtime
        must declare PARK and accept this model, the parked weights must fit the host-RAM
        budget, and waking (measured) must be cheaper than a reload."""
        manager = self.ctx.managers.get(record.runtime or "")
        if manager is None or Capability.PARK not in manager.capabilities or record.profile is None:
            return None
        residue = manager.park_residue_bytes(record.instance)
        if residue is None:
            return None
        parked = sum(r.profile.weight_bytes for r in self.ctx.table.in_states(S.PARKED) if r.profile)
        if parked + record.profile.weight_bytes > self.host_park_budget:
            return None
        reload = self.reload_seconds(record)
        wake = record.costs.wake_seconds if record.costs.wake_seconds is not None else ASSUMED_WAKE_SHARE * reload
        return residue if wake < reload else None

    def reload_seconds(self, record: ModelRecord) -> float:
        default = self._runtime_load_seconds.get(record.runtime or "",
                                                 self.ctx.settings.orchestration.scheduler.default_load_seconds)
        return record.reload_seconds(default)

    def _service_seconds(self, name: str) -> float:
        return self.ctx.table.get(name).costs.service_seconds or 1.0

    def _max_util(self) -> float:
        return self.ctx.settings.orchestration.max_gpu_memory_utilization

    def _usable(self) -> dict[str, int]:
        return {d.id: usable_bytes(d, self._max_util()) for d in self.ctx.inventory.devices}

    def committed(self) -> dict[str, int]:
        """Per device: reserved now, less what drains will free, plus promised room."""
        ctx = self.ctx
        committed = dict(ctx.ledger.by_device())
        for name, drain in self.drains.items():
            record = ctx.table.find(name)
            if record is None or record.device is None:
                continue
            kept = drain.park_residue or 0
            committed[record.device] = committed.get(record.device, 0) - (record.reserved_bytes - kept)
        for instance, (_, _, device) in self.retiring.items():
            committed[device] = committed.get(device, 0) - ctx.ledger.bytes_of(instance)
        for claim in self.claims.values():
            committed[claim.device_id] = committed.get(claim.device_id, 0) + claim.bytes
        return committed

    def fits_now(self, device_id: str, need: int) -> bool:
        return self._usable()[device_id] - self.ctx.ledger.reserved_on(device_id) >= need

    def _load_slot_free(self) -> bool:
        loading = len(self.ctx.table.in_states(S.LOADING))
        return loading < self.ctx.settings.orchestration.max_concurrent_loads

    def _allow_evict(self, name: str) -> bool:
        intent = self.intents.get(name)
        return self.ctx.admission.queued(name) > 0 or (intent is not None and intent.allow_evict)

    def _has_demand(self, name: str) -> bool:
        return self.ctx.admission.queued(name) > 0 or name in self.intents
