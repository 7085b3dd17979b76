"""The Grafana board (examples/grafana/modelium.json) against a real daemon and a real
Prometheus, so the board cannot rot when a metric is renamed.

A daemon (its own tritonserver, two tiny python models, real requests, one unload) exports
its metrics on the separate metrics port; Debian's `prometheus` (`make prometheus`) scrapes
it every second with examples/prometheus.yml, only the target and intervals changed. Then:

1. every metric name in every query of the board is exported by the daemon (a `# TYPE`
   family or a sample; `_bucket/_sum/_count` belong to their histogram). NVML's GPU gauges
   are the one exception, and only when the daemon reports it has no NVML (`/status`
   `inventory_source`): they are then checked on the code's own exposition with a GPU
   source, and nothing else may be missing;
2. every query (Grafana's variables replaced) is valid PromQL to Prometheus's /api/v1/query;
3. the key queries return series after the traffic.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from modelium.metrics import ModeliumMetrics
from tests.e2e.daemon_harness import (
    RunningDaemon,
    free_port,
    running_daemon,
    triton_only_config,
    wait_for,
)
from tests.e2e.fixtures_triton import make_python_model_with_config
from tests.e2e.prometheus_server import FAST_GLOBAL, PrometheusServer
from tests.promql_names import (
    REPO,
    board_queries,
    exported_names,
    for_prometheus,
    is_exported,
    load_board,
    metric_names,
)

pytestmark = pytest.mark.e2e

EXAMPLE_CONFIG = REPO / "examples" / "prometheus.yml"
GPU_ONLY = {"modelium_gpu_memory_used_bytes", "modelium_gpu_memory_total_bytes"}
REQUESTS = 12
# Queries (as in the board, by their metric) that must return series after the traffic.
KEY_METRICS = (
    "modelium_requests_total", "modelium_request_latency_seconds_bucket", "modelium_model_qps",
    "modelium_model_idle_seconds", "modelium_model_loads_total", "modelium_model_unloads_total",
    "modelium_memory_reserved_bytes", "modelium_decisions_total", "modelium_models_loaded",
)


def _prometheus(home: Path, target: str) -> PrometheusServer:
    """Debian's prometheus with examples/prometheus.yml, pointed at ``target``."""
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    config["global"].update(FAST_GLOBAL)
    jobs = config["scrape_configs"]
    assert [job["job_name"] for job in jobs] == ["modelium"], jobs
    jobs[0]["static_configs"] = [{"targets": [target]}]
    return PrometheusServer(home, config)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[RunningDaemon, PrometheusServer, int]]:
    home = tmp_path_factory.mktemp("board-daemon")
    metrics_port = free_port()
    config = triton_only_config(
        triton={"enabled": True},
        metrics={"port": metrics_port, "host": "127.0.0.1", "qps_window_seconds": 30},
        orchestration={"decision_interval_seconds": 1},
    )
    prometheus = _prometheus(home, f"127.0.0.1:{metrics_port}")
    try:
        with running_daemon(home, config) as daemon:
            made = home / "made"
            for name in ("served", "spare"):
                make_python_model_with_config(made / name, name)
                shutil.copytree(made / name, home / "incoming" / name)
            for name in ("served", "spare"):
                daemon.wait_for(lambda n=name: daemon.model(n)["state"] == "ready", 180, f"{name} ready")
            # The traffic starts once Prometheus has scraped the daemon, so rate() sees it.
            prometheus.wait_ready()
            wait_for(lambda: _series(prometheus, 'up{job="modelium"} == 1'), 60,
                     "prometheus scraping the daemon", prometheus.log)
            # A labelled series appears with its first observation; rate() needs a sample of
            # it before the rest of the traffic, so one request, a scrape, then the others.
            for i in range(REQUESTS):
                response = requests.post(f"{daemon.url}/predict/served",
                                         json={"inputs": {"INPUT0": [1.0]}}, timeout=60)
                assert response.status_code == 200, response.text
                if i == 0:
                    wait_for(lambda: _series(prometheus, 'modelium_requests_total{model="served"} == 1'),
                             30, "prometheus scraped the first request", prometheus.log)
            # An unknown model (404) gives a non-ok status series too.
            requests.post(f"{daemon.url}/predict/nobody", json={"inputs": {}}, timeout=10)
            response = requests.post(f"{daemon.url}/models/spare/unload", timeout=60)
            assert response.status_code in (200, 202), response.text
            daemon.wait_for(lambda: daemon.model("spare")["state"] == "unloaded", 60, "spare unloaded")
            wait_for(lambda: _series(prometheus, f'sum(modelium_requests_total{{model="served"}}) == {REQUESTS}'),
                     30, "prometheus scraped the traffic", prometheus.log)
            yield daemon, prometheus, metrics_port
    finally:
        prometheus.stop()


def _series(prometheus: PrometheusServer, promql: str) -> list[dict]:
    answer = prometheus.answer(promql)
    assert answer["status"] == "success", (promql, answer)
    return answer["data"]["result"]


def test_every_board_metric_is_exported_by_the_daemon(stack) -> None:
    daemon, _, metrics_port = stack
    page = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert page.status_code == 200
    families, samples = exported_names(page.text)
    gateway_families, _ = exported_names(requests.get(f"{daemon.url}/metrics", timeout=10).text)
    assert families <= gateway_families, "the gateway's /metrics serves the same registry"
    queries = board_queries(load_board())
    assert len(queries) >= 20
    missing: dict[str, list[str]] = {}
    for title, expr in queries:
        names = metric_names(expr)
        assert names, (title, expr)
        for name in names:
            if not is_exported(name, families, samples):
                missing.setdefault(name, []).append(title)
    # The model variable's label_values() query names a metric too.
    variable = next(v for v in load_board()["templating"]["list"] if v["name"] == "model")
    var_metric = variable["query"]["query"].split("(", 1)[1].split(",", 1)[0].strip()
    if not is_exported(var_metric, families, samples):
        missing.setdefault(var_metric, []).append("variable model")

    inventory = requests.get(f"{daemon.url}/status", timeout=10).json()["inventory_source"]
    if inventory == "nvml":
        assert not missing, f"board metrics the daemon does not export: {missing}"
        return
    # No NVML here: the GPU gauges are only emitted with one. Everything else must be there,
    # and the GPU names must be what the code emits when it has a GPU source.
    assert set(missing) <= GPU_ONLY, f"board metrics the daemon does not export: {missing}"
    with_gpu = ModeliumMetrics(gpu_memory_source=lambda: [("0", 1 << 30, 80 << 30)])
    gpu_families, gpu_samples = exported_names(with_gpu.render()[0].decode())
    for name, panels in missing.items():
        assert is_exported(name, gpu_families, gpu_samples), f"{name} ({panels}) not even with a GPU"


def test_every_board_query_is_valid_promql_for_prometheus(stack) -> None:
    _, prometheus, _ = stack
    wait_for(lambda: _series(prometheus, 'up{job="modelium"} == 1'), 60, "prometheus scraping the daemon",
             prometheus.log)
    for title, expr in board_queries(load_board()):
        answer = prometheus.answer(for_prometheus(expr))
        assert answer["status"] == "success", f"{title!r}: {for_prometheus(expr)!r} -> {answer}"


def test_key_board_queries_show_the_traffic(stack) -> None:
    _, prometheus, _ = stack
    queries = board_queries(load_board())
    for metric in KEY_METRICS:
        exprs = [expr for _, expr in queries if metric in metric_names(expr)]
        assert exprs, f"no board query reads {metric}"
        for expr in exprs:
            wait_for(lambda e=expr: _series(prometheus, for_prometheus(e)), 60,
                     f"series for {for_prometheus(expr)!r}", prometheus.log)
    # The numbers are the traffic's: 12 ok requests for "served", its load, the unload.
    total = _series(prometheus, 'sum(modelium_requests_total{model="served",status="ok"})')
    assert float(total[0]["value"][1]) == REQUESTS, total
    loads = _series(prometheus, 'sum by (model) (modelium_model_loads_total{result="ok"})')
    assert {s["metric"]["model"] for s in loads} >= {"served", "spare"}, loads
    unloads = _series(prometheus, 'sum by (model) (modelium_model_unloads_total)')
    assert "spare" in {s["metric"]["model"] for s in unloads}, unloads
    qps = _series(prometheus, for_prometheus('modelium_model_qps{model=~"$model"}'))
    assert {s["metric"]["model"] for s in qps} == {"served"}, qps  # only loaded models
    # The board's own latency quantiles are numbers for the served model (not NaN: rate()
    # saw the requests), within the histogram's range.
    latency = [expr for _, expr in queries if "modelium_request_latency_seconds_bucket" in expr]
    assert len(latency) == 3, latency
    for expr in latency:
        series = _series(prometheus, for_prometheus(expr))
        served = [float(s["value"][1]) for s in series if s["metric"].get("model") == "served"]
        assert served and 0 < served[0] <= 60, (expr, series)
