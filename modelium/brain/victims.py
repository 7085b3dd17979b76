"""Who gives up memory, and when a swap is worth it (pure: no I/O, no clock).

**Victims by expected cost.** Evicting a model costs its future requests a reload. The
default order (``cost``) is GreedyDual-Size-Frequency's: keep the models with the highest
``rate x reload_seconds / bytes freed``, where ``rate`` is an exponentially decayed request
rate (so popularity ages) and ``reload_seconds`` is that model's *measured* load time: a
0.5 GiB encoder that reloads in 0.2 s goes before a 16 GiB LLM that takes 40 s, unless the
encoder is far busier. Requests already queued for a victim count as certain future ones.
``lru``, ``fifo`` and ``name`` orders exist as baselines (the simulator compares them).

**No thrashing.** A model loaded less than ``min_residency_seconds`` ago that is serving
(requests in flight or queued) is *protected*: it is chosen only when the waiting request
would otherwise miss its deadline, or once its window is over. And a swap
is made only once the waiting demand amortises it (llmux's rule): the seconds the waiting
requests have already waited (their debt) must reach ``amortization`` x the wait-seconds
the eviction is expected to impose on the victims (``Resident.expected_cost``). Idle,
rarely used victims cost ~0, so the swap happens at once; a hot victim is swapped out only
for a queue that has waited longer than the victim's users would. A request near its
deadline forces the swap (``urgency``: its slack is down to the expected swap time, padded
by half because drains and loads run long, plus a margin), so nobody is refused while
waiting could serve it; a request the swap could not serve in time anyway does not force it
(``reachable_slack``), and urgency evicts a model inside its residency window only when
nothing is queued for it (``RoomPlan.protected_queue``): under overload two models that do
not fit together otherwise evicted each other the second each became ready, each drained
queue left to wait for the next swap (docs/load-testing.md). (Weighing the waiting model's own expected cost into the debt was
tried: it made the policy LRU-like again in the simulator, 40 % more loads on zipf traces.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from modelium.hardware.devices import Device

GIB = 1024**3
ORDERS = ("cost", "lru", "fifo", "name")
#: The expected swap time is padded by this factor when deciding a request is urgent.
URGENCY_PADDING = 1.5


@dataclass(frozen=True)
class Resident:
    """A loaded (or parked) model as the victim choice sees it."""

    name: str
    device_id: str
    reserved_bytes: int
    freed_bytes: int  # what evicting it gives back (less a parked residue when parked)
    pinned: bool
    in_flight: int
    queued: int
    rate: float  # decayed requests per second
    reload_seconds: float  # measured (or assumed) time to bring it back
    resident_seconds: float  # since it became ready (inf: it served nothing since: unprotected)
    idle_seconds: float
    last_used: float  # monotonic time of its last request (-inf: never)
    loaded_at: float  # monotonic time it became ready
    parked: bool = False

    def protected(self, min_residency_seconds: float) -> bool:
        """Just loaded and in use: not to be taken from its users yet."""
        return self.resident_seconds < min_residency_seconds and (self.in_flight > 0 or self.queued > 0)

    @property
    def expected_cost(self) -> float:
        """Wait-seconds its eviction adds: queued requests plus those expected during one
        reload, each waiting one reload."""
        return self.reload_seconds * (self.queued + self.rate * self.reload_seconds)

    def numbers(self) -> dict[str, float | int | str]:
        return {"rate_per_s": round(self.rate, 5), "reload_s": round(self.reload_seconds, 3),
                "freed_gib": round(self.freed_bytes / GIB, 3), "queued": self.queued,
                "in_flight": self.in_flight, "idle_s": round(self.idle_seconds, 1),
                "resident_s": round(self.resident_seconds, 1),
                "expected_cost_s": round(self.expected_cost, 3)}


def _cost_key(r: Resident) -> tuple[float, ...]:
    value = (r.rate + r.queued) * r.reload_seconds
    return (value / max(1, r.freed_bytes), r.in_flight, r.last_used, -r.freed_bytes)


_ORDER_KEYS: dict[str, Callable[[Resident], tuple]] = {
    "cost": _cost_key,
    "lru": lambda r: (r.last_used, r.loaded_at, r.name),
    "fifo": lambda r: (r.loaded_at, r.name),
    # Ollama's findRunnerToUnload with equal keep-alives: idle runners first, then by name.
    "name": lambda r: (r.in_flight > 0 or r.queued > 0, r.name),
}


@dataclass(frozen=True)
class RoomPlan:
    """Victims that make ``required_bytes`` fit on ``device_id``."""

    device_id: str
    victims: tuple[Resident, ...]
    required_bytes: int
    free_after: int
    cost_seconds: float  # sum of the victims' expected costs
    protected: tuple[str, ...]  # victims still inside their minimum residency window
    reason: str
    protected_for: float = 0.0  # seconds until the last protected victim's window ends

    @property
    def victim_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.victims)

    def protected_queue(self) -> int:
        """Requests queued for the protected victims: what an urgent swap would send back
        to wait for yet another load (their in-flight requests finish either way)."""
        return sum(v.queued for v in self.victims if v.name in self.protected)

    def numbers(self) -> dict[str, object]:
        return {"device": self.device_id, "cost_s": round(self.cost_seconds, 3),
                "victims": {v.name: v.numbers() for v in self.victims}}


def plan_room(
    required_bytes: int,
    devices: Sequence[Device],
    free: Mapping[str, int],
    usable: Mapping[str, int],
    residents: Sequence[Resident],
    *,
    order: str = "cost",
    min_residency_seconds: float = 0.0,
    allow_protected: bool = False,
) -> RoomPlan | None:
    """The cheapest set of victims on one device that frees enough, or None.

    ``free``: what is left on each device once every decided action is done (reservations
    less what draining models will free, plus room already promised to waiting models).
    Pinned models never qualify; models inside their residency window only with
    ``allow_protected``. On each device victims are taken in ``order`` until the model
    fits, then the ones not needed after all are put back; the device whose victims cost
    least wins (fewer victims, then less memory left over, on ties).
    """
    key = _ORDER_KEYS[order]
    plans: list[RoomPlan] = []
    for device in devices:
        if usable.get(device.id, 0) < required_bytes:
            continue
        have = free.get(device.id, 0)
        eligible = sorted(
            (r for r in residents if r.device_id == device.id and not r.pinned
             and (allow_protected or not r.protected(min_residency_seconds))),
            key=key,
        )
        victims: list[Resident] = []
        for resident in eligible:
            if have >= required_bytes:
                break
            victims.append(resident)
            have += resident.freed_bytes
        if have < required_bytes:
            continue
        for resident in sorted(victims, key=key, reverse=True):  # put back the unneeded
            if have - resident.freed_bytes >= required_bytes:
                victims.remove(resident)
                have -= resident.freed_bytes
        cost = sum(v.expected_cost for v in victims)
        protected = tuple(v.name for v in victims if v.protected(min_residency_seconds))
        protected_for = max((min_residency_seconds - v.resident_seconds for v in victims
                             if v.protected(min_residency_seconds)), default=0.0)
        detail = ", ".join(
            f"{v.name} ({v.rate:.3f} req/s, reload {v.reload_seconds:.1f}s, "
            f"frees {v.freed_bytes / GIB:.2f} GiB{', parked' if v.parked else ''})"
            for v in victims)
        plans.append(RoomPlan(
            device.id, tuple(victims), required_bytes, have - required_bytes, cost, protected,
            f"evict {detail} on {device.id} to make {required_bytes / GIB:.2f} GiB fit "
            f"(expected cost {cost:.1f} wait-seconds, by {order} order)",
            protected_for,
        ))
    if not plans:
        return None
    return min(plans, key=lambda p: (p.cost_seconds, len(p.victims), p.free_after, p.device_id))


def blocked_reason(required_bytes: int, device_ids: Sequence[str], residents: Sequence[Resident]) -> str:
    """Why no plan exists: what holds the memory that cannot be taken."""
    held = [f"{r.name} ({'pinned' if r.pinned else 'just loaded and serving'})"
            for r in residents if r.device_id in device_ids]
    return (f"needs {required_bytes / GIB:.2f} GiB; what holds the rest cannot be evicted now: "
            f"{', '.join(held) or 'models still loading'}")


@dataclass(frozen=True)
class Demand:
    """The model waiting for room, as the swap rule sees it."""

    name: str
    queued: int
    debt_seconds: float  # sum over its queued requests of the time each has waited
    slack_seconds: float  # until the earliest deadline a swap can still meet (inf: none); see reachable_slack
    ready_in_seconds: float  # expected: drain the victims + unload them + load this model
    explicit: bool = False  # a user's load, a restart, a pinned model: no amortisation


@dataclass(frozen=True)
class Verdict:
    go: bool
    reason: str
    recheck_in: float | None = None  # seconds until the answer may change by itself


def reachable_slack(deadlines: Sequence[float], now: float, ready_in_seconds: float) -> float:
    """Seconds until the earliest deadline that a swap started now could still meet.

    A waiter whose deadline comes before the swap could finish (``now + ready_in``) is
    refused whatever happens, so it must not make the swap urgent: measured with 1,000
    users on two models that did not fit together, swaps forced for requests with 0.1 s
    left, while each swap took 12-20 s, evicted every model as soon as it had loaded
    (docs/load-testing.md). ``inf`` when no deadline can be met: then only amortisation
    decides."""
    reachable = [d - now for d in deadlines if d - now >= ready_in_seconds]
    return min(reachable, default=math.inf)


def swap_verdict(demand: Demand, plan: RoomPlan, *, amortization: float,
                 urgency_margin_seconds: float) -> Verdict:
    """Whether to swap now; see the module doc."""
    urgent_in = demand.slack_seconds - URGENCY_PADDING * demand.ready_in_seconds - urgency_margin_seconds
    if not plan.victims or demand.explicit:
        return Verdict(True, "nothing to weigh" if not plan.victims else "asked for explicitly")
    their_queue = plan.protected_queue()
    if urgent_in <= 0 and not their_queue:
        return Verdict(True, f"a request waits {demand.slack_seconds:.1f}s more at most and the "
                             f"swap takes ~{demand.ready_in_seconds:.1f}s: swapping now")
    if urgent_in <= 0:
        return Verdict(False, f"{', '.join(plan.protected)} just loaded with {their_queue} request(s) "
                              "of its own queued: evicting it now would send them back to wait for "
                              "another swap (minimum residency)", max(0.01, plan.protected_for))
    if plan.protected:
        return Verdict(False, f"{', '.join(plan.protected)} just loaded and serving (minimum "
                              "residency); waiting unless a request would miss its deadline",
                       max(0.01, min(urgent_in, plan.protected_for)))
    threshold = amortization * plan.cost_seconds
    if demand.debt_seconds >= threshold:
        return Verdict(True, f"{demand.queued} waiting request(s) have waited "
                             f"{demand.debt_seconds:.1f}s >= {threshold:.1f}s the swap costs")
    grow = (threshold - demand.debt_seconds) / max(1, demand.queued)
    recheck = min(grow, urgent_in) if math.isfinite(urgent_in) else grow
    return Verdict(False, f"waiting demand {demand.debt_seconds:.1f}s < {threshold:.1f}s the "
                          "swap would cost the victims' users", max(0.01, recheck))


def idle_unload_candidates(
    residents: Sequence[Resident],
    *,
    idle_after_seconds: Callable[[str], float],
    min_qps: float,
    qps: Callable[[str], float],
) -> list[tuple[Resident, str]]:
    """(model, reason) for models quiet long enough to unload, longest idle first.

    ``idle_after_seconds(name)`` <= 0 disables idle unloading for that model. A model
    qualifies when idle for at least that long and its QPS is below ``min_qps`` (``min_qps``
    <= 0 drops the QPS condition). Pinned and busy models never qualify.
    """
    out: list[tuple[Resident, str]] = []
    for r in sorted(residents, key=lambda r: (-r.idle_seconds, r.name)):
        after = idle_after_seconds(r.name)
        if after <= 0 or r.pinned or r.in_flight or r.queued or r.idle_seconds < after:
            continue
        rate = qps(r.name)
        if min_qps > 0 and rate >= min_qps:
            continue
        qps_part = f" and {rate:.2f} qps < {min_qps:.2f}" if min_qps > 0 else ""
        out.append((r, f"idle {r.idle_seconds:.0f}s >= {after:.0f}s{qps_part}"))
    return out
