"""Metric sources: PromQL answers parsed, fallback to local counters, and the orchestrator
deciding idle unloads on the source's numbers."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from modelium.config import settings_from_dict
from modelium.hardware import GIB, Device, Inventory, MemoryLedger
from modelium.metrics import LocalMetricSource, ModeliumMetrics, PrometheusMetricSource
from modelium.metrics.source import IDLE_QUERY, PrometheusQueryError, parse_vector, qps_query
from modelium.orchestrator import ModelState, Orchestrator
from tests.unit.fakes import FakeManager, make_config_only_model


def _vector(*samples: tuple[str, str]) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"model": model}, "value": [1700000000.0, value]} for model, value in samples
    ]}}


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- parsing ----------------------------------------------------------------------------


def test_parse_vector_reads_model_values_and_skips_nan() -> None:
    payload = _vector(("a", "1.5"), ("b", "NaN"), ("c", "0"))
    payload["data"]["result"].append({"metric": {}, "value": [0, "3"]})  # no model label
    assert parse_vector(payload) == {"a": 1.5, "c": 0.0}


@pytest.mark.parametrize("payload, match", [
    ({"status": "error", "errorType": "bad_data", "error": "parse error at char 4"}, "bad_data"),
    ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "vector"),
    ({"status": "success", "data": {"resultType": "vector",
                                    "result": [{"metric": {"model": "a"}}]}}, "bad sample"),
    (["not", "an", "object"], "JSON object"),
])
def test_parse_vector_rejects_unusable_answers(payload, match) -> None:
    with pytest.raises(PrometheusQueryError, match=match):
        parse_vector(payload)


def test_queries_sum_rate_over_the_window_and_min_idle_over_gateways() -> None:
    assert qps_query(60) == "sum by (model) (rate(modelium_requests_total[60000ms]))"
    assert qps_query(2.5) == "sum by (model) (rate(modelium_requests_total[2500ms]))"
    assert IDLE_QUERY.startswith("min by (model) (modelium_model_idle_seconds")
    assert "time() - timestamp(modelium_model_idle_seconds)" in IDLE_QUERY


# --- the Prometheus source --------------------------------------------------------------


def _prometheus(handler, metrics: ModeliumMetrics | None = None, window: float = 20.0):
    metrics = metrics or ModeliumMetrics(qps_window_seconds=window, clock=_Clock())
    source = PrometheusMetricSource(
        "http://prom.test:9090/", window_seconds=window, timeout=1.0,
        fallback=LocalMetricSource(metrics), transport=httpx.MockTransport(handler),
    )
    return source, metrics


async def test_refresh_takes_one_snapshot_for_all_models() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query"
        query = request.url.params["query"]
        seen.append(query)
        if query.startswith("sum by (model) (rate("):
            return httpx.Response(200, json=_vector(("busy", "4.25")))
        return httpx.Response(200, json=_vector(("busy", "0.5"), ("quiet", "42")))

    clock = _Clock()
    metrics = ModeliumMetrics(qps_window_seconds=20, clock=clock)
    for name in ("busy", "quiet", "unscraped"):
        metrics.mark_loaded(name, "triton", "cpu")
    clock.now += 100  # locally every model has been idle 100 s
    source, _ = _prometheus(handler, metrics)
    await source.refresh()
    assert len(seen) == 2 and "[20000ms]" in seen[0] + seen[1]
    assert source.healthy and source.refreshed_at is not None
    assert (source.qps("busy"), source.idle_seconds("busy")) == (4.25, 0.5)
    # Prometheus knows "quiet" (an idle series) but saw no request in the window: 0 QPS.
    assert (source.qps("quiet"), source.idle_seconds("quiet")) == (0.0, 42.0)
    assert source.source_of("quiet") == "prometheus"
    # Not scraped yet: this daemon's numbers, and saying so.
    assert source.idle_seconds("unscraped") == 100.0
    assert source.source_of("unscraped").startswith("local (fallback, not in prometheus")
    await source.aclose()


async def test_idle_is_capped_by_what_this_gateway_saw_since_the_last_scrape() -> None:
    clock = _Clock()
    metrics = ModeliumMetrics(qps_window_seconds=20, clock=clock)
    metrics.mark_loaded("m", "triton", "cpu")
    clock.now += 3  # served nothing, but loaded 3 s ago
    source, _ = _prometheus(lambda r: httpx.Response(200, json=_vector(("m", "500"))), metrics)
    await source.refresh()
    assert source.idle_seconds("m") == 3.0
    await source.aclose()


async def test_unreachable_prometheus_falls_back_to_local_and_logs_once(caplog) -> None:
    calls = {"n": 0, "up": False}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if not calls["up"]:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=_vector(("m", "7")))

    clock = _Clock()
    metrics = ModeliumMetrics(qps_window_seconds=10, clock=clock)
    metrics.mark_loaded("m", "triton", "cpu")
    for _ in range(5):
        metrics.observe_request("m", "triton", "ok", 0.01)
    clock.now += 2
    source, _ = _prometheus(handler, metrics, window=10)
    assert source.source_of("m").startswith("local (fallback")  # before any refresh
    with caplog.at_level(logging.INFO, logger="modelium.metrics.source"):
        for _ in range(3):
            await source.refresh()  # never raises
        assert not source.healthy
        assert (source.qps("m"), source.idle_seconds("m")) == (0.5, 2.0)
        assert "prometheus unavailable: ConnectError" in source.source_of("m")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "prom.test" in warnings[0].getMessage()

        calls["up"] = True
        await source.refresh()
        assert source.healthy and source.source_of("m") == "prometheus"
        assert source.qps("m") == 7.0 and source.idle_seconds("m") == 2.0
        assert any("answers again" in r.getMessage() for r in caplog.records)
    await source.aclose()


@pytest.mark.parametrize("response", [
    httpx.Response(503, text="service unavailable"),
    httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "boom"}),
])
async def test_bad_answers_fall_back_too(response) -> None:
    source, metrics = _prometheus(lambda r: response)
    metrics.mark_loaded("m", "triton", "cpu")
    await source.refresh()
    assert not source.healthy and source.source_of("m").startswith("local (fallback")
    assert source.qps("m") == 0.0
    await source.aclose()


async def test_timeout_falls_back() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    source, _ = _prometheus(handler)
    await source.refresh()
    assert "ReadTimeout" in (source.error or "")
    await source.aclose()


# --- the orchestrator reads the source --------------------------------------------------


class FakeSource:
    """Numbers set by the test; counts refreshes."""

    def __init__(self, idle: dict[str, float], qps: dict[str, float]) -> None:
        self.idle, self.rates, self.refreshes = idle, qps, 0

    async def refresh(self) -> None:
        self.refreshes += 1

    def qps(self, model: str) -> float:
        return self.rates.get(model, 0.0)

    def idle_seconds(self, model: str) -> float:
        return self.idle.get(model, 0.0)

    def source_of(self, model: str) -> str:
        return "fake"

    async def aclose(self) -> None:
        return None


def _orchestrator(tmp_path: Path, source, gpu_gib: float = 8.0, **config) -> tuple[Orchestrator, FakeManager]:
    settings = settings_from_dict(config, base_dir=tmp_path)
    inventory = Inventory(
        devices=(Device(id="gpu:0", kind="gpu", index=0, total_bytes=int(gpu_gib * GIB), name="simulated"),),
        source="configured",
    )
    manager = FakeManager()
    orchestrator = Orchestrator(settings, {"ray_serve": manager}, inventory, MemoryLedger(),
                                ModeliumMetrics(), metric_source=source)
    return orchestrator, manager


async def test_idle_unload_uses_the_sources_numbers_and_names_them(tmp_path):
    # Locally every model was loaded a moment ago (idle ~0 s): only the source can make
    # "quiet" idle, and only the source's QPS keeps "popular" loaded.
    source = FakeSource(idle={"quiet": 900.0, "popular": 900.0, "fresh": 5.0},
                        qps={"quiet": 0.1, "popular": 3.0})
    orchestrator, _ = _orchestrator(
        tmp_path, source, orchestration={"auto_unload_after_seconds": 600, "min_qps_threshold": 0.5},
    )
    await orchestrator.start()
    for name in ("quiet", "popular", "fresh"):
        await orchestrator.add_model(name, make_config_only_model(tmp_path / f"models/repository/{name}"),
                                     wait=True)
    await orchestrator.tick()
    await orchestrator.quiesce()
    assert source.refreshes >= 1
    states = {r.name: r.state for r in orchestrator.models()}
    assert states == {"quiet": ModelState.UNLOADED, "popular": ModelState.READY,
                      "fresh": ModelState.READY}
    decision = next(d for d in orchestrator.decisions if d["action"] == "idle_unload")
    assert decision["model"] == "quiet"
    assert decision["numbers"] == {"idle_seconds": 900.0, "qps": 0.1, "source": "fake"}
    assert "idle 900.0s, 0.100 qps, from fake" in decision["reason"]
    assert "from fake" in orchestrator.get("quiet").reason


async def test_eviction_reads_the_sources_request_rate_and_records_its_numbers(tmp_path):
    # ~0.72 GiB per tiny model, 1.8 GiB usable: the third load must evict one; the source
    # (other gateways' traffic too) says "a" is busy although this gateway saw no request.
    source = FakeSource(idle={"a": 1.0, "b": 300.0}, qps={"a": 2.0, "b": 0.0})
    orchestrator, _ = _orchestrator(tmp_path, source, gpu_gib=2.0)
    await orchestrator.start()
    for name in ("a", "b", "c"):
        await orchestrator.add_model(name, make_config_only_model(tmp_path / f"models/repository/{name}"),
                                     wait=True)
    assert orchestrator.get("b").state == ModelState.UNLOADED
    assert orchestrator.get("a").state == ModelState.READY
    evict = next(d for d in orchestrator.decisions if d["action"] == "evict")
    assert set(evict["numbers"]["victims"]) == {"b"}
    assert evict["numbers"]["victims"]["b"]["rate_per_s"] == 0.0
    assert "evicted to make room for c (0.000 req/s" in orchestrator.get("b").reason


async def test_local_source_is_the_default_and_dead_prometheus_never_breaks_reconcile(tmp_path):
    orchestrator, _ = _orchestrator(tmp_path, None)
    assert isinstance(orchestrator.metric_source, LocalMetricSource)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    metrics = ModeliumMetrics()
    source = PrometheusMetricSource("http://prom.test", window_seconds=60, timeout=0.5,
                                    fallback=LocalMetricSource(metrics),
                                    transport=httpx.MockTransport(refuse))
    settings = settings_from_dict(
        {"orchestration": {"auto_unload_after_seconds": 0.01, "min_qps_threshold": 1}},
        base_dir=tmp_path)
    inventory = Inventory(devices=(Device(id="gpu:0", kind="gpu", index=0, total_bytes=8 * GIB,
                                          name="simulated"),), source="configured")
    orchestrator = Orchestrator(settings, {"ray_serve": FakeManager()}, inventory, MemoryLedger(),
                                metrics, metric_source=source)
    await orchestrator.start()
    await orchestrator.add_model("m", make_config_only_model(tmp_path / "models/repository/m"), wait=True)
    import asyncio

    await asyncio.sleep(0.05)
    await orchestrator.tick()
    await orchestrator.quiesce()
    assert orchestrator.get("m").state == ModelState.UNLOADED
    decision = next(d for d in orchestrator.decisions if d["action"] == "idle_unload")
    assert decision["numbers"]["source"].startswith("local (fallback, prometheus unavailable")
    await source.aclose()
