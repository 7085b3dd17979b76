"""Trace-replay simulator: Modelium's brain vs LRU vs Ollama-style keep-alive.

Replays the SAME seeded synthetic multi-model request trace against the same simulated GPUs
under three policies and prints, per policy: cold starts, evictions, idle unloads, refused
requests, time-weighted mean GPU memory in use, and the latency cold starts added.

    .venv/bin/python bench/eviction_replay.py [--seed 7] [--duration 14400] [--models 16]

Policies (all share the trace, the devices, `max_utilization`, and the rule that a model
that is loading or has a request in flight is never unloaded):

- modelium: the package's own pure functions, wired like the orchestrator: `place()`
  best-fit; on "no-fit", `plan_eviction()` on each device in inventory order, the first
  feasible plan's victims are unloaded and `place()` runs again; every
  `decision_interval` seconds `idle_unload_candidates()` (idle >= auto_unload_after_seconds
  and QPS over the last 60 s < min_qps_threshold) unloads quiet models.
- lru (ModelMesh-style cache): best-fit placement; on no-fit, per device, the least
  recently used models on that device are unloaded until the new one fits; the device
  whose least-recently-used victim is the oldest (the global LRU head) is used first. No
  idle unload.
- ollama: Ollama's scheduler as described in /work/shared/design/anchors.md and its
  `findRunnerToUnload` / `ByDurationAndName`: a fixed keep-alive timer (default 300 s)
  started when a model's last request ends unloads it; placement on the GPU with the most
  free memory; when room is needed it unloads ONE idle runner with the shortest keep_alive
  (all equal here, so ties go by model name, as in Ollama's code) and retries, repeatedly.

A request for a model that cannot be placed even after the policy's evictions (nothing
evictable is left) is counted as refused; real servers would queue it, but refusing it the
same way in all three policies keeps the comparison fair.

Only `modelium.brain` and `modelium.hardware` (pure, no I/O) are imported.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modelium.brain import (  # noqa: E402
    EvictionCandidate,
    idle_unload_candidates,
    place,
    plan_eviction,
    usable_bytes,
)
from modelium.hardware.devices import Device, Inventory  # noqa: E402

GIB = 1024**3
POLICIES = ("modelium", "lru", "ollama")

# (label, GiB incl. a modest KV cache / activations): encoders to ~20B LLMs in fp16.
CATALOG = (
    ("bert-base", 1.0), ("bge-large", 1.6), ("qwen-0.5b", 2.0), ("llama-1b", 3.5),
    ("phi-2.7b", 7.0), ("llama-3b", 8.0), ("mistral-7b", 16.0), ("llama-8b", 18.0),
    ("llama-13b", 28.0), ("qwen-14b", 32.0), ("gpt-20b", 40.0),
)
CATALOG_WEIGHTS = (1.0, 1.0, 1.0, 1.5, 1.0, 1.5, 2.0, 2.0, 1.0, 1.0, 0.5)


# --------------------------------------------------------------------------- trace


@dataclass(frozen=True)
class ModelSpec:
    name: str
    size_bytes: int
    load_seconds: float
    mean_service_seconds: float


@dataclass(frozen=True)
class Request:
    time: float
    model: str
    service_seconds: float


@dataclass(frozen=True)
class TraceSpec:
    seed: int = 7
    duration: float = 4 * 3600.0
    models: int = 16
    rate: float = 0.5  # mean requests per second over all models
    zipf_s: float = 1.1
    phase_seconds: float = 900.0  # popularity shifts every phase
    hot_per_phase: int = 2  # models promoted to the top of the ranking each phase
    burst_window: float = 60.0  # arrival rate is redrawn per window (bursty)
    burst_sigma: float = 0.8  # lognormal sigma of the per-window rate multiplier
    load_s_per_gib: float = 2.0
    load_base_s: float = 2.0
    service_base_s: float = 0.5
    service_s_per_gib: float = 0.1


@dataclass(frozen=True)
class Trace:
    spec: TraceSpec
    models: dict[str, ModelSpec]
    requests: tuple[Request, ...]


def make_trace(spec: TraceSpec) -> Trace:
    """Seeded, deterministic: Zipf popularity over a ranking that shifts every phase (a few
    models become hot), Poisson arrivals whose rate is redrawn each window (bursts)."""
    rng = random.Random(spec.seed)
    models: dict[str, ModelSpec] = {}
    for i in range(spec.models):
        label, gib = rng.choices(CATALOG, weights=CATALOG_WEIGHTS)[0]
        gib = min(40.0, max(1.0, gib * rng.uniform(0.9, 1.1)))
        name = f"m{i:02d}-{label}"
        models[name] = ModelSpec(
            name=name,
            size_bytes=int(gib * GIB),
            load_seconds=spec.load_base_s + spec.load_s_per_gib * gib,
            mean_service_seconds=spec.service_base_s + spec.service_s_per_gib * gib,
        )
    names = list(models)
    ranking = names[:]
    rng.shuffle(ranking)
    zipf = [1.0 / (r + 1) ** spec.zipf_s for r in range(len(names))]
    requests: list[Request] = []
    t = 0.0
    phase_end = spec.phase_seconds
    while t < spec.duration:
        if t >= phase_end:  # popularity shift: a few models jump to the top
            phase_end += spec.phase_seconds
            for _ in range(min(spec.hot_per_phase, len(ranking))):
                hot = rng.choice(ranking[spec.hot_per_phase:] or ranking)
                ranking.remove(hot)
                ranking.insert(0, hot)
        window_end = min(spec.duration, t + spec.burst_window)
        mult = math.exp(rng.gauss(-spec.burst_sigma**2 / 2, spec.burst_sigma))  # mean 1
        rate = spec.rate * mult
        at = t + rng.expovariate(rate) if rate > 0 else window_end
        while at < window_end:
            name = rng.choices(ranking, weights=zipf)[0]
            mean = models[name].mean_service_seconds
            service = min(5 * mean, rng.expovariate(1.0 / mean))
            requests.append(Request(at, name, service))
            at += rng.expovariate(rate)
        t = window_end
    return Trace(spec, models, tuple(requests))


def make_inventory(gpus: int, gpu_gib: float) -> Inventory:
    return Inventory(
        tuple(Device(f"gpu:{i}", "gpu", i, int(gpu_gib * GIB), "simulated") for i in range(gpus)),
        "configured",
    )


# --------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class PolicyParams:
    max_utilization: float = 0.9
    # modelium (defaults = modelium/config/default.yaml)
    auto_unload_after_seconds: float = 600.0
    min_qps_threshold: float = 0.1
    decision_interval: float = 10.0
    qps_window: float = 60.0
    # ollama
    keep_alive: float = 300.0


@dataclass
class _Model:
    spec: ModelSpec
    state: str = "unloaded"  # unloaded | loading | ready
    device: str | None = None
    in_flight: int = 0
    waiters: list[Request] = field(default_factory=list)
    loaded_at: float = 0.0  # when the load finished
    last_end: float | None = None  # last request finished
    last_used: float = 0.0  # last request arrived (LRU)
    recent: deque = field(default_factory=deque)  # arrival times for QPS
    timer_token: int = 0  # ollama keep-alive: bumped to cancel a pending expiry

    @property
    def busy(self) -> bool:
        return self.state == "loading" or self.in_flight > 0 or bool(self.waiters)


@dataclass
class Result:
    policy: str
    requests: int = 0
    cold_starts: int = 0
    delayed_requests: int = 0
    evictions: int = 0
    idle_unloads: int = 0
    refused: int = 0
    busy_evictions: int = 0  # must stay 0: an unload of a model that was busy
    mean_mem_bytes: float = 0.0
    capacity_bytes: int = 0
    peak_fraction_of_usable: float = 0.0  # max over devices and time of reserved / usable
    added_latency: list[float] = field(default_factory=list)  # per served request
    distinct_requested: int = 0
    loaded_models: set[str] = field(default_factory=set)  # ever loaded
    pending_at_end: int = 0  # requests still waiting for a load when the trace ends

    @property
    def added_sum(self) -> float:
        return sum(self.added_latency)

    @property
    def added_p95(self) -> float:
        return _pct(self.added_latency, 95)

    @property
    def added_p95_delayed(self) -> float:
        return _pct([x for x in self.added_latency if x > 0], 95)

    def summary(self) -> dict[str, float | int | str]:
        return {
            "policy": self.policy,
            "requests": self.requests,
            "cold_starts": self.cold_starts,
            "delayed_requests": self.delayed_requests,
            "evictions": self.evictions,
            "idle_unloads": self.idle_unloads,
            "refused": self.refused,
            "busy_evictions": self.busy_evictions,
            "mean_mem_gib": round(self.mean_mem_bytes / GIB, 3),
            "mean_mem_pct": round(100 * self.mean_mem_bytes / self.capacity_bytes, 2),
            "peak_fraction_of_usable": round(self.peak_fraction_of_usable, 6),
            "added_sum_s": round(self.added_sum, 3),
            "added_p95_s": round(self.added_p95, 3),
            "added_p95_delayed_s": round(self.added_p95_delayed, 3),
        }


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, math.ceil(p / 100 * len(ordered)) - 1)  # nearest-rank
    return ordered[k]


class Simulator:
    """Discrete-event replay of one trace under one policy."""

    def __init__(self, trace: Trace, inventory: Inventory, policy: str, params: PolicyParams):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.trace, self.inventory, self.policy, self.p = trace, inventory, policy, params
        self.models = {n: _Model(s) for n, s in trace.models.items()}
        self.reserved: dict[str, int] = {d.id: 0 for d in inventory.devices}
        self.usable = {d.id: usable_bytes(d, params.max_utilization) for d in inventory.devices}
        self.result = Result(policy, capacity_bytes=sum(d.total_bytes for d in inventory.devices))
        self._events: list[tuple[float, int, int, str, object]] = []
        self._seq = 0
        self.now = 0.0
        self._mem_area = 0.0
        self._mem_since = 0.0

    # ---- event queue
    _PRIORITY = {"load_done": 0, "done": 1, "expire": 2, "tick": 3, "arrival": 4}

    def _push(self, t: float, kind: str, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._PRIORITY[kind], self._seq, kind, payload))

    # ---- memory ledger
    def _advance(self, t: float) -> None:
        self._mem_area += sum(self.reserved.values()) * (t - self._mem_since)
        self._mem_since = t
        self.now = t

    def _reserve(self, m: _Model, device_id: str) -> None:
        self.reserved[device_id] += m.spec.size_bytes
        frac = self.reserved[device_id] / self.usable[device_id] if self.usable[device_id] else math.inf
        self.result.peak_fraction_of_usable = max(self.result.peak_fraction_of_usable, frac)
        m.device, m.state = device_id, "loading"

    def _unload(self, m: _Model, *, evicted: bool) -> None:
        if m.busy:
            self.result.busy_evictions += 1
        assert m.device is not None
        self.reserved[m.device] -= m.spec.size_bytes
        m.device, m.state = None, "unloaded"
        m.timer_token += 1
        if evicted:
            self.result.evictions += 1
        else:
            self.result.idle_unloads += 1

    # ---- views the policies use
    def _qps(self, m: _Model) -> float:
        cutoff = self.now - self.p.qps_window
        while m.recent and m.recent[0] <= cutoff:
            m.recent.popleft()
        return len(m.recent) / self.p.qps_window

    def _idle(self, m: _Model) -> float:
        if m.busy:
            return 0.0
        marks = [t for t in (m.last_end, m.loaded_at) if t is not None]
        return max(0.0, self.now - max(marks))

    def _candidates(self, device_id: str | None = None) -> list[EvictionCandidate]:
        # like Orchestrator._eviction_candidates: READY models only (loading ones are not)
        return [
            EvictionCandidate(
                name=m.spec.name, device_id=m.device, reserved_bytes=m.spec.size_bytes,
                idle_seconds=self._idle(m), qps=self._qps(m), pinned=False,
                busy=m.in_flight > 0 or bool(m.waiters),
            )
            for m in self.models.values()
            if m.state == "ready" and m.device is not None
            and (device_id is None or m.device == device_id)
        ]

    def _place(self, size: int, strategy: str):
        return place(size, self.inventory, self.reserved,
                     max_utilization=self.p.max_utilization, strategy=strategy)

    # ---- making room, per policy
    def _make_room(self, m: _Model) -> str | None:
        size = m.spec.size_bytes
        strategy = "spread" if self.policy == "ollama" else "best-fit"
        decision = self._place(size, strategy)
        if decision.ok:
            return decision.device.id
        if decision.reason_code != "no-fit":
            return None
        if self.policy == "modelium":
            for device in self.inventory.devices:  # orchestrator order: first feasible plan
                plan = plan_eviction(size, device, self.reserved[device.id],
                                     self._candidates(device.id),
                                     max_utilization=self.p.max_utilization)
                if not plan.feasible:
                    continue
                for victim in plan.victims:
                    self._unload(self.models[victim], evicted=True)
                decision = self._place(size, strategy)
                return decision.device.id if decision.ok else None
            return None
        if self.policy == "lru":
            plans = []
            for device in self.inventory.devices:
                free = self.usable[device.id] - self.reserved[device.id]
                if self.usable[device.id] < size:
                    continue
                lru = sorted((x for x in self.models.values()
                              if x.state == "ready" and x.device == device.id and not x.busy),
                             key=lambda x: (x.last_used, x.spec.name))
                victims = []
                for x in lru:
                    if free >= size:
                        break
                    victims.append(x)
                    free += x.spec.size_bytes
                if free >= size and victims:
                    plans.append(((victims[0].last_used, device.index or 0), victims))
            if not plans:
                return None
            for x in min(plans, key=lambda p: p[0])[1]:
                self._unload(x, evicted=True)
            decision = self._place(size, strategy)
            return decision.device.id if decision.ok else None
        # ollama: unload one idle runner (shortest keep_alive, then name), retry
        while True:
            idle = sorted((x for x in self.models.values() if x.state == "ready" and not x.busy),
                          key=lambda x: (self.p.keep_alive, x.spec.name))
            if not idle:
                return None
            self._unload(idle[0], evicted=True)
            decision = self._place(size, strategy)
            if decision.ok:
                return decision.device.id

    # ---- event handlers
    def _arrival(self, req: Request) -> None:
        m = self.models[req.model]
        self.result.requests += 1
        m.recent.append(self.now)
        m.last_used = self.now
        if m.state == "ready":
            self._start(m, req, added=0.0)
        elif m.state == "loading":
            m.waiters.append(req)
        else:
            device_id = self._make_room(m)
            if device_id is None:
                self.result.refused += 1
                return
            self._reserve(m, device_id)
            self.result.cold_starts += 1
            self.result.loaded_models.add(m.spec.name)
            m.waiters.append(req)
            self._push(self.now + m.spec.load_seconds, "load_done", m.spec.name)

    def _start(self, m: _Model, req: Request, added: float) -> None:
        m.in_flight += 1
        m.timer_token += 1  # cancels a pending keep-alive expiry
        self.result.added_latency.append(added)
        if added > 0:
            self.result.delayed_requests += 1
        self._push(self.now + req.service_seconds, "done", m.spec.name)

    def _load_done(self, name: str) -> None:
        m = self.models[name]
        m.state, m.loaded_at = "ready", self.now
        waiters, m.waiters = m.waiters, []
        for req in waiters:
            self._start(m, req, added=self.now - req.time)

    def _done(self, name: str) -> None:
        m = self.models[name]
        m.in_flight -= 1
        m.last_end = self.now
        m.last_used = max(m.last_used, self.now)
        if self.policy == "ollama" and not m.busy:
            m.timer_token += 1
            self._push(self.now + self.p.keep_alive, "expire", (name, m.timer_token))

    def _expire(self, payload: tuple[str, int]) -> None:
        name, token = payload
        m = self.models[name]
        if m.state == "ready" and not m.busy and m.timer_token == token:
            self._unload(m, evicted=False)

    def _tick(self) -> None:
        unload = idle_unload_candidates(
            self._candidates(), idle_after_seconds=self.p.auto_unload_after_seconds,
            min_qps=self.p.min_qps_threshold, always_loaded=(),
        )
        for name, _reason in unload:
            self._unload(self.models[name], evicted=False)
        self._push(self.now + self.p.decision_interval, "tick", None)

    def run(self) -> Result:
        for req in self.trace.requests:
            self._push(req.time, "arrival", req)
        if self.policy == "modelium" and self.p.decision_interval > 0:
            self._push(self.p.decision_interval, "tick", None)
        end = self.trace.spec.duration
        while self._events and self._events[0][0] <= end:
            t, _prio, _seq, kind, payload = heapq.heappop(self._events)
            self._advance(t)
            if kind == "arrival":
                self._arrival(payload)  # type: ignore[arg-type]
            elif kind == "load_done":
                self._load_done(payload)  # type: ignore[arg-type]
            elif kind == "done":
                self._done(payload)  # type: ignore[arg-type]
            elif kind == "expire":
                self._expire(payload)  # type: ignore[arg-type]
            else:
                self._tick()
            for dev, used in self.reserved.items():
                assert 0 <= used <= self.usable[dev], (self.policy, dev, used)
        self._advance(end)
        self.result.mean_mem_bytes = self._mem_area / end if end > 0 else 0.0
        self.result.distinct_requested = len({r.model for r in self.trace.requests})
        self.result.pending_at_end = sum(len(m.waiters) for m in self.models.values())
        return self.result


def simulate(trace: Trace, inventory: Inventory, policy: str,
             params: PolicyParams | None = None) -> Result:
    return Simulator(trace, inventory, policy, params or PolicyParams()).run()


# --------------------------------------------------------------------------- CLI


def format_table(results: list[Result]) -> str:
    head = ("| policy | cold starts | evictions | idle unloads | refused | mean GPU mem in use "
            "| added latency sum | p95 added (all req) | p95 added (delayed req) |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r.summary()
        lines.append(
            f"| {r.policy} | {r.cold_starts} | {r.evictions} | {r.idle_unloads} | {r.refused} "
            f"| {s['mean_mem_gib']:.1f} GiB ({s['mean_mem_pct']:.1f} %) "
            f"| {r.added_sum:,.0f} s | {r.added_p95:.1f} s | {r.added_p95_delayed:.1f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=TraceSpec.seed)
    ap.add_argument("--duration", type=float, default=TraceSpec.duration, help="seconds")
    ap.add_argument("--models", type=int, default=TraceSpec.models)
    ap.add_argument("--rate", type=float, default=TraceSpec.rate, help="mean req/s, all models")
    ap.add_argument("--phase-seconds", type=float, default=TraceSpec.phase_seconds)
    ap.add_argument("--load-s-per-gib", type=float, default=TraceSpec.load_s_per_gib)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    ap.add_argument("--max-utilization", type=float, default=PolicyParams.max_utilization)
    ap.add_argument("--auto-unload-after", type=float,
                    default=PolicyParams.auto_unload_after_seconds, help="modelium, seconds")
    ap.add_argument("--min-qps", type=float, default=PolicyParams.min_qps_threshold,
                    help="modelium")
    ap.add_argument("--decision-interval", type=float, default=PolicyParams.decision_interval,
                    help="modelium, seconds")
    ap.add_argument("--keep-alive", type=float, default=PolicyParams.keep_alive,
                    help="ollama, seconds")
    ap.add_argument("--policy", action="append", choices=POLICIES,
                    help="repeatable; default all three")
    args = ap.parse_args(argv)

    spec = TraceSpec(seed=args.seed, duration=args.duration, models=args.models,
                     rate=args.rate, phase_seconds=args.phase_seconds,
                     load_s_per_gib=args.load_s_per_gib)
    params = PolicyParams(max_utilization=args.max_utilization,
                          auto_unload_after_seconds=args.auto_unload_after,
                          min_qps_threshold=args.min_qps,
                          decision_interval=args.decision_interval, keep_alive=args.keep_alive)
    trace = make_trace(spec)
    inventory = make_inventory(args.gpus, args.gpu_gib)
    total = sum(m.size_bytes for m in trace.models.values())
    usable = sum(usable_bytes(d, params.max_utilization) for d in inventory.devices)
    print(f"trace: seed {spec.seed}, {spec.duration:.0f} s, {len(trace.models)} models "
          f"({total / GIB:.0f} GiB in all), {len(trace.requests)} requests, "
          f"{len({r.model for r in trace.requests})} distinct models requested")
    print(f"devices: {args.gpus} x {args.gpu_gib:.0f} GiB, max_utilization "
          f"{params.max_utilization} -> {usable / GIB:.0f} GiB usable")
    results = [simulate(trace, inventory, p, params) for p in (args.policy or POLICIES)]
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
