"""Modelium's Prometheus metrics, on a private registry.

A private `CollectorRegistry` keeps tests and several daemons in one process apart and keeps
library metrics out of `/metrics`. Per-model QPS and idle time are also what the idle and
eviction policies read, so they live here as plain numbers (with an injectable clock for
tests) and are exported as gauges computed at scrape time.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import start_http_server as _prom_start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LOAD_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

GpuMemorySource = Callable[[], list[tuple[str, int, int]]]


class _ScrapeTimeCollector:
    """Gauges computed when scraped: per-model QPS/idle and live GPU memory."""

    def __init__(self, owner: ModeliumMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        qps = GaugeMetricFamily(
            "modelium_model_qps", "Requests per second over the QPS window", labels=["model"]
        )
        idle = GaugeMetricFamily(
            "modelium_model_idle_seconds",
            "Seconds since the model's last request ended (or since it loaded)",
            labels=["model"],
        )
        for model in self._owner.loaded_models():
            qps.add_metric([model], self._owner.qps(model))
            idle.add_metric([model], self._owner.idle_seconds(model))
        yield qps
        yield idle

        usage = self._owner.gpu_memory()
        if usage:
            used = GaugeMetricFamily(
                "modelium_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["device"]
            )
            total = GaugeMetricFamily(
                "modelium_gpu_memory_total_bytes", "GPU memory total (NVML)", labels=["device"]
            )
            for device_id, used_bytes, total_bytes in usage:
                used.add_metric([device_id], used_bytes)
                total.add_metric([device_id], total_bytes)
            yield used
            yield total


class ModeliumMetrics:
    """All of Modelium's metrics plus the per-model activity numbers policy reads."""

    def __init__(
        self,
        *,
        qps_window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        gpu_memory_source: GpuMemorySource | None = None,
    ) -> None:
        if qps_window_seconds <= 0:
            raise ValueError(f"qps_window_seconds must be > 0, got {qps_window_seconds}")
        self.qps_window_seconds = qps_window_seconds
        self._clock = clock
        self._gpu_memory_source = gpu_memory_source
        self._lock = threading.Lock()
        self._request_times: dict[str, deque[float]] = {}
        self._last_end: dict[str, float] = {}
        self._loaded_at: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}
        self._loaded: dict[str, tuple[str, str]] = {}  # model -> (runtime, device)
        self._loaded_series: set[tuple[str, str]] = set()
        self._reserved_devices: set[str] = set()
        self._server: Any = None
        self._server_thread: threading.Thread | None = None

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "modelium_requests", "Requests handled, by outcome",
            ["model", "runtime", "status"], registry=r,
        )
        self.request_latency = Histogram(
            "modelium_request_latency_seconds", "Request latency through the gateway",
            ["model", "runtime"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.requests_in_flight = Gauge(
            "modelium_requests_in_flight", "Requests being served now", ["model"], registry=r
        )
        self.models_loaded = Gauge(
            "modelium_models_loaded", "Loaded models per runtime and device",
            ["runtime", "device"], registry=r,
        )
        self.model_loaded = Gauge(
            "modelium_model_loaded", "1 while the model is loaded",
            ["model", "runtime", "device"], registry=r,
        )
        self.model_loads = Counter(
            "modelium_model_loads", "Model loads, by result",
            ["model", "runtime", "result"], registry=r,
        )
        self.model_load_seconds = Histogram(
            "modelium_model_load_seconds", "Time to load a model",
            ["runtime"], buckets=LOAD_BUCKETS, registry=r,
        )
        self.model_unloads = Counter(
            "modelium_model_unloads", "Model unloads, by reason",
            ["model", "runtime", "reason"], registry=r,
        )
        self.decisions = Counter(
            "modelium_decisions", "Brain decisions, by action and reason code",
            ["action", "reason"], registry=r,
        )
        self.drops = Counter(
            "modelium_drops", "Model folders dropped into incoming/, by outcome",
            ["outcome", "reason"], registry=r,
        )
        self.memory_reserved = Gauge(
            "modelium_memory_reserved_bytes", "Bytes Modelium reserved per device",
            ["device"], registry=r,
        )
        r.register(_ScrapeTimeCollector(self))

    # --- requests ---------------------------------------------------------------------

    def observe_request(self, model: str, runtime: str, status: str, seconds: float) -> None:
        """Count a finished request and record it for QPS and idle time."""
        self.requests.labels(model, runtime, status).inc()
        self.request_latency.labels(model, runtime).observe(max(0.0, seconds))
        now = self._clock()
        with self._lock:
            self._request_times.setdefault(model, deque()).append(now)
            self._prune(model, now)
            self._last_end[model] = now

    def request_started(self, model: str) -> None:
        with self._lock:
            self._in_flight[model] = self._in_flight.get(model, 0) + 1
            self.requests_in_flight.labels(model).set(self._in_flight[model])

    def request_finished(self, model: str) -> None:
        now = self._clock()
        with self._lock:
            count = max(0, self._in_flight.get(model, 0) - 1)
            self._in_flight[model] = count
            self.requests_in_flight.labels(model).set(count)
            self._last_end[model] = now

    def in_flight(self, model: str) -> int:
        with self._lock:
            return self._in_flight.get(model, 0)

    def _prune(self, model: str, now: float) -> None:
        times = self._request_times.get(model)
        if times is None:
            return
        cutoff = now - self.qps_window_seconds
        while times and times[0] <= cutoff:
            times.popleft()

    def qps(self, model: str) -> float:
        """Requests in the last window divided by the window length."""
        now = self._clock()
        with self._lock:
            self._prune(model, now)
            return len(self._request_times.get(model, ())) / self.qps_window_seconds

    def idle_seconds(self, model: str) -> float:
        """Seconds since the last request ended or the model loaded (the later); 0 if busy.

        Taking the later of the two means a model reloaded on demand does not look idle
        since a request from before it was unloaded.
        """
        now = self._clock()
        with self._lock:
            if self._in_flight.get(model, 0) > 0:
                return 0.0
            marks = [
                t for t in (self._last_end.get(model), self._loaded_at.get(model)) if t is not None
            ]
            return max(0.0, now - max(marks)) if marks else 0.0

    # --- model lifecycle --------------------------------------------------------------

    def mark_loaded(self, model: str, runtime: str, device: str) -> None:
        with self._lock:
            old = self._loaded.get(model)
            if old is not None and old != (runtime, device):
                self.model_loaded.remove(model, *old)
            self._loaded[model] = (runtime, device)
            self._loaded_at[model] = self._clock()
            self.model_loaded.labels(model, runtime, device).set(1)
            self._refresh_loaded_counts()

    def mark_unloaded(self, model: str) -> None:
        with self._lock:
            old = self._loaded.pop(model, None)
            self._loaded_at.pop(model, None)
            if old is not None:
                self.model_loaded.remove(model, *old)
            self._refresh_loaded_counts()

    def _refresh_loaded_counts(self) -> None:
        """Set every (runtime, device) series ever seen, 0 included, so none goes stale."""
        counts: dict[tuple[str, str], int] = {}
        for key in self._loaded.values():
            counts[key] = counts.get(key, 0) + 1
        self._loaded_series.update(counts)
        for key in self._loaded_series:
            self.models_loaded.labels(*key).set(counts.get(key, 0))

    def loaded_models(self) -> list[str]:
        with self._lock:
            return sorted(self._loaded)

    def observe_load(self, model: str, runtime: str, seconds: float, ok: bool) -> None:
        self.model_loads.labels(model, runtime, "ok" if ok else "error").inc()
        self.model_load_seconds.labels(runtime).observe(max(0.0, seconds))

    def count_unload(self, model: str, runtime: str, reason_code: str) -> None:
        self.model_unloads.labels(model, runtime, reason_code).inc()

    def count_decision(self, action: str, reason_code: str) -> None:
        self.decisions.labels(action, reason_code).inc()

    def count_drop(self, outcome: str, reason_code: str = "") -> None:
        self.drops.labels(outcome, reason_code).inc()

    # --- memory -----------------------------------------------------------------------

    def set_reserved(self, by_device: Mapping[str, int]) -> None:
        """Mirror the ledger; devices no longer holding reservations go to 0."""
        with self._lock:
            self._reserved_devices.update(by_device)
            for device in self._reserved_devices:
                self.memory_reserved.labels(device).set(by_device.get(device, 0))

    def gpu_memory(self) -> list[tuple[str, int, int]]:
        """The GPU source's reading; [] when there is none or it fails (never breaks a scrape)."""
        if self._gpu_memory_source is None:
            return []
        try:
            return list(self._gpu_memory_source())
        except Exception:
            return []

    # --- exposition -------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for a `/metrics` response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def start_http_server(self, host: str, port: int) -> tuple[Any, threading.Thread]:
        """Serve this registry on its own port; returns (server, thread). Stop with close().

        `port` 0 picks a free port; read it from `self.http_port`.
        """
        if self._server is not None:
            raise RuntimeError("metrics HTTP server already running")
        server, thread = _prom_start_http_server(port, addr=host, registry=self.registry)
        self._server, self._server_thread = server, thread
        return server, thread

    @property
    def http_port(self) -> int | None:
        return int(self._server.server_port) if self._server is not None else None

    def close(self) -> None:
        """Stop the HTTP server if one is running; safe to call twice."""
        server, thread = self._server, self._server_thread
        self._server = self._server_thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
