"""Atomic re-drops: a new folder under an existing name replaces the model without failing
a request, and a new version that cannot load never replaces a good one.

The new version is staged in a hidden folder of the repository. Then:

* **Side by side** (the model is serving and the new version fits next to it without
  evicting anything): the new version is loaded as its own runtime instance
  (``NAME.REVn``); once it is ready, new requests go to it at once, and the old instance
  *retires*: it finishes its in-flight requests, then it is stopped and its memory freed.
* **Through a swap** (no room beside it, or the model is not serving): the old version
  drains (new requests wait in its queue, in-flight ones finish) and is unloaded; the
  record switches to the new version and loads it; the waiting requests are then served by
  the new version.

If the new version fails to load, the staged folder is quarantined with the runtime's
reason, and the old version stays (side by side) or is restored and loaded again (swap),
so waiting requests are served by it. Only then is ``repository/NAME`` replaced, so what
is on disk is always what serves. One re-drop per model at a time (a per-model lock that
only replacements take: the scheduler never waits on it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from pathlib import Path

from modelium.analysis import ModelProfile
from modelium.brain import place
from modelium.discovery import commit_staged, quarantine
from modelium.orchestrator.context import Context
from modelium.orchestrator.plans import HOLD_REPLACING, HOLD_TRIAL
from modelium.orchestrator.records import (
    RESIDENT_STATES,
    Costs,
    ModelRecord,
    ModelState,
)
from modelium.orchestrator.registration import Registrar
from modelium.orchestrator.scheduler import Scheduler
from modelium.orchestrator.trust import dropped_code
from modelium.runtimes.ray_serve.signature import folder_signature

log = logging.getLogger(__name__)

S = ModelState


class Replacer:
    def __init__(self, ctx: Context, scheduler: Scheduler, registrar: Registrar) -> None:
        self.ctx = ctx
        self.scheduler = scheduler
        self.registrar = registrar
        self.tasks: set[asyncio.Task[None]] = set()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def start(self, name: str, staged: Path, profile: ModelProfile) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._replace(name, staged, profile),
                                                      name=f"re-drop {name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _replace(self, name: str, staged: Path, profile: ModelProfile) -> None:
        async with self._locks[name]:
            try:
                record = self.ctx.table.get(name)
                if record.state == S.READY and await self._side_by_side(record, staged, profile):
                    return
                await self._through_swap(self.ctx.table.get(name), staged, profile)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never lose the drop silently
                log.exception("re-drop of %s failed", name)
                await self._reject(name, staged, f"the re-drop could not be carried out: {exc}")

    # --------------------------------------------------------------- side by side

    async def _side_by_side(self, record: ModelRecord, staged: Path, profile: ModelProfile) -> bool:
        """True when handled here (swapped in, or rejected); False: use a swap."""
        ctx = self.ctx
        new = ModelRecord(name=record.name, path=staged, profile=profile, revision=record.revision + 1,
                          pinned=record.pinned)
        choice = ctx.planner.choose(new)
        if choice.runtime is None:
            await self._reject(record.name, staged, choice.reason)
            return True
        required = ctx.planner.required_bytes(new)
        decision = place(required, ctx.inventory, self.scheduler.committed(),
                         max_utilization=ctx.settings.orchestration.max_gpu_memory_utilization,
                         strategy=ctx.settings.orchestration.placement,
                         pinned_device=ctx.planner.pinned_device(new))
        if decision.device is None or not self.scheduler.fits_now(decision.device.id, required):
            return False
        device = decision.device
        ctx.ledger.reserve(new.instance, device.id, required)
        ctx.metrics.set_reserved(ctx.ledger.by_device())
        record.hold = HOLD_REPLACING  # the old version is not evicted meanwhile
        ctx.decide(record.name, "redrop", "side-by-side",
                   f"loading revision {new.revision} as {new.instance} on {device.id} beside the serving one")
        manager = ctx.managers[choice.runtime]
        started = ctx.clock()
        ctx.metrics.activity.begin(device.id, "loading")
        try:
            await manager.load(ctx.planner.load_request(new, device))
        except Exception as exc:  # noqa: BLE001 - the runtime's reason goes to the quarantine
            ctx.ledger.release(new.instance)
            ctx.metrics.set_reserved(ctx.ledger.by_device())
            record.hold = None
            await self._reject(record.name, staged, f"the new version failed to load: {exc}; "
                                                    "the old version keeps serving")
            self.scheduler.kick()
            return True
        finally:
            ctx.metrics.activity.end(device.id, "loading")
        seconds = ctx.clock() - started
        record.hold = None
        if ctx.table.find(record.name) is not record or record.state != S.READY:
            await manager.unload(new.instance)  # the old one went away meanwhile: swap instead
            ctx.ledger.release(new.instance)
            return False
        self.scheduler.retiring[record.instance] = (record.name, record.runtime or "", record.device or "")
        record.revision, record.path, record.profile, record.memory = new.revision, staged, profile, new.memory
        record.runs_dropped_code = await asyncio.to_thread(dropped_code, staged)
        record.runtime, record.runtime_reason = new.runtime, new.runtime_reason
        record.device, record.reserved_bytes = device.id, required
        record.costs = Costs(load_seconds=seconds, service_seconds=record.costs.service_seconds)
        record.generation += 1
        record.load_count += 1
        record.loaded_at = ctx.clock()
        record.endpoint = manager.openai_base_url(new.instance)
        ctx.metrics.mark_loaded(record.name, record.runtime or "", device.id)
        ctx.table.touch(record)
        ctx.admission.pump(record.name)  # requests go to the new version from now on
        ctx.decide(record.name, "redrop", "swapped",
                   f"revision {record.revision} serves (loaded in {seconds:.2f}s); the old one retires")
        self.scheduler.kick()
        await self._commit(record, staged)
        return True

    # --------------------------------------------------------------- through a swap

    async def _through_swap(self, record: ModelRecord, staged: Path, profile: ModelProfile) -> None:
        ctx = self.ctx
        old = (record.path, record.profile, record.revision, record.costs, record.state, record.reason)
        record.hold = HOLD_REPLACING  # requests wait; the old version is not loaded again
        if record.state in RESIDENT_STATES:
            ctx.decide(record.name, "redrop", "swap", "no room beside the serving version: swapping")
            await self.scheduler.request_unload(record, "replaced by a new drop", "replaced")
        old_code = record.runs_dropped_code
        record.path, record.profile, record.revision = staged, profile, record.revision + 1
        record.runs_dropped_code = await asyncio.to_thread(dropped_code, staged)
        record.costs = Costs(load_seconds=record.costs.load_seconds)
        record.hold = HOLD_TRIAL
        ctx.table.set_state(record, S.ANALYZED, f"new version (revision {record.revision}) loading")
        try:
            await self.scheduler.want(record, explicit=True, allow_evict=True)
        except Exception as exc:  # noqa: BLE001 - roll back below
            reason = record.reason or str(exc)
        else:
            record.hold = None
            ctx.decide(record.name, "redrop", "swapped", f"revision {record.revision} serves")
            await self._commit(record, staged)
            return
        # Restore before any await, so no decision ever sees the failed new version.
        record.hold = None
        record.path, record.profile, record.revision, record.costs = old[0], old[1], old[2], old[3]
        record.runs_dropped_code = old_code
        if old[4] == S.FAILED:
            ctx.table.set_state(record, S.FAILED, old[5])
        else:
            ctx.table.set_state(record, S.UNLOADED, f"restored after a failed re-drop: {reason}")
            if old[4] in RESIDENT_STATES or ctx.admission.queued(record.name):
                self.scheduler.want(record, explicit=True, allow_evict=True).add_done_callback(_quiet)
        self.scheduler.kick()
        await self._reject(record.name, staged, f"the new version failed to load: {reason}; "
                                                "the previous version was restored")

    # --------------------------------------------------------------- helpers

    async def _commit(self, record: ModelRecord, staged: Path) -> None:
        repository = self.ctx.settings.model_repository
        final = await asyncio.to_thread(commit_staged, staged, repository, record.name)
        record.path = final
        try:
            self.registrar.store.set_signature(record.name, await asyncio.to_thread(folder_signature, final))
        except OSError:
            pass
        self.ctx.table.touch(record)

    async def _reject(self, name: str, staged: Path, reason: str) -> None:
        ctx = self.ctx
        ctx.decide(name, "redrop", "rejected", reason)
        if staged.exists():
            target = await asyncio.to_thread(quarantine, staged, ctx.settings.failed_dir, name, reason)
            ctx.metrics.count_drop("quarantined", "load-failed")
            log.warning("re-drop of %s quarantined at %s: %s", name, target, reason)


def _quiet(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
