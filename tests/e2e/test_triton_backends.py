"""End to end, Triton as Triton, with the real tritonserver bundled in .venvs/triton (python
backend only, no full install on this machine):

* a dropped ``config.pbtxt`` asking for ``platform: "onnxruntime_onnx"`` is failed with a
  reason naming the missing onnxruntime backend and how to get it (not Triton's load error),
  while an ONNX folder is served and its reason says the python backend runs it;
* concurrent requests to an HF embedder are batched by Triton (fewer model executions than
  requests, from Triton's own ``nv_inference_exec_count``) and every request still gets its
  own rows back (equal to what each text gives alone).
"""

from __future__ import annotations

import re
import shutil
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from examples.make_tiny_models import make_model
from tests.e2e.daemon_harness import running_daemon, triton_only_config
from tests.e2e.fixtures_triton import make_onnx_model

pytestmark = pytest.mark.e2e

CONCURRENT = 16


def _needs_onnxruntime(folder):
    """An ONNX graph in Triton's own layout with platform onnxruntime_onnx."""
    make_onnx_model(folder / "1")
    (folder / "config.pbtxt").write_text(textwrap.dedent("""\
        name: "needs-ort"
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
    """))
    return folder


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    config = triton_only_config(orchestration={"decision_interval_seconds": 1})
    with running_daemon(tmp_path_factory.mktemp("triton-backends"), config) as running:
        made = tmp_path_factory.mktemp("made")
        make_onnx_model(made / "tiny-onnx")
        _needs_onnxruntime(made / "needs-ort")
        make_model("bert-embedder", made / "tiny-embedder")
        for name in ("tiny-onnx", "needs-ort", "tiny-embedder"):
            shutil.copytree(made / name, running.home / "incoming" / name)
        for name in ("tiny-onnx", "tiny-embedder"):
            running.wait_for(lambda n=name: running.model(n)["state"] in ("ready", "failed"), 240, f"{name} settled")
        yield running


def _predict(url, name, inputs, parameters=None):
    return requests.post(f"{url}/predict/{name}", json={"inputs": inputs, "parameters": parameters or {}},
                         timeout=120)


def test_missing_backend_is_failed_naming_it(daemon):
    onnx = daemon.model("tiny-onnx")
    assert onnx["state"] == "ready" and onnx["runtime"] == "triton", onnx
    assert "python backend" in onnx["runtime_reason"] and "natively" not in onnx["runtime_reason"]
    # Wanting the model makes the scheduler choose a runtime for it: there is none.
    answer = _predict(daemon.url, "needs-ort", {"INPUT": [[1.0, 2.0, 3.0, 4.0]]})
    assert answer.status_code >= 400
    daemon.wait_for(lambda: daemon.model("needs-ort")["state"] == "failed", 60, "needs-ort failed")
    failed = daemon.model("needs-ort")
    assert "'onnxruntime'" in failed["reason"] and "it has: python" in failed["reason"], failed
    assert "triton.executable" in failed["reason"]
    log = daemon.log.read_text()
    assert "needs-ort" not in " ".join(line for line in log.splitlines() if "Triton failed to load" in line)


def _exec_and_requests(url, model):
    text = requests.get(f"{url}/metrics", timeout=10).text

    def value(metric):
        match = re.search(rf'^{metric}{{model="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
        assert match, f"{metric} for {model} not in /metrics"
        return float(match.group(1))

    return value("nv_inference_exec_count"), value("nv_inference_request_success")


def test_concurrent_requests_are_batched_and_split_back(daemon):
    url = daemon.url
    assert daemon.model("tiny-embedder")["state"] == "ready"
    texts = [f"text number {i}" + " more" * (i % 5) for i in range(CONCURRENT)]
    alone = []
    for text in texts:  # one at a time: each its own execution
        response = _predict(url, "tiny-embedder", text)
        assert response.status_code == 200, response.text
        alone.append(response.json()["outputs"])
    execs_before, requests_before = _exec_and_requests(url, "tiny-embedder")
    with ThreadPoolExecutor(CONCURRENT) as pool:
        together = list(pool.map(lambda t: _predict(url, "tiny-embedder", t), texts))
    execs_after, requests_after = _exec_and_requests(url, "tiny-embedder")
    assert all(r.status_code == 200 for r in together), [r.text for r in together if r.status_code != 200]
    for got, expected in zip((r.json()["outputs"] for r in together), alone):
        np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-4, atol=1e-5)
    assert requests_after - requests_before == CONCURRENT
    print(f"{CONCURRENT} concurrent requests -> {execs_after - execs_before:.0f} Triton executions")
    # Triton handed several requests to one execute(), whose rows ran in one forward pass
    # (unit test: tests/unit/test_triton_batching.py).
    assert execs_after - execs_before < CONCURRENT, (execs_before, execs_after)
