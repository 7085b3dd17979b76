"""End to end with a real tritonserver started by Modelium (the one bundled in
.venvs/triton): a BERT-like classifier, an ONNX model exported here, a folder with its own
config.pbtxt and a folder whose Triton load fails are dropped in; the good ones answer
/predict, the bad one shows Triton's error while the others keep serving; unloading makes
Triton report UNAVAILABLE; a killed tritonserver is detected and its models come back;
SIGTERM leaves no Triton process behind."""

from __future__ import annotations

import shutil

import numpy as np
import psutil
import pytest
import requests

from examples.make_tiny_models import make_model
from tests.e2e.fixtures_triton import (
    FAILING_MESSAGE,
    make_failing_python_model,
    make_onnx_model,
    make_python_model_with_config,
    onnx_reference,
)
from tests.e2e.daemon_harness import (
    assert_sigterm_leaves_nothing,
    free_port,
    running_daemon,
    wait_for,
)

pytestmark = pytest.mark.e2e

MODELS = ("tiny-bert", "tiny-onnx", "add-one", "broken")


def _tritonserver(daemon_pid: int) -> psutil.Process:
    for child in psutil.Process(daemon_pid).children(recursive=True):
        try:
            if child.name() == "tritonserver":
                return child
        except psutil.Error:
            continue
    raise AssertionError("no tritonserver under the daemon")


def _http_port(server: psutil.Process) -> int:
    flag = next(a for a in server.cmdline() if a.startswith("--http-port="))
    return int(flag.split("=", 1)[1])


@pytest.fixture(scope="module")
def triton_daemon(tmp_path_factory):
    config = {
        "log_format": "text",
        "incoming_dir": "incoming", "model_repository": "repository",
        "failed_dir": "failed", "state_dir": "state",
        "gateway": {"port": free_port()},
        "ray": {"enabled": False},
        "vllm": {"enabled": False},
        "metrics": {"port": None},
        "orchestration": {"decision_interval_seconds": 1},
        "discovery": {"settle_seconds": 1.0, "rescan_interval_seconds": 2.0},
    }
    with running_daemon(tmp_path_factory.mktemp("triton-daemon"), config) as daemon:
        made = tmp_path_factory.mktemp("made")
        make_model("bert-classifier", made / "tiny-bert")
        make_onnx_model(made / "tiny-onnx")
        make_python_model_with_config(made / "add-one", "whatever-name")
        make_failing_python_model(made / "broken", "broken")
        for name in MODELS:
            shutil.copytree(made / name, daemon.home / "incoming" / name)
        for name in MODELS:
            daemon.wait_for(lambda n=name: daemon.model(n)["state"] in ("ready", "failed"), 240,
                            f"{name} settled")
        yield daemon


def _predict(url: str, name: str, inputs, parameters=None) -> requests.Response:
    return requests.post(f"{url}/predict/{name}",
                         json={"inputs": inputs, "parameters": parameters or {}}, timeout=120)


def test_models_load_into_triton_and_answer(triton_daemon):
    url = triton_daemon.url
    for name in ("tiny-bert", "tiny-onnx", "add-one"):
        detail = triton_daemon.model(name)
        assert detail["state"] == "ready" and detail["runtime"] == "triton", detail
        assert "triton" in detail["runtime_reason"]

    classified = _predict(url, "tiny-bert", ["great film", "awful film"])
    assert classified.status_code == 200, classified.text
    outputs = classified.json()["outputs"]
    assert len(outputs) == 2
    for prediction in outputs:
        top = prediction[0] if isinstance(prediction, list) else prediction
        assert isinstance(top["label"], str) and 0.0 <= top["score"] <= 1.0

    x = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
    onnx = _predict(url, "tiny-onnx", {"INPUT": x})
    assert onnx.status_code == 200, onnx.text
    np.testing.assert_allclose(np.array(onnx.json()["outputs"]["OUTPUT"]),
                               onnx_reference(np.array(x, dtype=np.float32)), rtol=1e-5)

    added = _predict(url, "add-one", {"INPUT0": [1.0, 2.5]})
    assert added.status_code == 200, added.text
    assert added.json()["outputs"]["OUTPUT0"] == [2.0, 3.5]

    wrong = _predict(url, "tiny-onnx", {"INPUT": [[1.0, 2.0]]})
    assert wrong.status_code == 422, wrong.text


def test_failed_triton_load_shows_tritons_error(triton_daemon):
    url = triton_daemon.url
    broken = triton_daemon.model("broken")
    assert broken["state"] == "failed" and FAILING_MESSAGE in broken["reason"]
    refused = _predict(url, "broken", {"INPUT0": [1.0]})
    assert refused.status_code == 409 and FAILING_MESSAGE in refused.json()["error"]["message"]
    assert _predict(url, "add-one", {"INPUT0": [0.0]}).status_code == 200


def test_one_scrape_sees_tritons_metrics(triton_daemon):
    text = requests.get(f"{triton_daemon.url}/metrics", timeout=10).text
    assert "modelium_requests_total" in text and "nv_inference_request_success" in text


def test_unload_makes_triton_report_unavailable(triton_daemon):
    url = triton_daemon.url
    assert requests.post(f"{url}/models/add-one/unload", timeout=60).json()["state"] == "unloaded"
    server = _tritonserver(triton_daemon.process.pid)
    port = _http_port(server)
    # Triton answers no one but Modelium (runtimes/triton/access.py): a direct call is refused.
    refused = requests.post(f"http://127.0.0.1:{port}/v2/repository/index", timeout=10)
    assert refused.status_code == 403 and "x-modelium-key" in refused.text, refused.text

    def models_with_a_stub() -> set[str]:  # each python-backend instance: argv[1] = REPO/NAME/1/model.py
        found = set()
        for child in server.children(recursive=True):
            try:
                argv = child.cmdline()
            except psutil.Error:
                continue
            if len(argv) > 1 and argv[1].endswith("/1/model.py"):
                found.add(argv[1].split("/")[-3])
        return found

    wait_for(lambda: "add-one" not in models_with_a_stub(), 30, "add-one's stub gone", triton_daemon.log)
    assert "tiny-onnx" in models_with_a_stub()
    assert _predict(url, "add-one", {"INPUT0": [1.0]}).json()["outputs"]["OUTPUT0"] == [2.0]


def test_killed_tritonserver_is_detected_and_models_come_back(triton_daemon):
    url = triton_daemon.url
    server = _tritonserver(triton_daemon.process.pid)
    server.kill()
    wait_for(lambda: triton_daemon.model("tiny-onnx")["state"] != "ready", 30, "crash detected",
              triton_daemon.log)
    wait_for(lambda: all(triton_daemon.model(n)["state"] == "ready" for n in ("tiny-onnx", "tiny-bert")),
              240, "models back", triton_daemon.log)
    assert _tritonserver(triton_daemon.process.pid).pid != server.pid
    again = _predict(url, "tiny-onnx", {"INPUT": [[1.0, 1.0, 1.0, 1.0]]})
    assert again.status_code == 200, again.text


def test_sigterm_leaves_no_triton_process(triton_daemon):
    server = _tritonserver(triton_daemon.process.pid)
    stopped = assert_sigterm_leaves_nothing(triton_daemon)
    assert server.pid in {p.pid for p in stopped}
