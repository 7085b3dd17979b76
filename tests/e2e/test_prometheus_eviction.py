"""Idle unloading driven by a real Prometheus server (Debian's `prometheus`, `make
prometheus`) that scrapes the daemon's gateway every second.

Prometheus also scrapes a second, fake "gateway" that reports steady traffic for the model
nobody sends requests to here. That is the multi-gateway case: locally the model is idle
with 0 QPS, so only QPS read from Prometheus (summed over gateways) can keep it loaded.
Once the other gateway's traffic stops, Prometheus's rate drops and the model is unloaded
with a decision that names Prometheus and its numbers, while a model kept busy with real
requests stays. Then Prometheus is stopped: the next idle unload says the numbers came from
the local counters (fallback).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.e2e.daemon_harness import free_port, running_daemon
from tests.e2e.fixtures_triton import make_python_model_with_config
from tests.e2e.prometheus_server import FAST_GLOBAL, PrometheusServer

pytestmark = pytest.mark.e2e

IDLE_AFTER = 6  # orchestration.auto_unload_after_seconds
MIN_QPS = 0.5
WINDOW = 5  # metrics.qps_window_seconds = the rate() range: 5x the 1 s scrape interval
OTHER_GATEWAY_QPS = 3.0


class _OtherGateway:
    """A /metrics endpoint standing in for a second Modelium gateway: its request counter
    for ``model`` grows at ``qps`` until :meth:`stop_traffic`."""

    def __init__(self, model: str, qps: float) -> None:
        self.model, self.qps = model, qps
        self.started = time.monotonic()
        self.stopped: float | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                end = owner.stopped or time.monotonic()
                count = int(owner.qps * (end - owner.started))
                body = (
                    "# TYPE modelium_requests_total counter\n"
                    f'modelium_requests_total{{model="{owner.model}",runtime="triton",'
                    f'status="ok"}} {count}\n'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop_traffic(self) -> None:
        self.stopped = time.monotonic()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus_setup(tmp_path: Path) -> Iterator[tuple[PrometheusServer, _OtherGateway, int]]:
    gateway_port = free_port()
    other = _OtherGateway("quiet", OTHER_GATEWAY_QPS)
    targets = {"modelium": gateway_port, "other-gateway": other.port}
    prometheus = PrometheusServer(tmp_path, {"global": FAST_GLOBAL, "scrape_configs": [
        {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        for job, port in targets.items()]})
    try:
        prometheus.wait_ready()
        yield prometheus, other, gateway_port
    finally:
        prometheus.stop()
        other.close()


def _decisions(url: str, model: str) -> list[dict]:
    return requests.get(f"{url}/decisions", params={"model": model, "limit": 500},
                        timeout=5).json()["decisions"]


def _idle_unload(url: str, model: str) -> dict | None:
    return next((d for d in _decisions(url, model) if d["action"] == "idle_unload"), None)


def _qps(prometheus: PrometheusServer, model: str) -> float:
    result = prometheus.query(
        f'sum by (model) (rate(modelium_requests_total{{model="{model}"}}[{WINDOW}s]))')
    return float(result[0]["value"][1]) if result else 0.0


def test_idle_unload_reads_qps_and_idle_time_from_prometheus(tmp_path, prometheus_setup):
    prometheus, other_gateway, gateway_port = prometheus_setup
    config = {
        "log_format": "text",
        "incoming_dir": "incoming", "model_repository": "repository",
        "failed_dir": "failed", "state_dir": "state",
        "gateway": {"port": gateway_port},
        "ray": {"enabled": False},
        "vllm": {"enabled": False},
        "triton": {"enabled": True},
        "metrics": {"port": None, "qps_window_seconds": WINDOW,
                    "prometheus_url": prometheus.url, "prometheus_timeout_seconds": 1.0},
        "orchestration": {"decision_interval_seconds": 1, "auto_unload_after_seconds": IDLE_AFTER,
                          "min_qps_threshold": MIN_QPS},
        "discovery": {"settle_seconds": 0.5, "rescan_interval_seconds": 1.0},
    }
    home = tmp_path / "daemon"
    home.mkdir()
    with running_daemon(home, config) as daemon:
        url = daemon.url
        made = tmp_path / "made"
        for name in ("busy", "quiet"):
            make_python_model_with_config(made / name, name)
            shutil.copytree(made / name, home / "incoming" / name)
        for name in ("busy", "quiet"):
            daemon.wait_for(lambda n=name: daemon.model(n)["state"] == "ready", 120, f"{name} ready")

        stop = threading.Event()
        served: list[int] = []

        def keep_busy() -> None:  # ~5 requests/s, well above min_qps_threshold
            while not stop.is_set():
                response = requests.post(f"{url}/predict/busy",
                                         json={"inputs": {"INPUT0": [1.0]}}, timeout=30)
                served.append(response.status_code)
                stop.wait(0.2)

        busy = threading.Thread(target=keep_busy, daemon=True)
        busy.start()
        try:
            # Locally "quiet" is idle with 0 QPS well past IDLE_AFTER; Prometheus sums the
            # other gateway's ~3 QPS in, so it must stay loaded.
            loaded_at = time.monotonic()
            daemon.wait_for(lambda: _qps(prometheus, "quiet") > 2 * MIN_QPS, 20,
                            "prometheus sees the other gateway's traffic")
            daemon.wait_for(lambda: _qps(prometheus, "busy") > 2 * MIN_QPS, 20,
                            "prometheus sees the busy model's traffic")
            time.sleep(max(0.0, IDLE_AFTER + 3 - (time.monotonic() - loaded_at)))
            assert daemon.model("quiet")["state"] == "ready", _decisions(url, "quiet")[:5]
            assert _idle_unload(url, "quiet") is None

            # The other gateway goes quiet: Prometheus's rate falls to 0 within the window.
            other_gateway.stop_traffic()
            decision = daemon.wait_for(lambda: _idle_unload(url, "quiet"), WINDOW + IDLE_AFTER + 10,
                                       "quiet unloaded as idle")
            numbers = decision["numbers"]
            assert numbers["source"] == "prometheus", decision
            assert numbers["idle_seconds"] >= IDLE_AFTER and numbers["qps"] < MIN_QPS, decision
            assert "from prometheus" in decision["reason"] and "qps" in decision["reason"]
            assert f"idle {numbers['idle_seconds']:.1f}s" in decision["reason"]
            daemon.wait_for(lambda: daemon.model("quiet")["state"] == "unloaded", 30, "quiet unloaded")
            # The QPS it used is Prometheus's: its own rate for the model agrees.
            assert abs(_qps(prometheus, "quiet") - numbers["qps"]) < MIN_QPS
            assert daemon.model("busy")["state"] == "ready"
            assert _idle_unload(url, "busy") is None
        finally:
            stop.set()
            busy.join(timeout=35)
        assert served and set(served) == {200}, set(served)

        # Prometheus goes away: the loop keeps going on the local counters and says so.
        prometheus.stop()
        decision = daemon.wait_for(lambda: _idle_unload(url, "busy"), WINDOW + IDLE_AFTER + 10,
                                   "busy unloaded as idle once its traffic stopped")
        source = decision["numbers"]["source"]
        assert source.startswith("local (fallback, prometheus unavailable"), decision
        assert decision["numbers"]["idle_seconds"] >= IDLE_AFTER
        daemon.wait_for(lambda: daemon.model("busy")["state"] == "unloaded", 30, "busy unloaded")
        assert requests.get(f"{url}/health", timeout=5).status_code == 200
