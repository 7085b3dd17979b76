"""Run Modelium's real orchestrator against a request trace in virtual time.

Nothing here re-implements the scheduler: a trace is replayed through
``Orchestrator.predict`` (admission, queues, the scheduler, drains, idle unloads, the
control loop), with runtimes replaced by :class:`SimulatedRuntime`, whose loads, unloads
and requests just *take time*. Time is virtual: :class:`VirtualTimeLoop` is an asyncio
event loop whose clock jumps straight to the next timer whenever nothing is ready, so four
hours of traffic replay in seconds, and the same seed gives the same numbers.

Baselines are the same orchestrator with other settings (``POLICIES``): the victim order
(LRU, first-loaded-first, Ollama's name order) and no residency window or amortisation,
i.e. swap at the first request that needs room.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import selectors
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modelium.analysis import ModelProfile, estimate_memory  # noqa: E402
from modelium.brain import usable_bytes  # noqa: E402
from modelium.config import settings_from_dict  # noqa: E402
from modelium.config.settings import SchedulerSettings  # noqa: E402
from modelium.hardware import Inventory, MemoryLedger  # noqa: E402
from modelium.metrics import ModeliumMetrics  # noqa: E402
from modelium.orchestrator import (  # noqa: E402
    LoadTimeoutError,
    ModelState,
    Orchestrator,
    TooManyRequestsError,
)
from modelium.runtimes.base import AdoptionReport, LoadRequest, RuntimeHealth, RuntimeManager  # noqa: E402

GIB = 1024**3


# --------------------------------------------------------------------------- virtual time


class _JumpingSelector(selectors.DefaultSelector):
    """Never sleeps while a timer is pending: advances the loop's clock to it instead.
    Real file descriptors (the loop's self-pipe) are still polled, without waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None):  # type: ignore[override]
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # nothing scheduled at all: wait for real (a thread's callback)
            return super().select(None)
        assert self.loop is not None
        self.loop.now += timeout
        return []


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """``asyncio.to_thread`` work runs at once, so no real time passes unseen."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            future.set_exception(exc)
        return future


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.set_default_executor(_InlineExecutor())

    def time(self) -> float:
        return self.now


def run_virtual(coro: Any) -> Any:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


# --------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class SimModel:
    name: str
    size_bytes: int  # what the scheduler will reserve
    load_seconds: float
    unload_seconds: float = 1.0


class SimulatedRuntime(RuntimeManager):
    """Loads take the model's load time, requests their service time; nothing else."""

    name = "ray_serve"

    def __init__(self, models: dict[str, SimModel]) -> None:
        self.models = models
        self.loaded: set[str] = set()
        self.in_flight: dict[str, int] = {}
        self.cut_off = 0  # requests whose model was unloaded under them (must stay 0)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.loaded.clear()

    async def load(self, request: LoadRequest) -> None:
        await asyncio.sleep(self.models[request.public_name].load_seconds)
        self.loaded.add(request.name)

    async def unload(self, name: str) -> None:
        self.cut_off += self.in_flight.get(name, 0)
        await asyncio.sleep(self.models[name.split(".REV")[0]].unload_seconds)
        self.loaded.discard(name)

    async def infer(self, name: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        try:
            await asyncio.sleep(float(parameters["service_seconds"]))
        finally:
            self.in_flight[name] -= 1
        return {"ok": True}

    async def health(self) -> RuntimeHealth:
        return RuntimeHealth(True, "simulated")

    async def loaded_models(self) -> set[str]:
        return set(self.loaded)

    async def adopt(self, known_models: dict[str, Path]) -> AdoptionReport:
        return AdoptionReport()


def profile_of_size(name: str, size_bytes: int) -> ModelProfile:
    """A profile whose GPU estimate is ``size_bytes`` (within 1 MiB)."""
    def make(weights: int) -> ModelProfile:
        return ModelProfile(name=name, path=f"/simulated/{name}", format="safetensors",
                            architecture="BertModel", model_type="bert", task="feature-extraction",
                            parameters=weights // 2, weight_bytes=weights, dtype="bfloat16",
                            parameters_source="simulated", hidden_size=None)

    low, high = 0, size_bytes
    while high - low > 2**20:
        mid = (low + high) // 2
        if estimate_memory(make(mid), device_kind="gpu").total_bytes < size_bytes:
            low = mid
        else:
            high = mid
    return make(low)


class TimedLedger(MemoryLedger):
    """The real ledger, also integrating reserved bytes over (virtual) time."""

    def __init__(self, clock: Callable[[], float], usable: dict[str, int]) -> None:
        super().__init__()
        self._clock = clock
        self._since = 0.0
        self.byte_seconds = 0.0
        self._usable = usable
        self.peak_fraction = 0.0  # max over devices and time of reserved / usable

    def _advance(self) -> None:
        now = self._clock()
        self.byte_seconds += sum(self.by_device().values()) * (now - self._since)
        self._since = now

    def reserve(self, model: str, device_id: str, nbytes: int) -> None:
        self._advance()
        super().reserve(model, device_id, nbytes)
        self.peak_fraction = max(self.peak_fraction, self.reserved_on(device_id) / self._usable[device_id])

    def release(self, model: str) -> None:
        self._advance()
        super().release(model)


# --------------------------------------------------------------------------- policies

#: name -> (scheduler settings, other orchestration settings, victim order override)
POLICIES: dict[str, dict[str, Any]] = {
    "modelium": {"scheduler": {}, "orchestration": {}},
    "lru": {"scheduler": {"policy": "lru", "min_residency_seconds": 0, "amortization": 0},
            "orchestration": {"auto_unload_after_seconds": 0}},
    "fifo": {"scheduler": {"policy": "fifo", "min_residency_seconds": 0, "amortization": 0},
             "orchestration": {"auto_unload_after_seconds": 0}},
    # Ollama: keep-alive 300 s after the last request, new models on the emptiest GPU, the
    # idle runner with the shortest keep-alive (all equal: by name) unloaded first.
    "ollama": {"scheduler": {"min_residency_seconds": 0, "amortization": 0},
               "orchestration": {"auto_unload_after_seconds": 300, "min_qps_threshold": 0,
                                 "placement": "spread"},
               "order": "name"},
}


@dataclass
class Outcome:
    policy: str
    requests: int = 0
    served: int = 0
    refused: int = 0  # 503 after the wait budget, or 429
    loads: int = 0
    evictions: int = 0
    idle_unloads: int = 0
    waits: list[float] = field(default_factory=list)  # per served request: seconds waited
    switching_share: float = 0.0
    mean_memory_bytes: float = 0.0
    capacity_bytes: int = 0
    peak_fraction_of_usable: float = 0.0
    cut_off: int = 0  # requests whose model was unloaded under them

    @property
    def mean_wait(self) -> float:
        return sum(self.waits) / len(self.waits) if self.waits else 0.0

    def wait_percentile(self, p: float) -> float:
        if not self.waits:
            return 0.0
        ordered = sorted(self.waits)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def replay(requests: list[tuple[float, str, float]], models: dict[str, SimModel],
                 inventory: Inventory, policy: str, *, overrides: dict[str, Any] | None = None,
                 wait_seconds: float = 300.0, decision_interval: float = 10.0) -> Outcome:
    """Replay ``requests`` ((arrival, model, service seconds)) under ``policy``."""
    loop = asyncio.get_running_loop()
    spec = POLICIES[policy]
    overrides = overrides or {}
    scheduler_keys = set(SchedulerSettings.model_fields)
    scheduler = {**spec["scheduler"], **{k: v for k, v in overrides.items() if k in scheduler_keys}}
    orchestration = {**spec["orchestration"], **{k: v for k, v in overrides.items() if k not in scheduler_keys}}
    tmp = Path(tempfile.mkdtemp(prefix="modelium-sim-"))
    settings = settings_from_dict({
        "model_repository": str(tmp / "repository"), "incoming_dir": str(tmp / "incoming"),
        "failed_dir": str(tmp / "failed"), "state_dir": str(tmp / "state"),
        "vllm": {"enabled": False}, "triton": {"enabled": False},
        "orchestration": {"decision_interval_seconds": decision_interval,
                          "load_wait_timeout_seconds": wait_seconds, "max_queued_requests": 100000,
                          "max_concurrent_requests": 1000, "scheduler": scheduler,
                          **orchestration},
    }, base_dir=tmp, env={})
    metrics = ModeliumMetrics(clock=loop.time)
    ledger = TimedLedger(loop.time, {d.id: usable_bytes(d, settings.orchestration.max_gpu_memory_utilization)
                                     for d in inventory.devices})
    runtime = SimulatedRuntime(models)
    orchestrator = Orchestrator(settings, {runtime.name: runtime}, inventory, ledger, metrics, clock=loop.time)
    if "order" in spec:
        orchestrator.scheduler.policy = spec["order"]
    await orchestrator.start()
    for model in models.values():
        await orchestrator.add_model(model.name, tmp / model.name, load=False,
                                     profile=profile_of_size(model.name, model.size_bytes))
    outcome = Outcome(policy, capacity_bytes=sum(d.total_bytes for d in inventory.devices))

    async def one(name: str, service: float) -> None:
        arrived = loop.time()
        try:
            await orchestrator.predict(name, "x", {"service_seconds": service})
        except (LoadTimeoutError, TooManyRequestsError):
            outcome.refused += 1
            return
        outcome.served += 1
        outcome.waits.append(max(0.0, loop.time() - arrived - service))

    control = loop.create_task(orchestrator.run_control_loop())
    tasks = []
    start = loop.time()
    for arrival, name, service in requests:
        delay = start + arrival - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        outcome.requests += 1
        tasks.append(loop.create_task(one(name, service)))
    await asyncio.gather(*tasks)
    end = loop.time()
    control.cancel()
    await asyncio.gather(control, return_exceptions=True)
    ledger._advance()
    outcome.mean_memory_bytes = ledger.byte_seconds / max(1e-9, end - start)
    seconds = metrics.activity.seconds()
    loading = sum(v for (_, a), v in seconds.items() if a == "loading")
    serving = sum(v for (_, a), v in seconds.items() if a == "serving")
    outcome.switching_share = loading / (loading + serving) if loading + serving else 0.0
    outcome.loads = sum(r.load_count for r in orchestrator.models())
    outcome.peak_fraction_of_usable = ledger.peak_fraction
    outcome.cut_off = runtime.cut_off
    outcome.evictions = _unloads(metrics, "evicted")
    outcome.idle_unloads = _unloads(metrics, "idle")
    assert all(r.state != ModelState.FAILED for r in orchestrator.models()), "a model failed in the simulation"
    await orchestrator.stop()
    return outcome


def _unloads(metrics: ModeliumMetrics, reason: str) -> int:
    total = 0.0
    for family in metrics.model_unloads.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("reason") == reason:
                total += sample.value
    return int(total)


def quiet_logs() -> None:
    logging.getLogger("modelium").setLevel(logging.WARNING)
