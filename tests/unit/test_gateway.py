"""Gateway routes and error mapping, over a real orchestrator with a fake runtime."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelium.config import settings_from_dict
from modelium.gateway import create_app
from modelium.hardware import GIB, Device, Inventory, MemoryLedger
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import Orchestrator
from tests.unit.fakes import FakeManager, make_config_only_model


@pytest.fixture
def gateway(tmp_path: Path):
    """Builds a started gateway for a given config; everything is closed after the test."""
    stack = contextlib.ExitStack()

    def build(**config) -> TestClient:
        make_config_only_model(tmp_path / "models/repository/tiny")
        make_config_only_model(tmp_path / "models/repository/crashy")
        settings = settings_from_dict(config, base_dir=tmp_path)
        inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, 8 * GIB, "simulated"),), source="configured")
        manager = FakeManager()
        manager.fail_loads.add("crashy")
        metrics = ModeliumMetrics()
        orchestrator = Orchestrator(settings, {"ray_serve": manager}, inventory, MemoryLedger(), metrics)
        client = stack.enter_context(TestClient(create_app(orchestrator, metrics)))
        client.portal.call(orchestrator.start)  # run on the app's own event loop
        client.portal.call(orchestrator.quiesce)
        return client

    yield build
    stack.close()


def test_predict_returns_model_runtime_and_outputs(gateway):
    client = gateway()
    response = client.post("/predict/tiny", json={"inputs": "hello", "parameters": {"max_new_tokens": 3}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny" and body["runtime"] == "ray_serve"
    assert body["outputs"] == {"echo": "hello", "device": "gpu:0", "instance": "tiny"}
    metrics = client.get("/metrics").text
    assert 'modelium_requests_total{model="tiny",runtime="ray_serve",status="ok"} 1.0' in metrics


def test_unknown_model_is_404_listing_known_models(gateway):
    client = gateway()
    response = client.post("/predict/nope", json={"inputs": "x"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "model_not_found" and error["known_models"] == ["crashy", "tiny"]


def test_malformed_body_is_422_naming_the_field(gateway):
    client = gateway()
    response = client.post("/predict/tiny", json={"input": "typo"})
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "inputs" in message and "input" in message
    assert client.post("/predict/tiny", content=b"not json",
                       headers={"content-type": "application/json"}).status_code == 422
    empty = client.post("/predict/tiny")
    assert empty.status_code == 422 and '{"inputs"' in empty.json()["error"]["message"]


def test_bad_parameter_is_422_with_runtime_message(gateway):
    client = gateway()
    response = client.post("/predict/tiny", json={"inputs": "x", "parameters": {"bad": 1}})
    assert response.status_code == 422
    assert "unknown parameter 'bad'" in response.json()["error"]["message"]
    assert 'status="bad_request"' in client.get("/metrics").text


def test_failed_model_answers_with_its_reason(gateway):
    client = gateway()
    response = client.post("/predict/crashy", json={"inputs": "x"})
    assert response.status_code == 409
    assert "boom" in response.json()["error"]["message"]
    detail = client.get("/models/crashy").json()
    assert detail["state"] == "failed" and "boom" in detail["reason"]


def test_models_listing_and_detail(gateway):
    client = gateway()
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["tiny"]["state"] == "ready" and models["tiny"]["device"] == "gpu:0"
    assert models["tiny"]["memory"]["total_bytes"] > 0
    assert client.get("/models/ghost").status_code == 404


def test_unload_then_predict_loads_again(gateway):
    client = gateway()
    assert client.post("/models/tiny/unload").json()["state"] == "unloaded"
    assert client.post("/predict/tiny", json={"inputs": "x"}).status_code == 200
    assert client.get("/models/tiny").json()["load_count"] == 2


def test_api_keys_are_enforced_except_health_and_metrics(gateway):
    client = gateway(gateway={"api_keys": ["s3cret"]})
    assert client.post("/predict/tiny", json={"inputs": "x"}).status_code == 401
    assert client.get("/models", headers={"X-API-Key": "wrong"}).status_code == 401
    ok = client.post("/predict/tiny", json={"inputs": "x"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert "s3cret" not in client.get("/status", headers={"X-API-Key": "s3cret"}).text


def test_health_reports_runtimes(gateway):
    client = gateway()
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["runtimes"]["ray_serve"]["ok"] is True


def test_pin_unpin_and_decisions_newest_first(gateway):
    client = gateway()
    assert client.post("/models/tiny/pin").json()["pinned"] is True
    assert client.post("/models/tiny/unpin").json()["pinned"] is False
    assert client.post("/models/ghost/pin").status_code == 404
    decisions = client.get("/decisions?model=tiny").json()["decisions"]
    assert [d["action"] for d in decisions[:2]] == ["unpin", "pin"]
    assert all(d["model"] == "tiny" for d in decisions)
