"""Metrics of the scheduler: queues, waits, swaps, drains, and where device time goes.

``DeviceActivity`` measures, per device, the seconds during which at least one model was
loading and the seconds during which at least one request was being served: llmux's
"switching share" is ``loading / (loading + serving)`` (``modelium_device_seconds_total``
by ``activity``; ``GET /status`` shows the share). Queue depth and per-model memory are
read at scrape time from the orchestrator (``set_views``), so they can never go stale.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ACTIVITIES = ("loading", "serving")


class DeviceActivity:
    """Union-of-intervals timers: a device is 'loading' while any load runs on it."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str], int] = {}
        self._since: dict[tuple[str, str], float] = {}
        self._seconds: dict[tuple[str, str], float] = {}

    def begin(self, device: str, activity: str) -> None:
        key = (device, activity)
        with self._lock:
            if self._active.get(key, 0) == 0:
                self._since[key] = self._clock()
            self._active[key] = self._active.get(key, 0) + 1

    def end(self, device: str, activity: str) -> None:
        key = (device, activity)
        with self._lock:
            count = self._active.get(key, 0)
            if count <= 0:
                return
            self._active[key] = count - 1
            if count == 1:
                self._seconds[key] = self._seconds.get(key, 0.0) + self._clock() - self._since.pop(key)

    def seconds(self) -> dict[tuple[str, str], float]:
        now = self._clock()
        with self._lock:
            out = dict(self._seconds)
            for key, since in self._since.items():
                out[key] = out.get(key, 0.0) + now - since
            return out

    def switching_share(self) -> dict[str, float]:
        """device -> loading / (loading + serving) so far (0 when neither happened)."""
        totals = self.seconds()
        out: dict[str, float] = {}
        for device in sorted({d for d, _ in totals}):
            loading = totals.get((device, "loading"), 0.0)
            serving = totals.get((device, "serving"), 0.0)
            out[device] = loading / (loading + serving) if loading + serving > 0 else 0.0
        return out


class SchedulingMetrics:
    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float]) -> None:
        self.activity = DeviceActivity(clock)
        self.queue_wait = Histogram(
            "modelium_queue_wait_seconds", "Time a request waited in its model's queue",
            ["model"], buckets=WAIT_BUCKETS, registry=registry,
        )
        self.swaps = Counter(
            "modelium_swaps", "Swaps: models drained and unloaded to make room for another",
            ["device"], registry=registry,
        )
        self.drain_seconds = Histogram(
            "modelium_drain_seconds", "From marking a model draining to its unload starting",
            buckets=WAIT_BUCKETS, registry=registry,
        )
        self.queue_depth: Callable[[], Mapping[str, Mapping[str, int]]] = dict
        self.model_memory: Callable[[], Mapping[str, Mapping[str, int]]] = dict
        registry.register(_Collector(self))

    def set_views(self, queue_depth: Callable[[], Mapping[str, Mapping[str, int]]],
                  model_memory: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        """``queue_depth()``: model -> {priority: waiting requests}; ``model_memory()``: model ->
        {"estimate"|"reserved"|"measured": bytes}."""
        self.queue_depth, self.model_memory = queue_depth, model_memory


class _Collector:
    def __init__(self, owner: SchedulingMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        owner = self._owner
        seconds = CounterMetricFamily(
            "modelium_device_seconds", "Seconds a device spent with a model loading / a request "
            "being served (switching share = loading / (loading + serving))",
            labels=["device", "activity"],
        )
        for (device, activity), value in sorted(owner.activity.seconds().items()):
            seconds.add_metric([device, activity], value)
        yield seconds
        depth = GaugeMetricFamily("modelium_queue_depth", "Requests waiting in the model's queue, by "
                                  "priority (X-Priority / a job's priority; sum by model for the total)",
                                  labels=["model", "priority"])
        for model, by_priority in sorted(_safe(owner.queue_depth).items()):
            for priority, count in by_priority.items():
                depth.add_metric([model, priority], count)
        yield depth
        memory = GaugeMetricFamily(
            "modelium_model_memory_bytes", "Memory of a model: the estimate, what the ledger "
            "reserves, and the footprint measured on its device", labels=["model", "kind"])
        for model, kinds in sorted(_safe(owner.model_memory).items()):
            for kind, value in sorted(kinds.items()):
                memory.add_metric([model, kind], value)
        yield memory


def _safe(view: Callable[[], Mapping[str, Any]]) -> Mapping[str, Any]:
    try:
        return view()
    except Exception:  # noqa: BLE001 - a scrape must never fail
        return {}
