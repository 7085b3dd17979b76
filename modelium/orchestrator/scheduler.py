"""The scheduler: who gets memory next, decided in one place, without locks.

Everything that wants a model resident is *demand*: requests queued in admission, and
intents (a user's load, a restart after a crash, the restore plan at start-up). Every
change that could matter (a request queued for a model that is not serving, a slot freed
on a draining model, a load or unload finished, a timer) calls :meth:`Scheduler.kick`,
which runs :meth:`_decide` once on the next loop iteration. ``_decide`` is synchronous:
it reads the table, the ledger and the queues, decides, changes states and starts actions
(loads, drains, unloads) as tasks whose completions come back through the ``on_*``
methods, which kick again. Nothing awaits while deciding, so nothing can change under a
decision and no lock can be taken in the wrong order (the deadlock of review finding 1
cannot be written).

Memory is counted two ways per device: *in use now* (the ledger: every instance that
holds memory, including the ones draining or unloading) and *committed* (in use, less
what draining models will free, plus room promised to models waiting for it: claims).
A model is planned against committed and loaded once it fits in use now: so the room a
drain frees goes to the model it was drained for, and nothing is over-committed.

Queue, drain, swap: when a waiting model does not fit, the brain picks victims by
expected cost and the swap rule says whether the waiting demand already outweighs what
the swap costs (:mod:`modelium.brain.victims`). Victims are marked DRAINING: their new
requests queue, their in-flight requests finish; then they are parked or stopped and the
waiting model loads into the room.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from collections import defaultdict
from typing import Any

from modelium.brain import (
    Demand,
    RoomPlan,
    blocked_reason,
    idle_unload_candidates,
    place,
    plan_room,
    reachable_slack,
    swap_verdict,
)
from modelium.logs import current_request_id
from modelium.orchestrator.actions import Actions
from modelium.orchestrator.context import Context
from modelium.orchestrator.errors import LoadTimeoutError
from modelium.orchestrator.memory_view import MemoryViews
from modelium.orchestrator.plans import HOLD_REPLACING, Claim, Drain, Intent
from modelium.orchestrator.records import ModelRecord, ModelState
from modelium.orchestrator.transitions import Transitions

log = logging.getLogger(__name__)

GIB = 1024**3
S = ModelState


class Scheduler(MemoryViews, Transitions):
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.actions = Actions(ctx, self)
        self.intents: dict[str, Intent] = {}
        self.claims: dict[str, Claim] = {}
        self.drains: dict[str, Drain] = {}
        self.retiring: dict[str, tuple[str, str, str]] = {}  # instance -> (name, runtime, device)
        self._unload_waiters: dict[str, list[asyncio.Future[ModelRecord]]] = defaultdict(list)
        self._unload_after_load: set[str] = set()
        self._kicked = False
        self._timer: asyncio.TimerHandle | None = None
        self._blocked: dict[str, str] = {}  # why a waiting model is not placed yet (logged once)
        self._runtime_load_seconds: dict[str, float] = {}
        self.enabled = True
        sched = ctx.settings.orchestration.scheduler
        self.policy = sched.policy
        self.host_park_budget = 0

    # ================================================================ entry points

    def kick(self) -> None:
        """Decide again soon (once per loop iteration, however many kicks)."""
        if self._kicked or not self.enabled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a lease released after the loop stopped (shutdown)
            return
        self._kicked = True
        # A fresh context: call_soon would copy the kicker's, and every load decided in
        # this pass would log under the id of whichever request happened to kick first.
        # A load carries the id of the request that caused it instead (_start_load).
        loop.call_soon(self._decide, context=contextvars.Context())

    def on_queue_change(self, name: str) -> None:
        """Admission's callback: only a queue for a model that is not serving, or a slot
        freed on a model that is going away, can change a decision."""
        record = self.ctx.table.find(name)
        if record is None or record.state != S.READY or self.retiring:
            self.kick()

    def want(self, record: ModelRecord, *, explicit: bool, allow_evict: bool, priority: int = 1,
             wait_seconds: float | None = None, not_before: float = 0.0,
             since: float | None = None) -> asyncio.Future[ModelRecord]:
        """Ask for ``record`` to be resident; the future resolves once it is READY (or
        fails). Several intents for one model merge into the most demanding one.
        ``since`` orders intents of one priority (default: now)."""
        now = self.ctx.clock()
        wait = self.ctx.settings.orchestration.load_wait_timeout_seconds if wait_seconds is None else wait_seconds
        future: asyncio.Future[ModelRecord] = asyncio.get_running_loop().create_future()
        intent = self.intents.get(record.name)
        if intent is None:
            intent = self.intents[record.name] = Intent(priority, now if since is None else since,
                                                        now + wait, explicit, allow_evict, not_before,
                                                        request_id=current_request_id())
        else:
            intent.priority = min(intent.priority, priority)
            intent.deadline = max(intent.deadline, now + wait)
            intent.explicit = intent.explicit or explicit
            intent.allow_evict = intent.allow_evict or allow_evict
            intent.not_before = min(intent.not_before, not_before) if explicit else intent.not_before
        intent.futures.append(future)
        if record.state == S.READY:
            self._resolve_intent(record.name, record)
        self.kick()
        return future

    def request_unload(self, record: ModelRecord, reason: str, code: str) -> asyncio.Future[ModelRecord]:
        """Drain then stop (never park) ``record``; resolves once it is unloaded."""
        future: asyncio.Future[ModelRecord] = asyncio.get_running_loop().create_future()
        self._fail_intent(record.name, LoadTimeoutError(
            f"model {record.name!r} was unloaded on request before it was ready"))
        if record.state in (S.ANALYZED, S.UNLOADED, S.FAILED, S.DISCOVERED):
            future.set_result(record)
            return future
        self._unload_waiters[record.name].append(future)
        if record.state == S.LOADING:
            self._unload_after_load.add(record.name)
        elif record.state == S.READY:
            self._begin_drain(record, Drain(code, reason, self.ctx.clock(), None))
        elif record.state == S.DRAINING:
            self.drains[record.name] = Drain(code, reason, self.ctx.clock(), None)
        elif record.state == S.PARKED:
            self._start_unload(record, Drain(code, reason, self.ctx.clock(), None))
        self.kick()
        return future

    def idle_unloads(self) -> None:
        """The control loop's idle policy: quiet models drain and stop (parked ones stop)."""
        ctx = self.ctx
        orchestration = ctx.settings.orchestration
        now = ctx.clock()

        def idle_after(name: str) -> float:
            own = ctx.planner.override(name).auto_unload_after_seconds
            return orchestration.auto_unload_after_seconds if own is None else own

        for resident, why in idle_unload_candidates(
            self.residents(now), idle_after_seconds=idle_after,
            min_qps=orchestration.min_qps_threshold, qps=ctx.metric_source.qps,
        ):
            record = ctx.table.get(resident.name)
            if self._has_demand(record.name) or record.hold:
                continue
            qps = ctx.metric_source.qps(record.name)
            source = ctx.metric_source.source_of(record.name)
            numbers = {"idle_seconds": round(resident.idle_seconds, 3), "qps": round(qps, 4),
                       "source": source}
            reason = f"{why} (idle {numbers['idle_seconds']:.1f}s, {qps:.3f} qps, from {source})"
            ctx.decide(record.name, "idle_unload", "idle", reason, numbers=numbers)
            drain = Drain("idle", reason, now, None)
            if record.state == S.PARKED:
                self._start_unload(record, drain)
            else:
                self._begin_drain(record, drain)

    # ================================================================ deciding

    def _decide(self) -> None:
        self._kicked = False
        if not self.enabled:
            return
        now = self.ctx.clock()
        try:
            self._finish_drains(now)
            self._drop_stale_claims()
            self._start_claimed()
            for name in self._demand_order(now):
                self._serve(self.ctx.table.get(name), now)
        except Exception:  # noqa: BLE001 - one bad decision must not stop the scheduler
            log.exception("scheduler decision failed")

    def _demand_order(self, now: float) -> list[str]:
        """Demanded models (queued requests, due intents), by best priority then age."""
        demand: dict[str, tuple[int, float]] = {}
        for name in self.ctx.admission.demanded():
            waiters = self.ctx.admission.waiters(name)
            demand[name] = (min(w.priority for w in waiters), min(w.enqueued_at for w in waiters))
        for name, intent in list(self.intents.items()):
            if intent.not_before > now:
                self._recheck(intent.not_before - now)
                continue
            prior = demand.get(name, (intent.priority, intent.since))
            demand[name] = (min(prior[0], intent.priority), min(prior[1], intent.since))
        ordered = sorted(demand.items(), key=lambda item: (item[1][0], item[1][1], item[0]))
        return [name for name, _ in ordered if name in self.ctx.table and name not in self.claims]

    def _serve(self, record: ModelRecord, now: float) -> None:
        """Get one demanded model closer to READY."""
        if record.state == S.FAILED:
            if record.hold is None:
                self._fail_waiters(record)
            return
        if record.hold == HOLD_REPLACING or record.state not in (S.ANALYZED, S.UNLOADED, S.PARKED):
            return  # being loaded, drained, unloaded or replaced: its turn comes after
        ctx = self.ctx
        if record.runtime is None or record.state != S.PARKED:
            choice = ctx.planner.choose(record)
            if choice.runtime is None:
                self._fail(record, choice.reason)
                return
        required = ctx.planner.required_bytes(record)
        parked = record.state == S.PARKED
        need = required - record.reserved_bytes if parked else required
        pinned = record.device if parked else ctx.planner.pinned_device(record)
        usable = self._usable()
        committed = self.committed()
        decision = place(need, ctx.inventory, committed, max_utilization=self._max_util(),
                         strategy=ctx.settings.orchestration.placement, pinned_device=pinned)
        if decision.device is not None:
            self._blocked.pop(record.name, None)
            if self.fits_now(decision.device.id, need) and self._load_slot_free():
                self._start_load(record, decision.device, required, decision.reason)
            else:  # room is committed to it but a drain or a load slot is still pending
                self.claims[record.name] = Claim(decision.device.id, need, now, ())
            return
        if decision.reason_code in ("too-large", "pinned-unknown-device"):
            if parked:
                self._start_unload(record, Drain("escalated", f"cannot wake on {pinned}: {decision.reason}", now, None))
            else:
                self._fail(record, decision.reason)
            return
        if not self._allow_evict(record.name):
            intent = self.intents.get(record.name)
            if intent is not None and not intent.allow_evict and not ctx.admission.queued(record.name):
                self._drop_intent(record.name, f"not loaded at start-up: {decision.reason}")
            return
        self._make_room(record, need, pinned, usable, committed, now)

    def _make_room(self, record: ModelRecord, need: int, pinned: str | None,
                   usable: dict[str, int], committed: dict[str, int], now: float) -> None:
        ctx = self.ctx
        sched = ctx.settings.orchestration.scheduler
        devices = [d for d in ctx.inventory.devices if pinned is None or d.id == pinned]
        free = {d.id: usable[d.id] - committed.get(d.id, 0) for d in devices}
        residents = [r for r in self.residents(now) if r.name != record.name]
        plan = None
        for allow_protected in (False, True):
            plan = plan_room(need, devices, free, usable, residents, order=self.policy,
                             min_residency_seconds=sched.min_residency_seconds,
                             allow_protected=allow_protected)
            if plan is not None:
                break
        if plan is None:
            if record.state == S.PARKED:  # cannot wake where it is: stop it, load it cold
                self._start_unload(record, Drain("escalated", "no room to wake it on its device", now, None))
                return
            why = blocked_reason(need, [d.id for d in devices], [r for r in self.residents(now)
                                                                   if r.pinned or r.protected(sched.min_residency_seconds)])
            if self._blocked.get(record.name) != why:
                self._blocked[record.name] = why
                ctx.decide(record.name, "place", "blocked", why)
            return
        verdict = swap_verdict(self._demand(record, plan, now), plan, amortization=sched.amortization,
                               urgency_margin_seconds=sched.urgency_margin_seconds)
        if not verdict.go:
            if self._blocked.get(record.name) != "deferred":  # once per wait, not per recheck
                self._blocked[record.name] = "deferred"
                ctx.decide(record.name, "defer", "amortising", f"{plan.reason}; not yet: {verdict.reason}",
                           numbers=plan.numbers())
            if verdict.recheck_in is not None:
                self._recheck(verdict.recheck_in)
            return
        self._blocked.pop(record.name, None)
        self._swap(record, plan, need, verdict.reason, now)

    def _swap(self, record: ModelRecord, plan: RoomPlan, need: int, why: str, now: float) -> None:
        ctx = self.ctx
        numbers = plan.numbers()
        ctx.decide(record.name, "evict", "make-room", f"{plan.reason}; {why}", numbers=numbers)
        ctx.metrics.count_swap(plan.device_id)
        for victim in plan.victims:
            target = ctx.table.get(victim.name)
            reason = (f"evicted to make room for {record.name} ({victim.rate:.3f} req/s, reload "
                      f"{victim.reload_seconds:.1f}s, frees {victim.freed_bytes / GIB:.2f} GiB)")
            if target.state == S.PARKED:
                self._start_unload(target, Drain("evicted", reason, now, None, record.name))
            else:
                residue = victim.reserved_bytes - victim.freed_bytes if victim.freed_bytes < victim.reserved_bytes else None
                self._begin_drain(target, Drain("evicted", reason, now, residue, record.name))
        self.claims[record.name] = Claim(plan.device_id, need, now, plan.victim_names)

    def _demand(self, record: ModelRecord, plan: RoomPlan, now: float) -> Demand:
        ctx = self.ctx
        waiters = ctx.admission.waiters(record.name)
        intent = self.intents.get(record.name)
        deadlines = [w.deadline for w in waiters] + ([intent.deadline] if intent else [])
        drain = max((self._service_seconds(v.name) for v in plan.victims if v.in_flight), default=0.0)
        unload = max((ctx.table.get(v.name).costs.unload_seconds or 0.0 for v in plan.victims), default=0.0)
        ready_in = drain + unload + self.reload_seconds(record)
        return Demand(
            name=record.name,
            queued=len(waiters),
            debt_seconds=sum(now - w.enqueued_at for w in waiters),
            slack_seconds=reachable_slack(deadlines, now, ready_in),
            ready_in_seconds=ready_in,
            explicit=bool(intent and intent.explicit) or record.pinned,
        )

    def _recheck(self, delay: float) -> None:
        """Decide again after ``delay`` (keeps only the earliest pending timer)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        if self._timer is not None and not self._timer.cancelled() and self._timer.when() <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.kick()

    async def quiesce(self) -> None:
        """Wait until no decision is pending and no action runs (tests, the simulator)."""
        while True:
            await asyncio.sleep(0)
            if self._kicked:
                continue
            if self.actions.tasks:
                await self.actions.idle()
                continue
            return

    def describe(self) -> dict[str, Any]:
        """For GET /status: what is promised, draining and retiring."""
        return {
            "claims": {n: {"device": c.device_id, "bytes": c.bytes, "victims": list(c.victims)}
                       for n, c in self.claims.items()},
            "draining": {n: {"code": d.code, "for": d.for_model, "park": d.park_residue is not None}
                         for n, d in self.drains.items()},
            "retiring": sorted(self.retiring),
            "intents": sorted(self.intents),
        }

    def stop(self) -> None:
        self.enabled = False
        if self._timer is not None:
            self._timer.cancel()

