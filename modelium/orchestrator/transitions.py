"""How the scheduler's decisions become state changes, and how actions report back.

A mixin of :class:`~modelium.orchestrator.scheduler.Scheduler`. The first half starts
things (claims turned into loads, drains, unloads); the ``on_*`` half is what
:mod:`.actions` calls when a runtime operation finished: each is synchronous, changes the
table and the ledger together, answers whoever waits (requests, intents, unloads) and
kicks the scheduler again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from modelium.hardware import Device
from modelium.logs import request_id_var
from modelium.orchestrator.errors import LoadTimeoutError, ModelFailedError
from modelium.orchestrator.plans import HOLD_REPLACING, Drain
from modelium.orchestrator.records import (
    LIVE_STATES,
    ModelRecord,
    ModelState,
    Wanted,
    ema,
)

if TYPE_CHECKING:
    from modelium.orchestrator.actions import Actions
    from modelium.orchestrator.context import Context
    from modelium.orchestrator.plans import Claim, Intent

GIB = 1024**3
S = ModelState
MAX_RESTART_BACKOFF_SECONDS = 60.0


class Transitions:
    ctx: Context
    actions: Actions
    intents: dict[str, Intent]
    claims: dict[str, Claim]
    drains: dict[str, Drain]
    retiring: dict[str, tuple[str, str, str]]
    _unload_waiters: dict[str, list[asyncio.Future[ModelRecord]]]
    _unload_after_load: set[str]
    _runtime_load_seconds: dict[str, float]

    # ================================================================ claims and drains

    def _drop_stale_claims(self) -> None:
        """A claim whose model nobody waits for any more is dropped, and the victims that
        were draining only for it go back to serving."""
        for name in [n for n in self.claims if not self._has_demand(n) or n not in self.ctx.table]:
            claim = self.claims.pop(name)
            for victim in claim.victims:
                drain = self.drains.get(victim)
                record = self.ctx.table.find(victim)
                if drain and drain.for_model == name and record is not None and record.state == S.DRAINING:
                    del self.drains[victim]
                    record.draining_since = None
                    self.ctx.table.set_state(record, S.READY, f"kept: {name} no longer needs the room")
                    self.ctx.decide(victim, "keep", "claim-dropped", f"{name} stopped waiting; {victim} keeps serving")
                    self.ctx.admission.pump(victim)

    def _start_claimed(self) -> None:
        for name, claim in sorted(self.claims.items(), key=lambda item: item[1].since):
            record = self.ctx.table.find(name)
            if record is None or record.hold == HOLD_REPLACING or not self._load_slot_free():
                continue
            if self.fits_now(claim.device_id, claim.bytes):
                del self.claims[name]
                device = self.ctx.inventory.get(claim.device_id)
                assert device is not None
                required = self.ctx.planner.required_bytes(record)
                self._start_load(record, device, required, f"room made on {device.id}")

    def _begin_drain(self, record: ModelRecord, drain: Drain) -> None:
        self.drains[record.name] = drain
        record.draining_since = drain.since
        self.ctx.table.set_state(record, S.DRAINING, drain.reason)
        timeout = self.ctx.settings.orchestration.scheduler.drain_timeout_seconds
        self._recheck(timeout)
        if not self.ctx.admission.in_flight(record.name, record.instance):
            self._start_unload(record, drain)

    def _finish_drains(self, now: float) -> None:
        timeout = self.ctx.settings.orchestration.scheduler.drain_timeout_seconds
        for name, drain in list(self.drains.items()):
            record = self.ctx.table.find(name)
            if record is None or record.state != S.DRAINING:
                continue
            busy = self.ctx.admission.in_flight(name, record.instance)
            if busy and now - drain.since < timeout:
                continue
            if busy:
                self.ctx.decide(name, "drain", "timeout", f"{busy} request(s) still running after "
                                f"{timeout:.0f}s; unloading anyway")
            self._start_unload(record, drain)
        for instance, (name, runtime, _) in list(self.retiring.items()):
            if not self.ctx.admission.in_flight(name, instance) and instance not in self.actions.stopping:
                self.actions.stopping.add(instance)
                self.actions.spawn(self.actions.retire(name, instance, runtime), f"retire {instance}")

    def _start_unload(self, record: ModelRecord, drain: Drain) -> None:
        self.drains[record.name] = drain
        park = drain.park_residue is not None and record.state == S.DRAINING
        if record.draining_since is not None:
            self.ctx.metrics.observe_drain(self.ctx.clock() - record.draining_since)
        self.ctx.table.set_state(record, S.UNLOADING, drain.reason)
        self.actions.spawn(self.actions.unload(record, park=park), f"unload {record.name}")

    # ================================================================ loads

    def _start_load(self, record: ModelRecord, device: Device, required: int, why: str) -> None:
        """Reserve, mark LOADING and spawn the load, all under the id of the request that
        caused it (see :meth:`_trigger_id`): the decision's log line, the load task's
        lines and the runtime calls it makes (``X-Request-ID`` to Triton) carry it."""
        token = request_id_var.set(self._trigger_id(record.name))
        try:
            self._start_load_now(record, device, required, why)
        finally:
            request_id_var.reset(token)

    def _trigger_id(self, name: str) -> str | None:
        """The id of the first request in line for ``name`` (best priority, then oldest),
        else of the request behind its intent (a user's load); None for the restore
        plan, a restart after a crash or a pin."""
        waiters = sorted(w for w in self.ctx.admission.waiters(name) if w.request_id)
        if waiters:
            return waiters[0].request_id
        intent = self.intents.get(name)
        return intent.request_id if intent is not None else None

    def _start_load_now(self, record: ModelRecord, device: Device, required: int, why: str) -> None:
        ctx = self.ctx
        wake = record.state == S.PARKED
        ctx.ledger.reserve(record.instance, device.id, required)
        record.reserved_bytes = required
        record.device, record.placement_reason = device.id, why
        record.generation += 1
        record.wanted = Wanted.AUTO
        ctx.metrics.set_reserved(ctx.ledger.by_device())
        ctx.decide(record.name, "wake" if wake else "place", "ok", why)
        ctx.table.set_state(record, S.LOADING, "waking" if wake else f"loading on {device.id}")
        ctx.metrics.activity.begin(device.id, "loading")
        self.actions.spawn(self.actions.load(record, device, wake=wake), f"load {record.name}")

    # ================================================================ completions (sync)

    def on_loaded(self, record: ModelRecord, seconds: float, wake: bool) -> None:
        ctx = self.ctx
        now = ctx.clock()
        if wake:
            record.costs.wake_seconds = ema(record.costs.wake_seconds, seconds)
        else:
            record.costs.load_seconds = ema(record.costs.load_seconds, seconds)
            runtime = record.runtime or ""
            self._runtime_load_seconds[runtime] = ema(self._runtime_load_seconds.get(runtime), seconds)
            record.load_count += 1
        record.loaded_at = now
        record.loaded_at_wall = ctx.metrics.wall_time()
        manager = ctx.managers[record.runtime or ""]
        record.endpoint = manager.openai_base_url(record.instance)
        ctx.table.set_state(record, S.READY)
        ctx.metrics.observe_load(record.name, record.runtime or "", seconds, ok=True)
        ctx.metrics.mark_loaded(record.name, record.runtime or "", record.device or "")
        ctx.decide(record.name, "wake" if wake else "load", "ok",
                   f"ready on {record.device} via {record.runtime} in {seconds:.2f}s")
        ctx.admission.pump(record.name)
        self._resolve_intent(record.name, record)
        if record.name in self._unload_after_load:
            self._unload_after_load.discard(record.name)
            self._begin_drain(record, Drain("request", "unloaded on request", now, None))
        self.kick()

    def on_load_failed(self, record: ModelRecord, message: str, seconds: float) -> None:
        ctx = self.ctx
        self._release(record)
        ctx.metrics.observe_load(record.name, record.runtime or "", seconds, ok=False)
        reason = f"load failed: {message}"
        ctx.table.set_state(record, S.FAILED, reason)
        ctx.decide(record.name, "load", "error", reason)
        self._unload_after_load.discard(record.name)
        if record.hold is None:  # a re-drop's trial rolls back instead of failing its waiters
            self._fail_waiters(record)
        else:
            self._fail_intent(record.name, ModelFailedError(f"model {record.name!r} failed: {reason}"))
        self._resolve_unloads(record)
        self.kick()

    def on_wake_failed(self, record: ModelRecord, message: str) -> None:
        """The wake failed and the action stopped the process: load it cold next."""
        self._release(record)
        reason = f"wake failed ({message}); stopped it, loading it cold"
        self.ctx.table.set_state(record, S.UNLOADED, reason)
        self.ctx.decide(record.name, "wake", "escalated", reason)
        self.kick()

    def on_parked(self, record: ModelRecord, residue: int, seconds: float) -> None:
        ctx = self.ctx
        drain = self.drains.pop(record.name, None)
        record.draining_since = None
        assert record.device is not None
        ctx.ledger.reserve(record.instance, record.device, residue)
        record.reserved_bytes = residue
        ctx.metrics.set_reserved(ctx.ledger.by_device())
        ctx.metrics.mark_unloaded(record.name)
        ctx.metrics.count_unload(record.name, record.runtime or "", "parked")
        reason = f"{drain.reason if drain else 'parked'} (parked in {seconds:.1f}s)"
        ctx.table.set_state(record, S.PARKED, reason)
        ctx.decide(record.name, "park", drain.code if drain else "evicted", reason)
        if self._unload_waiters.get(record.name):  # the user asked to unload it meanwhile
            self._start_unload(record, Drain("request", "unloaded on request", ctx.clock(), None))
        self.kick()

    def on_unloaded(self, record: ModelRecord, seconds: float) -> None:
        ctx = self.ctx
        drain = self.drains.pop(record.name, None)
        record.draining_since = None
        record.costs.unload_seconds = ema(record.costs.unload_seconds, seconds)
        code = drain.code if drain else "request"
        reason = drain.reason if drain else "unloaded"
        self._release(record, count=code)
        if code == "request":
            record.wanted = Wanted.UNLOADED
        ctx.table.set_state(record, S.UNLOADED, reason)
        ctx.decide(record.name, "unload", code, reason)
        self._resolve_unloads(record)
        self.kick()

    def on_retired(self, name: str, instance: str) -> None:
        """An old version of a re-dropped model finished its requests and was stopped."""
        self.retiring.pop(instance, None)
        self.actions.stopping.discard(instance)
        self.ctx.ledger.release(instance)
        self.ctx.metrics.set_reserved(self.ctx.ledger.by_device())
        self.ctx.decide(name, "retire", "replaced", f"old version {instance} stopped")
        self.kick()

    def on_lost(self, record: ModelRecord, why: str) -> None:
        """The runtime lost a live model (its process exited, the runtime says so)."""
        if record.state not in LIVE_STATES:
            return
        ctx = self.ctx
        policy = ctx.settings.orchestration
        now = ctx.clock()
        self.drains.pop(record.name, None)
        record.draining_since = None
        record.crash_times = [t for t in record.crash_times if now - t < policy.restart_window_seconds] + [now]
        crashes = len(record.crash_times)
        self._release(record, count="crashed")
        if crashes > policy.max_restarts:
            reason = f"crashed {crashes} times within {policy.restart_window_seconds:.0f}s; last: {why}"
            ctx.table.set_state(record, S.FAILED, reason)
            ctx.decide(record.name, "fail", "crash-loop", reason)
            self._fail_waiters(record)
        else:
            delay = min(2.0 ** crashes, MAX_RESTART_BACKOFF_SECONDS)
            reason = f"{why}; restart {crashes} of {policy.max_restarts} in {delay:.0f}s"
            ctx.table.set_state(record, S.UNLOADED, reason)
            ctx.decide(record.name, "lost", "crash", reason)
            self.want(record, explicit=True, allow_evict=True, priority=2,
                      wait_seconds=policy.load_wait_timeout_seconds + delay, not_before=now + delay)
        self._resolve_unloads(record)
        self.kick()

    def on_measured(self, record: ModelRecord, device: Device, measured: int) -> None:
        """A real footprint: remembered, and reserved when above the reservation."""
        ctx = self.ctx
        costs = record.costs
        if costs.measured_on != device.id:
            costs.measured_bytes = None
        costs.measured_bytes, costs.measured_on = max(costs.measured_bytes or 0, measured), device.id
        ctx.table.touch(record)
        if device.simulated or record.state not in (S.READY, S.DRAINING) or measured <= record.reserved_bytes:
            return
        ctx.decide(record.name, "reserve", "measured",
                   f"measured {measured / GIB:.2f} GiB > reserved {record.reserved_bytes / GIB:.2f} GiB "
                   f"on {device.id}: reserving what it really takes")
        ctx.ledger.reserve(record.instance, device.id, measured)
        record.reserved_bytes = measured
        ctx.metrics.set_reserved(ctx.ledger.by_device())
        self.kick()

    # ================================================================ helpers

    def _release(self, record: ModelRecord, count: str | None = None) -> None:
        ctx = self.ctx
        was_loaded = record.state in (S.READY, S.DRAINING, S.UNLOADING)
        ctx.ledger.release(record.instance)
        record.reserved_bytes = 0
        record.endpoint = None
        ctx.metrics.set_reserved(ctx.ledger.by_device())
        if was_loaded:
            ctx.metrics.mark_unloaded(record.name)
            if count is not None:
                ctx.metrics.count_unload(record.name, record.runtime or "", count)

    def _fail(self, record: ModelRecord, reason: str) -> None:
        self.ctx.table.set_state(record, S.FAILED, reason)
        self.ctx.decide(record.name, "fail", "cannot-serve", reason)
        self._fail_waiters(record)

    def _fail_waiters(self, record: ModelRecord) -> None:
        error = ModelFailedError(f"model {record.name!r} failed: {record.reason}")
        self.ctx.admission.fail(record.name, error)
        self._fail_intent(record.name, error)

    def _fail_intent(self, name: str, error: Exception) -> None:
        intent = self.intents.pop(name, None)
        for future in intent.futures if intent else ():
            if not future.done():
                future.set_exception(error)

    def _drop_intent(self, name: str, why: str) -> None:
        intent = self.intents.pop(name, None)
        self.ctx.decide(name, "restore", "skipped", why)
        for future in intent.futures if intent else ():
            if not future.done():
                future.set_exception(LoadTimeoutError(why))

    def _resolve_intent(self, name: str, record: ModelRecord) -> None:
        intent = self.intents.pop(name, None)
        for future in intent.futures if intent else ():
            if not future.done():
                future.set_result(record)

    def _resolve_unloads(self, record: ModelRecord) -> None:
        for future in self._unload_waiters.pop(record.name, []):
            if not future.done():
                future.set_result(record)
