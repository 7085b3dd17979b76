"""GET /dashboard, its assets, /dashboard/live and GET /models/NAME/logs, over a real
orchestrator with a fake runtime."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelium.config import settings_from_dict
from modelium.gateway import create_app
from modelium.hardware import GIB, Device, Inventory, MemoryLedger
from modelium.log_tail import ModelLogTail
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import Orchestrator
from tests.unit.fakes import FakeManager, make_config_only_model
from tests.unit.log_capture import modelium_logs_at_info


@pytest.fixture
def gateway(tmp_path: Path):
    """(client, tail): a started gateway whose log tail listens to the root logger (at INFO,
    as the daemon logs)."""
    stack = contextlib.ExitStack()

    def build(**config) -> tuple[TestClient, ModelLogTail]:
        make_config_only_model(tmp_path / "models/repository/tiny")
        settings = settings_from_dict(config, base_dir=tmp_path)
        inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, 8 * GIB, "simulated"),), source="configured")
        metrics = ModeliumMetrics()
        orchestrator = Orchestrator(settings, {"ray_serve": FakeManager()}, inventory, MemoryLedger(), metrics)
        tail = stack.enter_context(modelium_logs_at_info(ModelLogTail(lines_per_model=50)))
        client = stack.enter_context(TestClient(create_app(orchestrator, metrics, log_tail=tail)))
        client.portal.call(orchestrator.start)
        client.portal.call(orchestrator.quiesce)
        return client, tail

    yield build
    stack.close()


def test_page_and_assets_need_no_key_but_data_does(gateway):
    client, _ = gateway(gateway={"api_keys": ["sekret"]})
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="models-body"' in page.text and "/dashboard/static/dashboard.js" in page.text
    script = client.get("/dashboard/static/dashboard.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "Authorization" in script.text and "localStorage" in script.text
    assert client.get("/dashboard/static/dashboard.css").headers["content-type"].startswith("text/css")
    assert client.get("/dashboard/static/..%2F..%2Fapp.py").status_code == 404
    assert client.get("/dashboard/static/index.html").status_code == 404
    assert client.get("/dashboard/live").status_code == 401
    assert client.get("/models/tiny/logs").status_code == 401
    auth = {"Authorization": "Bearer sekret"}
    assert client.get("/dashboard/live", headers=auth).status_code == 200
    assert client.get("/models/tiny/logs", headers=auth).status_code == 200


def test_live_has_qps_idle_queue_and_runtime_health(gateway):
    client, _ = gateway()
    assert client.post("/predict/tiny", json={"inputs": "x"}).status_code == 200
    live = client.get("/dashboard/live").json()
    tiny = live["models"]["tiny"]
    assert tiny["qps"] > 0 and tiny["queued"] == 0 and tiny["in_flight"] == 0
    assert tiny["idle_seconds"] >= 0
    assert live["runtimes"]["ray_serve"]["enabled"] is True
    assert isinstance(live["runtimes"]["ray_serve"]["ok"], bool)
    assert live["gpu_memory"] == []  # a simulated GPU: no NVML reading


def test_logs_are_the_models_own_lines_in_order(gateway):
    client, _ = gateway()
    answer = client.get("/models/tiny/logs").json()
    assert answer["model"] == "tiny" and answer["lines"], answer  # its load decisions
    seqs = [line["seq"] for line in answer["lines"]]
    assert seqs == sorted(seqs) and answer["next"] == seqs[-1]
    assert all(set(line) == {"seq", "time", "level", "logger", "message"} for line in answer["lines"])
    assert any("tiny" in line["message"] for line in answer["lines"])
    logging.getLogger("modelium.test").info("other model", extra={"model": "other"})
    logging.getLogger("modelium.test").warning("hello tiny", extra={"model": "tiny"})
    newer = client.get("/models/tiny/logs", params={"after": answer["next"]}).json()
    assert [line["message"] for line in newer["lines"]] == ["hello tiny"]
    assert newer["lines"][0]["level"] == "WARNING" and newer["next"] > answer["next"]
    empty = client.get("/models/tiny/logs", params={"after": newer["next"]}).json()
    assert empty["lines"] == [] and empty["next"] == newer["next"]
    one = client.get("/models/tiny/logs", params={"limit": 1}).json()
    assert len(one["lines"]) == 1 and one["lines"][0]["seq"] == seqs[0] and one["next"] == seqs[0]


def test_logs_unknown_model_is_the_same_404_as_get_model(gateway):
    client, _ = gateway()
    logs = client.get("/models/nope/logs")
    model = client.get("/models/nope")
    assert logs.status_code == model.status_code == 404
    assert logs.json()["error"]["type"] == model.json()["error"]["type"] == "model_not_found"
    assert logs.json()["error"]["known_models"] == ["tiny"]


def test_logs_limit_beyond_the_max_is_422_naming_it(gateway):
    client, _ = gateway()
    assert client.get("/models/tiny/logs", params={"limit": 1000}).status_code == 200
    too_many = client.get("/models/tiny/logs", params={"limit": 1001})
    assert too_many.status_code == 422 and "1000" in too_many.json()["error"]["message"]
    assert client.get("/models/tiny/logs", params={"limit": 0}).status_code == 422
    assert client.get("/models/tiny/logs", params={"after": -1}).status_code == 422
    assert client.get("/models/tiny/logs", params={"limit": "lots"}).status_code == 422
