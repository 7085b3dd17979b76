"""End to end: `modelium serve` as a subprocess with a real private Ray cluster.

Copies a random-weight causal LM and a BERT classifier (made offline by
examples/make_tiny_models.py) into incoming/, predicts through the gateway, checks
/metrics, quarantines a bad drop while the others keep serving, and checks that SIGTERM
leaves no process behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from examples.make_tiny_models import make_model

pytestmark = pytest.mark.e2e

START_TIMEOUT = 240
READY_TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-6000:] if log.exists() else ""
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n--- daemon log ---\n{tail}")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("made")
    return {kind: make_model(kind, root / kind) for kind in ("llama", "bert-classifier")}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    home = tmp_path_factory.mktemp("daemon")
    port = _free_port()
    config = {
        "incoming_dir": "incoming",
        "model_repository": "repository",
        "failed_dir": "failed",
        "state_dir": "state",
        "log_format": "text",
        "gateway": {"host": "127.0.0.1", "port": port},
        "ray": {"http_port": _free_port(), "gcs_port": _free_port(), "num_cpus": 2},
        # Ray Serve serves both models here; vLLM and Triton have their own test modules.
        "vllm": {"enabled": False},
        "triton": {"enabled": False},
        "metrics": {"port": _free_port()},
        "discovery": {"settle_seconds": 1.0, "rescan_interval_seconds": 2.0},
    }
    config_path = home / "modelium.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = home / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELIUM_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelium", "serve", "--config", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: requests.get(f"{url}/health", timeout=2).status_code == 200,
                  START_TIMEOUT, "daemon health", log_path)
        yield {"url": url, "home": home, "process": process, "log": log_path,
               "metrics_port": config["metrics"]["port"]}
    finally:
        if process.poll() is None:  # a failed test must not leave the daemon running
            descendants = psutil.Process(process.pid).children(recursive=True)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()
            for child in descendants:
                if child.is_running():
                    child.kill()


def _state(daemon, name: str) -> str | None:
    response = requests.get(f"{daemon['url']}/models/{name}", timeout=5)
    return response.json()["state"] if response.status_code == 200 else None


def test_dropped_models_become_ready_and_answer(daemon, tiny_models):
    incoming = daemon["home"] / "incoming"
    shutil.copytree(tiny_models["llama"], incoming / "tiny-llama")
    shutil.copytree(tiny_models["bert-classifier"], incoming / "Tiny BERT")
    for name in ("tiny-llama", "tiny-bert"):
        _wait_for(lambda n=name: _state(daemon, n) in ("ready", "failed"), READY_TIMEOUT,
                  f"{name} ready", daemon["log"])
        assert _state(daemon, name) == "ready", requests.get(f"{daemon['url']}/models/{name}").json()
    assert (daemon["home"] / "repository/tiny-llama/config.json").exists()
    assert not (incoming / "tiny-llama").exists()

    generated = requests.post(f"{daemon['url']}/predict/tiny-llama",
                              json={"inputs": "hello world", "parameters": {"max_new_tokens": 4}},
                              timeout=120)
    assert generated.status_code == 200, generated.text
    body = generated.json()
    assert body["model"] == "tiny-llama" and body["runtime"] == "ray_serve"
    assert isinstance(body["outputs"]["generated_text"], str)
    assert 1 <= body["outputs"]["num_generated_tokens"] <= 4

    classified = requests.post(f"{daemon['url']}/predict/tiny-bert",
                               json={"inputs": ["great movie", "awful movie"]}, timeout=120)
    assert classified.status_code == 200, classified.text
    outputs = classified.json()["outputs"]
    assert len(outputs) == 2
    for prediction in outputs:
        top = prediction[0] if isinstance(prediction, list) else prediction
        assert 0.0 <= top["score"] <= 1.0 and isinstance(top["label"], str)

    detail = requests.get(f"{daemon['url']}/models/tiny-bert", timeout=5).json()
    assert detail["runtime"] == "ray_serve" and detail["device"] == "cpu"
    assert detail["memory"]["total_bytes"] > 0 and "ray_serve" in detail["runtime_reason"]


def test_metrics_show_requests_per_model(daemon):
    for source in (f"{daemon['url']}/metrics", f"http://127.0.0.1:{daemon['metrics_port']}/metrics"):
        text = requests.get(source, timeout=5).text
        assert 'modelium_requests_total{model="tiny-llama",runtime="ray_serve",status="ok"}' in text
        assert 'modelium_requests_total{model="tiny-bert",runtime="ray_serve",status="ok"}' in text
        assert "modelium_request_latency_seconds_bucket" in text
        assert 'modelium_models_loaded{device="cpu",runtime="ray_serve"} 2.0' in text


def test_bad_requests_get_clear_4xx(daemon):
    url = daemon["url"]
    missing = requests.post(f"{url}/predict/nope", json={"inputs": "x"}, timeout=10)
    assert missing.status_code == 404 and "tiny-llama" in missing.json()["error"]["known_models"]
    malformed = requests.post(f"{url}/predict/tiny-llama", json={"text": "x"}, timeout=10)
    assert malformed.status_code == 422 and "inputs" in malformed.json()["error"]["message"]
    bad_param = requests.post(f"{url}/predict/tiny-llama",
                              json={"inputs": "x", "parameters": {"max_new_tokens": -1}}, timeout=60)
    assert bad_param.status_code == 422 and "max_new_tokens" in bad_param.json()["error"]["message"]


def test_bad_drop_is_quarantined_and_others_keep_serving(daemon):
    incoming = daemon["home"] / "incoming"
    staging = daemon["home"] / "staging-bad"
    staging.mkdir()
    (staging / "config.json").write_text("{ this is not json")
    (staging / "model.safetensors").write_bytes(b"\x10\x00")
    shutil.move(str(staging), incoming / "broken-model")
    reason_file = daemon["home"] / "failed/broken-model/REASON.txt"
    _wait_for(reason_file.exists, 60, "quarantine", daemon["log"])
    assert "config.json" in reason_file.read_text()
    assert requests.get(f"{daemon['url']}/models/broken-model", timeout=5).status_code == 404
    status = requests.get(f"{daemon['url']}/status", timeout=5).json()
    assert any(q["name"] == "broken-model" for q in status["quarantined"])
    still = requests.post(f"{daemon['url']}/predict/tiny-bert", json={"inputs": "still here?"}, timeout=60)
    assert still.status_code == 200
    metrics = requests.get(f"{daemon['url']}/metrics", timeout=5).text
    assert 'modelium_drops_total{outcome="quarantined"' in metrics


def test_cli_talks_to_the_daemon(daemon):
    url = daemon["url"]
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
    process: subprocess.Popen = daemon["process"]
    descendants = psutil.Process(process.pid).children(recursive=True)
    assert descendants, "the daemon should have started Ray processes"
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0, daemon["log"].read_text()[-4000:]
    deadline = time.monotonic() + 30
    alive = descendants
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.5)
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"
