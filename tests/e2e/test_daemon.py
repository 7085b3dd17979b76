"""End to end: `modelium serve` as a subprocess with a real private Ray cluster.

Copies a random-weight causal LM and a BERT classifier (made offline by
examples/make_tiny_models.py) into incoming/, predicts through the gateway, checks
/metrics, quarantines a bad drop while the others keep serving, and checks that SIGTERM
leaves no process behind.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from examples.make_tiny_models import make_model
from tests.e2e.daemon_harness import (
    assert_sigterm_leaves_nothing,
    free_port,
    running_daemon,
    wait_for,
)

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 240


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("made")
    return {kind: make_model(kind, root / kind) for kind in ("llama", "bert-classifier")}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    metrics_port = free_port()
    config = {
        "incoming_dir": "incoming",
        "model_repository": "repository",
        "failed_dir": "failed",
        "state_dir": "state",
        "log_format": "text",
        "gateway": {"host": "127.0.0.1", "port": free_port()},
        "ray": {"http_port": free_port(), "gcs_port": free_port(), "num_cpus": 2},
        # Ray Serve serves both models here; vLLM and Triton have their own test modules.
        "vllm": {"enabled": False},
        "triton": {"enabled": False},
        "metrics": {"port": metrics_port},
        "discovery": {"settle_seconds": 1.0, "rescan_interval_seconds": 2.0},
    }
    with running_daemon(tmp_path_factory.mktemp("daemon"), config) as running:
        running.metrics_port = metrics_port
        yield running


def _state(daemon, name: str) -> str | None:
    return daemon.model(name)["state"]


def test_dropped_models_become_ready_and_answer(daemon, tiny_models):
    incoming = daemon.home / "incoming"
    shutil.copytree(tiny_models["llama"], incoming / "tiny-llama")
    shutil.copytree(tiny_models["bert-classifier"], incoming / "Tiny BERT")
    for name in ("tiny-llama", "tiny-bert"):
        wait_for(lambda n=name: _state(daemon, n) in ("ready", "failed"), READY_TIMEOUT,
                  f"{name} ready", daemon.log)
        assert _state(daemon, name) == "ready", requests.get(f"{daemon.url}/models/{name}").json()
    assert (daemon.home / "repository/tiny-llama/config.json").exists()
    assert not (incoming / "tiny-llama").exists()

    generated = requests.post(f"{daemon.url}/predict/tiny-llama",
                              json={"inputs": "hello world", "parameters": {"max_new_tokens": 4}},
                              timeout=120)
    assert generated.status_code == 200, generated.text
    body = generated.json()
    assert body["model"] == "tiny-llama" and body["runtime"] == "ray_serve"
    assert isinstance(body["outputs"]["generated_text"], str)
    assert 1 <= body["outputs"]["num_generated_tokens"] <= 4

    classified = requests.post(f"{daemon.url}/predict/tiny-bert",
                               json={"inputs": ["great movie", "awful movie"]}, timeout=120)
    assert classified.status_code == 200, classified.text
    outputs = classified.json()["outputs"]
    assert len(outputs) == 2
    for prediction in outputs:
        top = prediction[0] if isinstance(prediction, list) else prediction
        assert 0.0 <= top["score"] <= 1.0 and isinstance(top["label"], str)

    detail = requests.get(f"{daemon.url}/models/tiny-bert", timeout=5).json()
    assert detail["runtime"] == "ray_serve" and detail["device"] == "cpu"
    assert detail["memory"]["total_bytes"] > 0 and "ray_serve" in detail["runtime_reason"]


def test_metrics_show_requests_per_model(daemon):
    for source in (f"{daemon.url}/metrics", f"http://127.0.0.1:{daemon.metrics_port}/metrics"):
        text = requests.get(source, timeout=5).text
        assert 'modelium_requests_total{model="tiny-llama",runtime="ray_serve",status="ok"}' in text
        assert 'modelium_requests_total{model="tiny-bert",runtime="ray_serve",status="ok"}' in text
        assert "modelium_request_latency_seconds_bucket" in text
        assert 'modelium_models_loaded{device="cpu",runtime="ray_serve"} 2.0' in text


def test_bad_requests_get_clear_4xx(daemon):
    url = daemon.url
    missing = requests.post(f"{url}/predict/nope", json={"inputs": "x"}, timeout=10)
    assert missing.status_code == 404 and "tiny-llama" in missing.json()["error"]["known_models"]
    malformed = requests.post(f"{url}/predict/tiny-llama", json={"text": "x"}, timeout=10)
    assert malformed.status_code == 422 and "inputs" in malformed.json()["error"]["message"]
    bad_param = requests.post(f"{url}/predict/tiny-llama",
                              json={"inputs": "x", "parameters": {"max_new_tokens": -1}}, timeout=60)
    assert bad_param.status_code == 422 and "max_new_tokens" in bad_param.json()["error"]["message"]


def test_bad_drop_is_quarantined_and_others_keep_serving(daemon):
    incoming = daemon.home / "incoming"
    staging = daemon.home / "staging-bad"
    staging.mkdir()
    (staging / "config.json").write_text("{ this is not json")
    (staging / "model.safetensors").write_bytes(b"\x10\x00")
    shutil.move(str(staging), incoming / "broken-model")
    reason_file = daemon.home / "failed/broken-model/REASON.txt"
    wait_for(reason_file.exists, 60, "quarantine", daemon.log)
    assert "config.json" in reason_file.read_text()
    assert requests.get(f"{daemon.url}/models/broken-model", timeout=5).status_code == 404
    status = requests.get(f"{daemon.url}/status", timeout=5).json()
    assert any(q["name"] == "broken-model" for q in status["quarantined"])
    still = requests.post(f"{daemon.url}/predict/tiny-bert", json={"inputs": "still here?"}, timeout=60)
    assert still.status_code == 200
    metrics = requests.get(f"{daemon.url}/metrics", timeout=5).text
    assert 'modelium_drops_total{outcome="quarantined"' in metrics


def test_cli_talks_to_the_daemon(daemon):
    url = daemon.url
    listing = subprocess.run([sys.executable, "-m", "modelium", "models", "--url", url],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "tiny-llama" in listing.stdout and "ready" in listing.stdout
    answer = subprocess.run([sys.executable, "-m", "modelium", "predict", "tiny-llama", "hi",
                             "-p", "max_new_tokens=2", "--url", url],
                            capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    assert '"generated_text"' in answer.stdout


def test_sigterm_stops_everything(daemon):
    stopped = assert_sigterm_leaves_nothing(daemon)
    assert stopped, "the daemon should have started Ray processes"
