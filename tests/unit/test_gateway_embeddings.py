"""POST /v1/embeddings and GET /v1/models over a real orchestrator with fake runtimes: an
adapted feature-extraction model (predictor-shaped rows), a vLLM-like runtime relayed to
a fake upstream (httpx MockTransport), validation 422s, base64."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from modelium.config import settings_from_dict
from modelium.gateway import create_app
from modelium.gateway.embeddings import encode_vector
from modelium.hardware import GIB, Device, Inventory, MemoryLedger
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import Orchestrator
from modelium.runtimes.base import LoadRequest, ModelNotLoadedError
from tests.unit.fakes import FakeManager, make_config_only_model

HIDDEN = 8


def _vector(text: str) -> list[float]:
    return [float(len(text)) + i / 4 for i in range(HIDDEN)]


class FakeEncoder(FakeManager):
    """What the transformers predictor answers for feature-extraction rows."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[Any, dict[str, Any]]] = []

    async def infer(self, name: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        if name not in self.loaded:
            raise ModelNotLoadedError(name)
        self.requests.append((inputs, dict(parameters)))
        if not parameters.get("count_prompt_tokens"):
            return [_vector(t) for t in inputs]
        return [{"embedding": _vector(t), "num_prompt_tokens": len(t.split()) + 2} for t in inputs]


class FakeVllm(FakeManager):
    name = "vllm"

    def openai_base_url(self, name: str) -> str | None:
        return "http://vllm.test" if name in self.loaded else None

    def upstream_headers(self, name: str) -> dict[str, str]:
        return {"Authorization": "Bearer server-key"}

    async def load(self, request: LoadRequest) -> None:
        await super().load(request)


class Upstream:
    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        body = json.loads(request.content)
        if body.get("dimensions") == 3:
            return httpx.Response(400, json={"object": "error", "message": "dimensions not supported", "type": "BadRequestError"})
        return httpx.Response(200, json={"object": "list", "model": body["model"], "usage": {"prompt_tokens": 4, "total_tokens": 4},
                                         "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}]})


@pytest.fixture
def gateway(tmp_path: Path):
    stack = contextlib.ExitStack()

    def build(**config: Any) -> tuple[TestClient, Orchestrator, FakeEncoder, Upstream]:
        repo = tmp_path / "models/repository"
        make_config_only_model(repo / "enc", architectures=["BertModel"], model_type="bert")
        make_config_only_model(repo / "cls", architectures=["BertForSequenceClassification"], model_type="bert")
        make_config_only_model(repo / "llm")
        config.setdefault("models", {"enc": {"runtime": "ray_serve"}, "cls": {"runtime": "ray_serve"},
                                     "llm": {"runtime": "vllm"}})
        settings = settings_from_dict(config, base_dir=tmp_path)
        inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, 8 * GIB, "simulated"),), source="configured")
        encoder, vllm, upstream = FakeEncoder(), FakeVllm(), Upstream()
        metrics = ModeliumMetrics()
        orchestrator = Orchestrator(settings, {"ray_serve": encoder, "vllm": vllm}, inventory, MemoryLedger(), metrics)
        app = create_app(orchestrator, metrics, http_client_factory=lambda: httpx.AsyncClient(
            transport=httpx.MockTransport(upstream)))
        client = stack.enter_context(TestClient(app))
        client.portal.call(orchestrator.start)
        client.portal.call(orchestrator.quiesce)
        return client, orchestrator, encoder, upstream

    yield build
    stack.close()


def test_string_and_list_inputs_give_openai_shaped_vectors_with_usage(gateway) -> None:
    client, _, encoder, _ = gateway()
    one = client.post("/v1/embeddings", json={"model": "enc", "input": "hello world"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["object"] == "list" and body["model"] == "enc"
    assert body["data"] == [{"object": "embedding", "index": 0, "embedding": _vector("hello world")}]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert encoder.requests[-1] == (["hello world"], {"count_prompt_tokens": True})

    many = client.post("/v1/embeddings", json={"model": "enc", "input": ["a", "bb cc"], "user": "u1"}).json()
    assert [d["index"] for d in many["data"]] == [0, 1]
    assert many["data"][1]["embedding"] == _vector("bb cc") and many["usage"]["prompt_tokens"] == 3 + 4


def test_base64_is_little_endian_float32(gateway) -> None:
    client, _, _, _ = gateway()
    body = client.post("/v1/embeddings", json={"model": "enc", "input": "abc", "encoding_format": "base64"}).json()
    encoded = body["data"][0]["embedding"]
    assert isinstance(encoded, str)
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert decoded.tolist() == pytest.approx(_vector("abc"))
    assert len(base64.b64decode(encoded)) == 4 * HIDDEN
    assert encode_vector([1.0], "base64") == base64.b64encode(b"\x00\x00\x80\x3f").decode()


@pytest.mark.parametrize("body, fragment", [
    ({"input": "x"}, "model"),
    ({"model": "enc"}, "input"),
    ({"model": "enc", "input": []}, "input"),
    ({"model": "enc", "input": [""]}, "empty"),
    ({"model": "enc", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "enc", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "enc", "input": "x", "dimensions": 4}, "dimensions is not supported"),
    ({"model": "enc", "input": [[1, 2, 3]]}, "token arrays"),
    ({"model": "enc", "input": "x", "frobnicate": 1}, "frobnicate"),
    ({"model": "cls", "input": "x"}, "text-classification"),
])
def test_validation_is_422_naming_the_problem(gateway, body, fragment) -> None:
    client, _, _, _ = gateway()
    answer = client.post("/v1/embeddings", json=body)
    assert answer.status_code == 422, answer.text
    assert fragment in answer.json()["error"]["message"]


def test_not_json_and_unknown_model(gateway) -> None:
    client, _, _, _ = gateway()
    assert client.post("/v1/embeddings", content=b"{", headers={"content-type": "application/json"}).status_code == 422
    missing = client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert missing.status_code == 404 and "enc" in missing.json()["error"]["known_models"]


def test_batch_limit(gateway) -> None:
    client, _, _, _ = gateway(gateway={"max_batch_items": 2})
    answer = client.post("/v1/embeddings", json={"model": "enc", "input": ["a", "b", "c"]})
    assert answer.status_code == 422 and "max_batch_items" in answer.json()["error"]["message"]


def test_unloaded_encoder_is_loaded_on_demand(gateway) -> None:
    client, orchestrator, encoder, _ = gateway()
    client.portal.call(orchestrator.unload, "enc")
    assert "enc" not in encoder.loaded
    answer = client.post("/v1/embeddings", json={"model": "enc", "input": "x"})
    assert answer.status_code == 200 and "enc" in encoder.loaded


def test_vllm_models_are_relayed_with_the_servers_key(gateway) -> None:
    client, _, _, upstream = gateway()
    body = {"model": "llm", "input": [[1, 2, 3]], "dimensions": 2}  # vLLM's to accept
    answer = client.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer client",
                                                                "X-Request-ID": "emb-1"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"][0]["embedding"] == [0.5, 0.25]
    sent = upstream.seen[-1]
    assert str(sent.url) == "http://vllm.test/v1/embeddings"
    assert sent.headers["authorization"] == "Bearer server-key" and json.loads(sent.content) == body
    assert sent.headers["x-request-id"] == "emb-1" and answer.headers["x-request-id"] == "emb-1"
    refused = client.post("/v1/embeddings", json={"model": "llm", "input": "x", "dimensions": 3})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "dimensions not supported"


def test_v1_models_lists_every_model_with_state_and_task(gateway) -> None:
    client, orchestrator, _, _ = gateway()
    client.portal.call(orchestrator.unload, "cls")
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert set(listed) == {"enc", "cls", "llm"}
    assert listed["enc"]["task"] == "feature-extraction" and listed["enc"]["state"] == "ready"
    assert listed["cls"]["task"] == "text-classification" and listed["cls"]["state"] == "unloaded"
    assert listed["llm"]["runtime"] == "vllm"
    assert all(m["object"] == "model" and m["owned_by"] == "modelium" and isinstance(m["created"], int)
               for m in listed.values())
