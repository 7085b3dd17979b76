"""ModeliumMetrics: exposition, QPS window, idle time, loaded gauges, private registry."""

from __future__ import annotations

import re
import urllib.request

import pytest
from prometheus_client import REGISTRY

from modelium.metrics import ModeliumMetrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def value(m: ModeliumMetrics, name: str, **labels: str) -> float | None:
    """A sample's value from render(), or None if absent."""
    body = m.render()[0].decode()
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        if got == labels:
            return float(match.group(4))
    return None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> ModeliumMetrics:
    return ModeliumMetrics(qps_window_seconds=60, clock=clock)


def test_request_counter_and_latency_histogram(metrics: ModeliumMetrics) -> None:
    metrics.observe_request("gpt2", "ray_serve", "ok", 0.02)
    metrics.observe_request("gpt2", "ray_serve", "ok", 3.0)
    metrics.observe_request("gpt2", "ray_serve", "bad_request", 0.001)
    assert value(metrics, "modelium_requests_total", model="gpt2", runtime="ray_serve",
                 status="ok") == 2
    assert value(metrics, "modelium_requests_total", model="gpt2", runtime="ray_serve",
                 status="bad_request") == 1
    assert value(metrics, "modelium_request_latency_seconds_count", model="gpt2",
                 runtime="ray_serve") == 3
    assert value(metrics, "modelium_request_latency_seconds_bucket", model="gpt2",
                 runtime="ray_serve", le="0.025") == 2
    assert value(metrics, "modelium_request_latency_seconds_bucket", model="gpt2",
                 runtime="ray_serve", le="60.0") == 3
    body, ctype = metrics.render()
    assert ctype.startswith("text/plain")
    assert all(
        name.startswith("modelium_")
        for name in re.findall(r"^# TYPE (\S+)", body.decode(), flags=re.M)
    )


def test_qps_window_ages_out(metrics: ModeliumMetrics, clock: FakeClock) -> None:
    for _ in range(30):
        metrics.observe_request("m", "ray_serve", "ok", 0.01)
    assert metrics.qps("m") == pytest.approx(0.5)
    clock.now += 30
    for _ in range(6):
        metrics.observe_request("m", "ray_serve", "ok", 0.01)
    assert metrics.qps("m") == pytest.approx(36 / 60)
    clock.now += 31  # first 30 are now older than the window
    assert metrics.qps("m") == pytest.approx(6 / 60)
    clock.now += 60
    assert metrics.qps("m") == 0.0
    assert metrics.qps("never-seen") == 0.0


def test_idle_seconds(metrics: ModeliumMetrics, clock: FakeClock) -> None:
    metrics.mark_loaded("m", "ray_serve", "gpu:0")
    clock.now += 40
    assert metrics.idle_seconds("m") == pytest.approx(40)
    metrics.request_started("m")
    assert metrics.in_flight("m") == 1
    clock.now += 5
    assert metrics.idle_seconds("m") == 0.0  # busy
    metrics.observe_request("m", "ray_serve", "ok", 5)
    metrics.request_finished("m")
    assert metrics.in_flight("m") == 0
    clock.now += 12
    assert metrics.idle_seconds("m") == pytest.approx(12)
    assert value(metrics, "modelium_model_idle_seconds", model="m") == pytest.approx(12)
    assert value(metrics, "modelium_model_qps", model="m") == pytest.approx(1 / 60)
    assert value(metrics, "modelium_requests_in_flight", model="m") == 0


def test_reload_resets_idle(metrics: ModeliumMetrics, clock: FakeClock) -> None:
    metrics.mark_loaded("m", "ray_serve", "gpu:0")
    metrics.observe_request("m", "ray_serve", "ok", 0.1)
    metrics.mark_unloaded("m")
    clock.now += 1000
    metrics.mark_loaded("m", "ray_serve", "gpu:0")
    clock.now += 3
    assert metrics.idle_seconds("m") == pytest.approx(3)


def test_loaded_gauges_go_to_zero(metrics: ModeliumMetrics) -> None:
    metrics.mark_loaded("a", "ray_serve", "gpu:0")
    metrics.mark_loaded("b", "ray_serve", "gpu:0")
    assert value(metrics, "modelium_models_loaded", runtime="ray_serve", device="gpu:0") == 2
    assert value(metrics, "modelium_model_loaded", model="a", runtime="ray_serve",
                 device="gpu:0") == 1
    metrics.mark_unloaded("a")
    metrics.mark_unloaded("b")
    metrics.mark_unloaded("never-loaded")
    assert value(metrics, "modelium_models_loaded", runtime="ray_serve", device="gpu:0") == 0
    assert value(metrics, "modelium_model_loaded", model="a", runtime="ray_serve",
                 device="gpu:0") is None
    assert value(metrics, "modelium_model_qps", model="a") is None  # only loaded models
    assert metrics.loaded_models() == []


def test_moving_a_model_moves_its_series(metrics: ModeliumMetrics) -> None:
    metrics.mark_loaded("a", "ray_serve", "gpu:0")
    metrics.mark_loaded("a", "ray_serve", "gpu:1")
    assert value(metrics, "modelium_models_loaded", runtime="ray_serve", device="gpu:0") == 0
    assert value(metrics, "modelium_models_loaded", runtime="ray_serve", device="gpu:1") == 1
    assert value(metrics, "modelium_model_loaded", model="a", runtime="ray_serve",
                 device="gpu:0") is None


def test_lifecycle_counters(metrics: ModeliumMetrics) -> None:
    metrics.observe_load("m", "ray_serve", 12.0, ok=True)
    metrics.observe_load("m", "ray_serve", 1.0, ok=False)
    metrics.count_unload("m", "ray_serve", "idle")
    metrics.count_decision("place", "best-fit")
    metrics.count_decision("place", "best-fit")
    metrics.count_drop("filed")
    metrics.count_drop("quarantined", "no-weights")
    assert value(metrics, "modelium_model_loads_total", model="m", runtime="ray_serve",
                 result="ok") == 1
    assert value(metrics, "modelium_model_loads_total", model="m", runtime="ray_serve",
                 result="error") == 1
    assert value(metrics, "modelium_model_load_seconds_count", runtime="ray_serve") == 2
    assert value(metrics, "modelium_model_unloads_total", model="m", runtime="ray_serve",
                 reason="idle") == 1
    assert value(metrics, "modelium_decisions_total", action="place", reason="best-fit") == 2
    assert value(metrics, "modelium_drops_total", outcome="filed", reason="") == 1
    assert value(metrics, "modelium_drops_total", outcome="quarantined",
                 reason="no-weights") == 1


def test_registry_is_private(metrics: ModeliumMetrics) -> None:
    metrics.observe_request("m", "ray_serve", "ok", 0.1)
    assert metrics.registry is not REGISTRY
    assert REGISTRY.get_sample_value(
        "modelium_requests_total", {"model": "m", "runtime": "ray_serve", "status": "ok"}
    ) is None
    assert metrics.registry.get_sample_value(
        "modelium_requests_total", {"model": "m", "runtime": "ray_serve", "status": "ok"}
    ) == 1
    ModeliumMetrics()  # a second instance must not clash over metric names


def test_gpu_gauges_from_source() -> None:
    m = ModeliumMetrics(gpu_memory_source=lambda: [("gpu:0", 5, 80), ("gpu:1", 0, 24)])
    assert value(m, "modelium_gpu_memory_used_bytes", device="gpu:0") == 5
    assert value(m, "modelium_gpu_memory_total_bytes", device="gpu:1") == 24
    empty = ModeliumMetrics(gpu_memory_source=lambda: [])
    assert b"modelium_gpu_memory_used_bytes" not in empty.render()[0]
    assert b"modelium_gpu_memory" not in ModeliumMetrics().render()[0]

    def broken() -> list[tuple[str, int, int]]:
        raise RuntimeError("NVML gone")

    assert b"modelium_gpu_memory" not in ModeliumMetrics(gpu_memory_source=broken).render()[0]


def test_reserved_bytes_gauge(metrics: ModeliumMetrics) -> None:
    metrics.set_reserved({"gpu:0": 100, "gpu:1": 7})
    assert value(metrics, "modelium_memory_reserved_bytes", device="gpu:0") == 100
    metrics.set_reserved({"gpu:1": 9})
    assert value(metrics, "modelium_memory_reserved_bytes", device="gpu:0") == 0
    assert value(metrics, "modelium_memory_reserved_bytes", device="gpu:1") == 9


def test_http_server_serves_registry(metrics: ModeliumMetrics) -> None:
    metrics.count_decision("evict", "idle")
    metrics.start_http_server("127.0.0.1", 0)
    try:
        port = metrics.http_port
        assert port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert 'modelium_decisions_total{action="evict",reason="idle"} 1.0' in body
        with pytest.raises(RuntimeError):
            metrics.start_http_server("127.0.0.1", 0)
    finally:
        metrics.close()
    assert metrics.http_port is None
    metrics.close()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
