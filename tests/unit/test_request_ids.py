"""Request ids: accepted or made by the middleware, answered in the header and the body,
on every log line of the request, including the load it triggers, and sent to Triton."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import Route

from modelium.config import settings_from_dict
from modelium.gateway import create_app
from modelium.gateway.request_ids import RequestIds, accepted_request_id
from modelium.hardware import GIB, Device, Inventory, MemoryLedger
from modelium.logs import (
    RequestIdFilter,
    TextFormatter,
    current_request_id,
    request_id_var,
)
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import Orchestrator
from modelium.runtimes.triton.client import TritonClient
from tests.unit.fakes import FakeManager, make_config_only_model
from tests.unit.log_capture import modelium_logs_at_info


class Captured(logging.Handler):
    """A root handler with the daemon's filter: what would reach the daemon's log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, request_id: str) -> list[str]:
        return [r.getMessage() for r in self.records if getattr(r, "request_id", None) == request_id]


@pytest.fixture
def captured():
    with modelium_logs_at_info(Captured()) as handler:
        yield handler


@pytest.fixture
def gateway(tmp_path: Path):
    stack = contextlib.ExitStack()

    def build(**config) -> tuple[TestClient, Orchestrator, FakeManager]:
        for name in ("tiny", "other"):
            make_config_only_model(tmp_path / "models/repository" / name)
        settings = settings_from_dict({"gateway": {"max_body_bytes": 2048}, **config}, base_dir=tmp_path)
        inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, 8 * GIB, "simulated"),), source="configured")
        manager = FakeManager()
        metrics = ModeliumMetrics()
        orchestrator = Orchestrator(settings, {"ray_serve": manager}, inventory, MemoryLedger(), metrics)
        client = stack.enter_context(TestClient(create_app(orchestrator, metrics)))
        client.portal.call(orchestrator.start)
        client.portal.call(orchestrator.quiesce)
        return client, orchestrator, manager

    yield build
    stack.close()


@pytest.mark.parametrize("value, kept", [
    ("abc-123", True), ("a" * 128, True), ("trace:1/2=x@y", True),
    ("", False), ("a" * 129, False), ("has space", False), ("tab\tx", False), ("é", False),
])
def test_what_is_accepted(value, kept):
    assert (accepted_request_id(value) == value) is kept
    assert accepted_request_id(value.encode("utf-8")) == (value if kept else None)


def test_client_id_comes_back_in_header_and_predict_body(gateway):
    client, _, _ = gateway()
    response = client.post("/predict/tiny", json={"inputs": "x"}, headers={"X-Request-ID": "client-id-1"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "client-id-1"
    assert response.json()["request_id"] == "client-id-1"


def test_a_refused_or_missing_id_is_replaced_by_one_new_id(gateway):
    client, _, _ = gateway()
    for headers in ({"X-Request-ID": "x" * 200}, {"X-Request-ID": "two words"}, {}):
        response = client.post("/predict/tiny", json={"inputs": "x"}, headers=headers)
        new_id = response.headers["x-request-id"]
        assert len(new_id) == 16 and int(new_id, 16) >= 0
        assert response.json()["request_id"] == new_id
    ids = {client.get("/models").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_errors_carry_the_same_id(gateway):
    client, _, _ = gateway()
    headers = {"X-Request-ID": "err-1"}
    for response in (client.post("/predict/nope", json={"inputs": "x"}, headers=headers),   # 404
                     client.post("/predict/tiny", json={"input": "x"}, headers=headers),    # 422
                     client.get("/no/such/route", headers=headers)):                         # 404 route
        assert response.headers["x-request-id"] == "err-1", response.text
        assert response.json()["error"]["request_id"] == "err-1", response.text
    too_large = client.post("/predict/tiny", content=b"x" * 5000, headers={**headers, "content-type": "application/json"})
    assert too_large.status_code == 413 and too_large.headers["x-request-id"] == "err-1"


def test_an_unhandled_exception_is_a_500_with_the_id(captured):
    async def boom(_request):
        raise RuntimeError("secret internals")

    app = Starlette(routes=[Route("/boom", boom)])
    app.add_middleware(RequestIds)  # as the gateway does: inside Starlette's ServerErrorMiddleware
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "boom-1"
    body = response.json()["error"]
    assert body["request_id"] == "boom-1" and "secret" not in response.text
    assert any("failed" in m for m in captured.of("boom-1"))  # the detail is logged under the id


def test_the_load_a_request_triggers_logs_under_its_id(gateway, captured):
    client, orchestrator, _ = gateway()
    assert client.post("/models/tiny/unload").status_code == 200
    assert client.post("/models/other/unload").status_code == 200
    client.portal.call(orchestrator.quiesce)
    captured.records.clear()
    response = client.post("/predict/tiny", json={"inputs": "x"}, headers={"X-Request-ID": "cold-1"})
    assert response.status_code == 200, response.text
    lines = captured.of("cold-1")
    assert any(m.startswith("decision place tiny") for m in lines), lines
    assert any(m.startswith("decision load tiny") for m in lines), lines  # logged by the load task
    decisions = client.get("/decisions", params={"model": "tiny"}).json()["decisions"]
    assert {d["action"]: d.get("request_id") for d in decisions[:2]} == {"load": "cold-1", "place": "cold-1"}
    # The user's load carries the id of the POST that asked for it.
    assert client.post("/models/other/load", headers={"X-Request-ID": "load-1"}).status_code == 200
    assert any(m.startswith("decision load other") for m in captured.of("load-1"))
    assert not any("other" in m for m in captured.of("cold-1"))


def test_a_load_never_inherits_an_unrelated_kickers_id(gateway, captured):
    """Request A for a READY model kicks the scheduler in the same loop iteration as the
    restore of B: B's load must not log under A's id (call_soon would copy A's context)."""
    client, orchestrator, _ = gateway()
    assert client.post("/models/other/unload").status_code == 200
    client.portal.call(orchestrator.quiesce)
    captured.records.clear()

    async def both() -> None:
        token = request_id_var.set("unrelated-1")
        try:
            orchestrator.scheduler.kick()  # kicked from A's context...
        finally:
            request_id_var.reset(token)
        orchestrator.scheduler.want(orchestrator.get("other"), explicit=True, allow_evict=True)  # ...B has no id
        await orchestrator.quiesce()

    client.portal.call(both)
    assert orchestrator.get("other").state.value == "ready"
    assert captured.of("unrelated-1") == []


def test_log_filter_and_text_format():
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(TextFormatter())
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    token = request_id_var.set("fmt-1")
    try:
        assert handler.filter(record) and current_request_id() == "fmt-1"
    finally:
        request_id_var.reset(token)
    assert handler.format(record).endswith("hello [request_id=fmt-1]")
    bare = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    handler.filter(bare)
    assert handler.format(bare).endswith("hello")


def test_triton_calls_carry_the_request_id():
    seen: list[httpx.Headers] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json={})

    async def calls() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            client = TritonClient(http, lambda: "http://triton", lambda: {"x-modelium-key": "k"})
            await client.request("POST", "/v2/models/m/infer", json={})
            token = request_id_var.set("triton-1")
            try:
                await client.request("POST", "/v2/models/m/infer", json={})
                await client.load("m", 5.0)
            finally:
                request_id_var.reset(token)

    asyncio.run(calls())
    assert "x-request-id" not in seen[0] and seen[0]["x-modelium-key"] == "k"
    assert [h.get("x-request-id") for h in seen[1:]] == ["triton-1", "triton-1"]
    assert all(h["x-modelium-key"] == "k" for h in seen)
