"""Request ids end to end with a real daemon and a real tritonserver: a client's
X-Request-ID comes back in the header and the body, and every line the request causes in
the daemon's log carries it, including the Triton load the request triggered; an error
answer carries the same id; a refused id is replaced by a new one."""

from __future__ import annotations

import shutil

import pytest
import requests

from tests.e2e.daemon_harness import running_daemon, triton_only_config
from tests.e2e.fixtures_orchestration import make_sleeper

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    config = triton_only_config(gpus=[{"id": 0, "memory_gb": 4}],
                                orchestration={"decision_interval_seconds": 1})
    with running_daemon(tmp_path_factory.mktemp("request-ids"), config) as running:
        staging = running.home / "staging" / "sleeper"
        make_sleeper(staging)
        shutil.move(str(staging), running.home / "incoming" / "sleeper")
        running.wait_for(lambda: running.model("sleeper")["state"] == "ready", 120, "sleeper ready")
        yield running


def _lines_of(daemon, request_id: str) -> list[str]:
    return [line for line in daemon.log.read_text(errors="replace").splitlines()
            if line.endswith(f"[request_id={request_id}]")]


def test_the_id_comes_back_and_is_on_every_line_of_the_load_it_triggered(daemon):
    unloaded = requests.post(f"{daemon.url}/models/sleeper/unload", timeout=60)
    assert unloaded.status_code == 200 and unloaded.json()["state"] == "unloaded", unloaded.text
    request_id = "e2e-cold-request-0001"
    response = requests.post(f"{daemon.url}/predict/sleeper", json={"inputs": {"SECONDS": [0.0]}},
                             headers={"X-Request-ID": request_id}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == request_id
    assert response.json()["request_id"] == request_id
    assert response.json()["outputs"]["SLEPT"] == [0.0]
    lines = _lines_of(daemon, request_id)
    # The load this request caused: placed, and ready via Triton, both under its id.
    assert any("decision place sleeper" in line for line in lines), lines
    assert any("decision load sleeper" in line and "via triton" in line for line in lines), lines
    decisions = requests.get(f"{daemon.url}/decisions", params={"model": "sleeper", "limit": 5}, timeout=5).json()
    assert decisions["decisions"][0]["action"] == "load" and decisions["decisions"][0]["request_id"] == request_id
    # The runtime calls made for it: Triton's load and the infer, logged by httpx in the load
    # task and in the request's task.
    assert any("/v2/repository/models/sleeper/load" in line for line in lines), lines
    assert any("/v2/models/sleeper/infer" in line for line in lines), lines
    # The unload before it is not this request's.
    assert not any("unload" in line for line in lines), lines


def test_errors_carry_the_same_id_and_a_refused_id_is_replaced(daemon):
    missing = requests.post(f"{daemon.url}/predict/nope", json={"inputs": "x"},
                            headers={"X-Request-ID": "e2e-error-1"}, timeout=10)
    assert missing.status_code == 404
    assert missing.headers["X-Request-ID"] == "e2e-error-1"
    assert missing.json()["error"]["request_id"] == "e2e-error-1"
    bad_input = requests.post(f"{daemon.url}/predict/sleeper", json={"inputs": {"WRONG": [1.0]}},
                              headers={"X-Request-ID": "e2e-error-2"}, timeout=30)
    assert bad_input.status_code == 422, bad_input.text
    assert bad_input.headers["X-Request-ID"] == bad_input.json()["error"]["request_id"] == "e2e-error-2"
    refused = requests.post(f"{daemon.url}/predict/sleeper", json={"inputs": {"SECONDS": [0.0]}},
                            headers={"X-Request-ID": "x" * 300}, timeout=30)
    assert refused.status_code == 200
    fresh = refused.headers["X-Request-ID"]
    assert fresh != "x" * 300 and len(fresh) == 16 and refused.json()["request_id"] == fresh
