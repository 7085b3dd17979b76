"""The scheduler's hands: coroutines that call the runtimes and report back.

Each action awaits exactly one runtime operation (load, wake, park, unload) and then hands
the outcome to the scheduler's synchronous ``on_*`` method, which changes the table; an
action never decides anything. A failed wake or park escalates to the next tier here
(stop the process), so no process and no reservation is ever left behind. Actions run as
tasks kept in ``tasks`` so shutdown can cancel them and tests can wait for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from modelium.hardware import Device
from modelium.orchestrator.context import Context
from modelium.orchestrator.records import ModelRecord, ModelState
from modelium.runtimes.base import RuntimeLoadError

if TYPE_CHECKING:
    from modelium.orchestrator.scheduler import Scheduler

log = logging.getLogger(__name__)


class Actions:
    def __init__(self, ctx: Context, scheduler: Scheduler) -> None:
        self.ctx = ctx
        self.scheduler = scheduler
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stopping: set[str] = set()  # instances an action is stopping

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("scheduler action %s failed", task.get_name(), exc_info=task.exception())

    async def idle(self) -> None:
        """Wait until no action is running (tests, the simulator)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    # --------------------------------------------------------------- load / wake

    async def load(self, record: ModelRecord, device: Device, *, wake: bool) -> None:
        ctx = self.ctx
        manager = ctx.managers[record.runtime or ""]
        instance, generation = record.instance, record.generation
        started = ctx.clock()
        try:
            if wake:
                await manager.wake(instance)
            else:
                await manager.load(ctx.planner.load_request(record, device))
        except asyncio.CancelledError:
            ctx.metrics.activity.end(device.id, "loading")
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes the model's reason
            ctx.metrics.activity.end(device.id, "loading")
            message = str(exc) if isinstance(exc, RuntimeLoadError) else f"{type(exc).__name__}: {exc}"
            if self._stale(record, generation):
                return
            if wake:
                log.warning("waking %s failed (%s); stopping it", instance, message)
                await self._stop_quietly(manager, instance)
                self.scheduler.on_wake_failed(record, message)
            else:
                self.scheduler.on_load_failed(record, message, ctx.clock() - started)
            return
        ctx.metrics.activity.end(device.id, "loading")
        if self._stale(record, generation):
            log.warning("%s finished loading after it was given up; stopping it", instance)
            await self._stop_quietly(manager, instance)
            return
        self.scheduler.on_loaded(record, ctx.clock() - started, wake)
        await self.measure(record, device)

    def _stale(self, record: ModelRecord, generation: int) -> bool:
        """The record moved on while the runtime worked (replaced, shut down)."""
        return (self.ctx.table.find(record.name) is not record or record.generation != generation
                or record.state != ModelState.LOADING)

    async def measure(self, record: ModelRecord, device: Device) -> None:
        """Measure the real footprint of the model's processes (a thread: psutil, NVML)."""
        manager = self.ctx.managers.get(record.runtime or "")
        if manager is None:
            return
        try:
            pids = await manager.process_ids(record.instance)
            if not pids:
                return
            from modelium.hardware.footprint import measure_footprint

            measured = await asyncio.to_thread(measure_footprint, pids, device)
        except Exception as exc:  # noqa: BLE001 - a measurement is never worth a failure
            log.debug("measuring %s failed: %s", record.instance, exc)
            return
        if measured:
            self.scheduler.on_measured(record, device, int(measured))

    # --------------------------------------------------------------- park / stop

    async def unload(self, record: ModelRecord, *, park: bool) -> None:
        ctx = self.ctx
        manager = ctx.managers.get(record.runtime or "")
        instance = record.instance
        started = ctx.clock()
        self.stopping.add(instance)
        try:
            if park and manager is not None:
                residue = manager.park_residue_bytes(instance)
                try:
                    if residue is None:
                        raise RuntimeError("the runtime can no longer park it")
                    seconds = await manager.park(instance)
                except Exception as exc:  # noqa: BLE001 - escalate: stop it instead
                    log.warning("parking %s failed (%s); stopping it", instance, exc)
                    ctx.decide(record.name, "park", "escalated", f"parking failed ({exc}); stopping it")
                else:
                    self.scheduler.on_parked(record, residue, seconds)
                    return
            if manager is not None:
                await self._stop_quietly(manager, instance)
            self.scheduler.on_unloaded(record, ctx.clock() - started)
        finally:
            self.stopping.discard(instance)

    async def retire(self, name: str, instance: str, runtime: str) -> None:
        """Stop an old version of a re-dropped model (its requests have finished)."""
        manager = self.ctx.managers.get(runtime)
        if manager is not None:
            await self._stop_quietly(manager, instance)
        self.scheduler.on_retired(name, instance)

    @staticmethod
    async def _stop_quietly(manager: Any, instance: str) -> None:
        try:
            await manager.unload(instance)
        except Exception as exc:  # noqa: BLE001 - gone from our view either way
            log.warning("unloading %s from %s failed: %s", instance, manager.name, exc)
