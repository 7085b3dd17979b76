"""Job routes over a real orchestrator (real admission, scheduler, SQLite store) with a
fake runtime: submit, idempotency, priority validation, results, cancel, positions,
metrics, and the request id carried into the job's run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelium.config import settings_from_dict
from modelium.gateway import create_app
from modelium.hardware import GIB, Device, Inventory, MemoryLedger
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import Orchestrator, StateStore
from tests.unit.fakes import FakeManager, make_config_only_model


class FakeGenerator(FakeManager):
    """Ray Serve stand-in answering in the TransformersPredictor's generation shape."""

    async def infer(self, name, inputs, parameters):
        await self._gate("infer", name)
        return {"generated_text": f" after {inputs!r}", "num_generated_tokens": 2, "finish_reason": "length",
                "num_prompt_tokens": 1}


@pytest.fixture
def gateway(tmp_path: Path):
    stack = contextlib.ExitStack()

    def build(manager: FakeManager | None = None, **config) -> tuple[TestClient, Orchestrator, FakeManager]:
        make_config_only_model(tmp_path / "models/repository/tiny")
        settings = settings_from_dict(config, base_dir=tmp_path)
        inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, 8 * GIB, "simulated"),), source="configured")
        manager = manager or FakeManager()
        metrics = ModeliumMetrics()
        orchestrator = Orchestrator(settings, {"ray_serve": manager}, inventory, MemoryLedger(), metrics,
                                    store=StateStore(tmp_path / "state/modelium.db"))
        client = stack.enter_context(TestClient(create_app(orchestrator, metrics)))
        client.portal.call(orchestrator.start)
        client.portal.call(orchestrator.quiesce)
        return client, orchestrator, manager

    yield build
    stack.close()


def wait_state(client: TestClient, job_id: str, state: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/jobs/{job_id}").json()
        if body["state"] == state:
            return body
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} not {state}: {body}")


def test_a_job_is_accepted_runs_and_its_result_arrives(gateway):
    client, _, _ = gateway()
    response = client.post("/jobs", json={"model": "tiny", "inputs": "hello", "priority": "high"},
                           headers={"X-Request-ID": "job-req-1"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["priority"] == "high" and job["request_id"] == "job-req-1" and job["kind"] == "predict"
    done = wait_state(client, job["id"], "succeeded")
    assert done["attempts"] == 1 and done["finished_at"] >= done["started_at"] >= done["created_at"]
    result = client.get(f"/jobs/{job['id']}/result")
    assert result.status_code == 200, result.text
    assert result.json()["result"]["outputs"] == {"echo": "hello", "device": "gpu:0", "instance": "tiny"}
    metrics = client.get("/metrics").text
    assert 'modelium_job_seconds_count{outcome="succeeded",priority="high"} 1.0' in metrics
    assert 'modelium_queue_depth{model="tiny",priority="low"} 0.0' in metrics


def test_invalid_priority_is_a_422_naming_the_allowed_values(gateway):
    client, _, _ = gateway()
    response = client.post("/jobs", json={"model": "tiny", "inputs": "x", "priority": "urgent"})
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "priority" in message and all(p in message for p in ("'high'", "'normal'", "'low'")), message


@pytest.mark.parametrize("body, where", [
    ({"model": "tiny"}, "inputs"),
    ({"inputs": "x"}, "model"),
    ({"model": "tiny", "inputs": "x", "openai": {"kind": "completions", "body": {"model": "tiny"}}}, "not both"),
    ({"openai": {"kind": "embeddings", "body": {"model": "tiny"}}}, "openai.kind"),
    ({"openai": {"kind": "completions", "body": {"model": "tiny", "stream": True}}}, "stream"),
])
def test_malformed_jobs_are_422(gateway, body, where):
    client, _, _ = gateway()
    response = client.post("/jobs", json=body)
    assert response.status_code == 422 and where in response.json()["error"]["message"], response.text


def test_unknown_model_is_404_at_submission(gateway):
    client, _, _ = gateway()
    response = client.post("/jobs", json={"model": "nope", "inputs": "x"})
    assert response.status_code == 404 and response.json()["error"]["type"] == "model_not_found"


def test_the_same_idempotency_key_is_one_job(gateway):
    client, orchestrator, _ = gateway()
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/jobs", json={"model": "tiny", "inputs": "x"}, headers=headers)
    second = client.post("/jobs", json={"model": "tiny", "inputs": "x"}, headers=headers)
    assert first.status_code == 202 and second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"] and second.headers["idempotent-replayed"] == "true"
    reused = client.post("/jobs", json={"model": "tiny", "inputs": "other"}, headers=headers)
    assert reused.status_code == 422 and reused.json()["error"]["type"] == "idempotency_key_reused"
    assert reused.json()["error"]["job_id"] == first.json()["id"]
    bad_key = client.post("/jobs", json={"model": "tiny", "inputs": "x"}, headers={"Idempotency-Key": "a b"})
    assert bad_key.status_code == 422
    wait_state(client, first.json()["id"], "succeeded")
    assert orchestrator.jobs.store.count() == 1


def test_keys_of_different_api_keys_do_not_collide(gateway):
    client, _, _ = gateway(gateway={"api_keys": ["alice", "bob"]})
    alice = client.post("/jobs", json={"model": "tiny", "inputs": "x"},
                        headers={"Idempotency-Key": "k", "Authorization": "Bearer alice"})
    bob = client.post("/jobs", json={"model": "tiny", "inputs": "y"},
                      headers={"Idempotency-Key": "k", "Authorization": "Bearer bob"})
    assert alice.status_code == bob.status_code == 202 and alice.json()["id"] != bob.json()["id"]
    assert client.get(f"/jobs/{alice.json()['id']}").status_code == 401


def test_result_before_the_end_is_409_and_cancel_stops_the_run(gateway):
    client, orchestrator, manager = gateway()
    gate = manager.gates["infer", "tiny"] = asyncio.Event()
    running = client.post("/jobs", json={"model": "tiny", "inputs": "slow"}).json()
    queued = client.post("/jobs", json={"model": "tiny", "inputs": "waits"}).json()  # one job per model runs
    wait_state(client, running["id"], "running")
    early = client.get(f"/jobs/{running['id']}/result")
    assert early.status_code == 409 and early.json()["error"]["type"] == "job_not_finished"
    assert early.headers["retry-after"] == "1"
    view = client.get(f"/jobs/{queued['id']}").json()
    assert view["state"] == "queued" and (view["queue"], view["position"]) == ("jobs", 1)
    cancelled = client.delete(f"/jobs/{queued['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    stopped = client.delete(f"/jobs/{running['id']}")
    assert stopped.status_code == 200 and stopped.json()["state"] == "cancelled"
    client.portal.call(orchestrator.quiesce)
    assert orchestrator.admission.in_flight("tiny") == 0  # the cancelled try gave its slot back
    client.portal.call(gate.set)
    assert client.get(f"/jobs/{running['id']}/result").json()["error"]["type"] == "job_cancelled"
    assert client.delete(f"/jobs/{running['id']}").status_code == 200  # cancelling again: the same answer
    assert client.get("/jobs/job-nope").status_code == 404


def test_a_running_job_shows_its_place_in_the_models_queue(gateway):
    client, orchestrator, manager = gateway(orchestration={"max_concurrent_requests": 1})
    gate = manager.gates["infer", "tiny"] = asyncio.Event()
    blocker = client.portal.start_task_soon(
        lambda: orchestrator.predict("tiny", "sync", {}))  # holds the model's only slot
    deadline = time.monotonic() + 5
    while ("infer", "tiny") not in manager.entered and time.monotonic() < deadline:
        time.sleep(0.01)
    job = client.post("/jobs", json={"model": "tiny", "inputs": "job"}, headers={"X-Request-ID": "q-1"}).json()
    deadline = time.monotonic() + 5
    view = client.get(f"/jobs/{job['id']}").json()
    while view["queue"] != "model" and time.monotonic() < deadline:
        time.sleep(0.01)
        view = client.get(f"/jobs/{job['id']}").json()
    # Found by the request id its try runs under: the submitter's.
    assert view["state"] == "running" and (view["queue"], view["position"]) == ("model", 1), view
    metrics = client.get("/metrics").text
    assert 'modelium_queue_depth{model="tiny",priority="normal"} 1.0' in metrics
    client.portal.call(gate.set)  # on the loop: asyncio.Event is not thread-safe
    blocker.result(5)
    wait_state(client, job["id"], "succeeded")


def test_an_openai_job_runs_through_the_openai_route(gateway):
    client, _, _ = gateway(FakeGenerator(), gateway={"api_keys": ["k1"]})
    auth = {"Authorization": "Bearer k1", "X-Request-ID": "oa-1"}
    response = client.post("/jobs", json={"openai": {"kind": "completions",
                                                     "body": {"model": "tiny", "prompt": "hello", "max_tokens": 2}},
                                          "priority": "low"}, headers=auth)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["model"] == "tiny" and job["kind"] == "openai" and job["priority"] == "low"
    deadline = time.monotonic() + 10
    while client.get(f"/jobs/{job['id']}", headers=auth).json()["state"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    result = client.get(f"/jobs/{job['id']}/result", headers=auth).json()["result"]
    assert result["object"] == "text_completion" and result["choices"][0]["text"] == " after 'hello'"
    assert result["usage"]["completion_tokens"] == 2
    bad = client.post("/jobs", json={"openai": {"kind": "chat.completions",
                                                "body": {"model": "tiny", "messages": "not a list"}}}, headers=auth)
    deadline = time.monotonic() + 10
    while (view := client.get(f"/jobs/{bad.json()['id']}", headers=auth).json())["state"] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert view["error"]["status"] == 422 and view["attempts"] == 1, view
