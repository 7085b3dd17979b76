"""End to end orchestration with a real tritonserver and a simulated 1.6 GiB GPU: two
sleeper models fit, a third needs an eviction. Covers eviction of the idle model (not the
busy one), 429 when a model's queue is full, idle unload naming the idle time, pinning,
reload on demand, 20 concurrent requests causing one load, and a model that can never fit
failed with the numbers."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.e2e.daemon_harness import running_daemon, triton_only_config
from tests.e2e.fixtures_orchestration import make_sleeper

pytestmark = pytest.mark.e2e

GIANT_BERT = {  # config only: ~40 B parameters, far beyond the simulated GPU
    "architectures": ["BertForSequenceClassification"], "model_type": "bert",
    "hidden_size": 8192, "num_hidden_layers": 48, "num_attention_heads": 64,
    "intermediate_size": 32768, "vocab_size": 30522, "max_position_embeddings": 512,
    "torch_dtype": "float32",
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    config = triton_only_config(
        gpus=[{"id": 0, "memory_gb": 1.6}],
        orchestration={"decision_interval_seconds": 1, "auto_unload_after_seconds": 0,
                       "min_qps_threshold": 1000, "max_concurrent_requests": 1,
                       "max_queued_requests": 32},
        models={"third": {"auto_unload_after_seconds": 3},
                "busy": {"max_queued_requests": 0},
                "victim": {"max_concurrent_requests": 32}},
    )
    with running_daemon(tmp_path_factory.mktemp("orchestration"), config) as running:
        yield running


def _drop(daemon, name: str) -> None:
    staging = daemon.home / f"staging-{name}"
    make_sleeper(staging / name)
    shutil.move(str(staging / name), daemon.home / "incoming" / name)


def _sleep(daemon, name: str, seconds: float) -> requests.Response:
    return requests.post(f"{daemon.url}/predict/{name}",
                         json={"inputs": {"SECONDS": [seconds]}}, timeout=120)


def _decisions(daemon, name: str) -> list[dict]:
    return requests.get(f"{daemon.url}/decisions", params={"model": name, "limit": 200},
                        timeout=5).json()["decisions"]


def test_eviction_takes_the_idle_model_not_the_busy_one(daemon):
    for name in ("busy", "victim"):
        _drop(daemon, name)
    for name in ("busy", "victim"):
        daemon.wait_for(lambda n=name: daemon.model(n)["state"] == "ready", 120, f"{name} ready")
    assert daemon.model("busy")["device"] == "gpu:0"

    slow = ThreadPoolExecutor(1).submit(_sleep, daemon, "busy", 6.0)
    daemon.wait_for(lambda: "modelium_requests_in_flight{model=\"busy\"} 1.0"
                    in requests.get(f"{daemon.url}/metrics", timeout=5).text, 10, "busy in flight")
    # Its one slot is taken and its queue bound is 0: a second request is refused at once.
    refused = _sleep(daemon, "busy", 0.0)
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    assert "concurrent requests" in refused.json()["error"]["message"]

    _drop(daemon, "third")
    daemon.wait_for(lambda: daemon.model("third")["state"] == "ready", 60, "third ready")
    victim = daemon.model("victim")
    assert victim["state"] == "unloaded" and "evicted to make room for third" in victim["reason"]
    assert daemon.model("busy")["state"] == "ready"
    assert slow.result(60).status_code == 200
    evictions = [d for d in _decisions(daemon, "third") if d["action"] == "evict"]
    assert evictions and "victim" in evictions[0]["reason"] and "busy" not in evictions[0]["reason"]


def test_idle_model_is_unloaded_naming_its_idle_time_and_reloads_on_demand(daemon):
    daemon.wait_for(lambda: daemon.model("third")["state"] == "unloaded", 30, "third idle-unloaded")
    idle = [d for d in _decisions(daemon, "third") if d["action"] == "idle_unload"]
    assert idle and "idle" in idle[0]["reason"] and "s" in idle[0]["reason"]
    again = _sleep(daemon, "third", 0.0)
    assert again.status_code == 200, again.text
    assert daemon.model("third")["state"] == "ready"
    metrics = requests.get(f"{daemon.url}/metrics", timeout=5).text
    assert 'modelium_cold_starts_total{model="third",runtime="triton"}' in metrics


def test_pinned_model_stays(daemon):
    assert requests.post(f"{daemon.url}/models/third/pin", timeout=5).json()["pinned"] is True
    _sleep(daemon, "third", 0.0)
    threading.Event().wait(5)  # longer than its 3 s idle timeout, several control-loop ticks
    assert daemon.model("third")["state"] == "ready"
    requests.post(f"{daemon.url}/models/third/unpin", timeout=5)


def test_twenty_concurrent_requests_cause_one_load(daemon):
    before = daemon.model("victim")
    assert before["state"] == "unloaded"
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: _sleep(daemon, "victim", 0.2), range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    after = daemon.model("victim")
    assert after["state"] == "ready" and after["load_count"] == before["load_count"] + 1
    loads = [d for d in _decisions(daemon, "victim") if d["action"] == "load"]
    assert len(loads) == after["load_count"]


def test_model_that_can_never_fit_is_failed_with_the_numbers(daemon):
    staging = daemon.home / "staging-giant" / "giant"
    staging.mkdir(parents=True)
    (staging / "config.json").write_text(json.dumps(GIANT_BERT))
    shutil.move(str(staging), daemon.home / "incoming" / "giant")
    daemon.wait_for(lambda: daemon.model("giant")["state"] == "failed", 60, "giant failed")
    giant = daemon.model("giant")
    assert "GiB" in giant["reason"] and "even when empty" in giant["reason"], giant
    answer = _sleep(daemon, "giant", 0.0)
    assert answer.status_code == 409 and "GiB" in answer.json()["error"]["message"]
    assert daemon.model("victim")["state"] == "ready"  # nothing was evicted for it
