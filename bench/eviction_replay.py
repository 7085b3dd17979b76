"""Trace replay: Modelium's scheduler vs LRU, first-loaded-first (FIFO) and Ollama-style
keep-alive, on the same seeded multi-model traces and the same simulated GPUs.

    .venv/bin/python bench/eviction_replay.py [--trace zipf] [--seeds 1,2,3,4,5] [--models 16]

Each policy is Modelium's own orchestrator (bench/simulator.py: the real admission queues,
scheduler, drains and control loop, with runtimes that only take time, in virtual time);
the baselines differ only in settings: their victim order, and no residency window or
amortisation (they swap at the first request that needs room). All share the queues, so
a request waits up to its budget (300 s) instead of being refused, as Ollama's would.

Traces (``--trace``):

- ``zipf``: Zipf popularity (s 1.1) over a ranking that shifts every 15 min (two models
  jump to the top), Poisson arrivals whose rate is redrawn every minute (bursts);
  model sizes from real encoder/LLM footprints (1-40 GiB), load time 2 s + 2 s/GiB.
- ``bursty``: the same, with sharper bursts (lognormal sigma 1.5) and no shifts.
- ``alternating``: pairs of big models (45 GiB: two never share an 80 GiB GPU), requested
  in turns of 1-6 requests each (where first-come switching spends its time switching);
  ``--models`` is the number of models (default 16 -> use 4 for two pairs on two GPUs).

Printed per policy: loads (cold starts), evictions, idle unloads, refused requests, mean
and p95 seconds a request waited, the share of device time spent loading rather than
serving (llmux's "switching share"), and time-weighted memory reserved.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simulator import GIB, POLICIES, Outcome, SimModel, quiet_logs, replay, run_virtual  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modelium.hardware import Device, Inventory  # noqa: E402

TRACES = ("zipf", "bursty", "alternating")
DEFAULT_POLICIES = ("modelium", "lru", "fifo", "ollama")

# (label, GiB incl. a modest KV cache / activations): encoders to ~20B LLMs in fp16.
CATALOG = (
    ("bert-base", 1.0), ("bge-large", 1.6), ("qwen-0.5b", 2.0), ("llama-1b", 3.5),
    ("phi-2.7b", 7.0), ("llama-3b", 8.0), ("mistral-7b", 16.0), ("llama-8b", 18.0),
    ("llama-13b", 28.0), ("qwen-14b", 32.0), ("gpt-20b", 40.0),
)
CATALOG_WEIGHTS = (1.0, 1.0, 1.0, 1.5, 1.0, 1.5, 2.0, 2.0, 1.0, 1.0, 0.5)


@dataclass(frozen=True)
class TraceSpec:
    kind: str = "zipf"
    seed: int = 7
    duration: float = 4 * 3600.0
    models: int = 16
    rate: float = 0.5  # mean requests per second over all models
    zipf_s: float = 1.1
    phase_seconds: float = 900.0  # popularity shifts every phase (0: never)
    hot_per_phase: int = 2
    burst_window: float = 60.0
    burst_sigma: float = 0.8
    load_s_per_gib: float = 2.0
    load_base_s: float = 2.0
    service_base_s: float = 0.5
    service_s_per_gib: float = 0.1
    pair_gib: float = 45.0  # alternating: each model's size (two must not fit on one GPU)


@dataclass(frozen=True)
class Trace:
    spec: TraceSpec
    models: dict[str, SimModel]
    requests: tuple[tuple[float, str, float], ...]  # (arrival, model, service seconds)
    mean_service: dict[str, float]


def _model(spec: TraceSpec, name: str, gib: float) -> SimModel:
    return SimModel(name, int(gib * GIB), spec.load_base_s + spec.load_s_per_gib * gib)


def _service(spec: TraceSpec, gib: float) -> float:
    return spec.service_base_s + spec.service_s_per_gib * gib


def make_trace(spec: TraceSpec) -> Trace:
    rng = random.Random(spec.seed)
    if spec.kind == "alternating":
        return _alternating(spec, rng)
    sizes: dict[str, float] = {}
    for i in range(spec.models):
        label, gib = rng.choices(CATALOG, weights=CATALOG_WEIGHTS)[0]
        sizes[f"m{i:02d}-{label}"] = min(40.0, max(1.0, gib * rng.uniform(0.9, 1.1)))
    names = list(sizes)
    ranking = names[:]
    rng.shuffle(ranking)
    zipf = [1.0 / (r + 1) ** spec.zipf_s for r in range(len(names))]
    requests: list[tuple[float, str, float]] = []
    t, phase_end = 0.0, spec.phase_seconds or math.inf
    while t < spec.duration:
        if t >= phase_end:
            phase_end += spec.phase_seconds
            for _ in range(min(spec.hot_per_phase, len(ranking))):
                hot = rng.choice(ranking[spec.hot_per_phase:] or ranking)
                ranking.remove(hot)
                ranking.insert(0, hot)
        window_end = min(spec.duration, t + spec.burst_window)
        rate = spec.rate * math.exp(rng.gauss(-spec.burst_sigma**2 / 2, spec.burst_sigma))
        at = t + rng.expovariate(rate) if rate > 0 else window_end
        while at < window_end:
            name = rng.choices(ranking, weights=zipf)[0]
            mean = _service(spec, sizes[name])
            requests.append((at, name, min(5 * mean, rng.expovariate(1.0 / mean))))
            at += rng.expovariate(rate)
        t = window_end
    return Trace(spec, {n: _model(spec, n, g) for n, g in sizes.items()}, tuple(requests),
                 {n: _service(spec, g) for n, g in sizes.items()})


def _alternating(spec: TraceSpec, rng: random.Random) -> Trace:
    """Two big models per GPU's worth of memory, each nearly filling one, asked for in
    turns: a turn is 1-6 requests of one model at ``rate``, then the other's."""
    sizes = {f"pair{i // 2}-{'ab'[i % 2]}": spec.pair_gib * rng.uniform(0.95, 1.05)
             for i in range(max(2, spec.models))}
    names = list(sizes)
    requests: list[tuple[float, str, float]] = []
    t = 0.0
    while t < spec.duration:
        pair = rng.randrange(len(names) // 2)
        for side in (0, 1):
            name = names[2 * pair + side]
            for _ in range(rng.randint(1, 6)):
                t += rng.expovariate(spec.rate)
                mean = _service(spec, sizes[name])
                requests.append((t, name, min(5 * mean, rng.expovariate(1.0 / mean))))
    requests = [r for r in requests if r[0] < spec.duration]
    return Trace(spec, {n: _model(spec, n, g) for n, g in sizes.items()}, tuple(requests),
                 {n: _service(spec, g) for n, g in sizes.items()})


def make_inventory(gpus: int, gpu_gib: float) -> Inventory:
    return Inventory(tuple(Device(f"gpu:{i}", "gpu", i, int(gpu_gib * GIB), "simulated", simulated=True)
                           for i in range(gpus)), "configured")


def simulate(trace: Trace, inventory: Inventory, policy: str, *, wait_seconds: float = 300.0,
             overrides: dict | None = None) -> Outcome:
    return run_virtual(replay(list(trace.requests), trace.models, inventory, policy,
                              overrides=overrides, wait_seconds=wait_seconds))


# --------------------------------------------------------------------------- output

HEAD = ("| trace | seed | policy | loads | evictions | idle unloads | refused | mean wait | p95 wait "
        "| switching share | mean memory reserved |")


def row(trace: Trace, out: Outcome) -> str:
    return (f"| {trace.spec.kind} | {trace.spec.seed} | {out.policy} | {out.loads} | {out.evictions} "
            f"| {out.idle_unloads} | {out.refused} | {out.mean_wait:.2f} s | {out.wait_percentile(95):.1f} s "
            f"| {100 * out.switching_share:.1f} % | {out.mean_memory_bytes / GIB:.1f} GiB "
            f"({100 * out.mean_memory_bytes / out.capacity_bytes:.0f} %) |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", choices=TRACES, action="append", help="repeatable; default zipf")
    ap.add_argument("--seeds", default="7", help="comma-separated, e.g. 1,2,3,4,5")
    ap.add_argument("--duration", type=float, default=TraceSpec.duration, help="seconds")
    ap.add_argument("--models", type=int, default=TraceSpec.models)
    ap.add_argument("--rate", type=float, default=TraceSpec.rate, help="mean req/s, all models")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    ap.add_argument("--wait", type=float, default=300.0, help="each request's wait budget, s")
    ap.add_argument("--policy", action="append", choices=sorted(POLICIES), help="repeatable; default all")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of the modelium policy: a scheduler key (min_residency_seconds=10) "
                         "or an orchestration key (auto_unload_after_seconds=0)")
    args = ap.parse_args(argv)
    quiet_logs()
    overrides = {k: float(v) if v.replace(".", "", 1).isdigit() else v
                 for k, v in (item.split("=", 1) for item in args.set)}
    inventory = make_inventory(args.gpus, args.gpu_gib)
    print(f"devices: {args.gpus} x {args.gpu_gib:.0f} GiB (90 % usable); wait budget {args.wait:.0f} s")
    print(HEAD)
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in args.trace or ["zipf"]:
        for seed in (int(s) for s in args.seeds.split(",")):
            spec = TraceSpec(kind=kind, seed=seed, duration=args.duration, models=args.models, rate=args.rate)
            if kind == "bursty":
                spec = replace(spec, burst_sigma=1.5, phase_seconds=0.0)
            trace = make_trace(spec)
            for policy in args.policy or DEFAULT_POLICIES:
                out = simulate(trace, inventory, policy, wait_seconds=args.wait,
                               overrides=overrides if policy == "modelium" else None)
                print(row(trace, out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
