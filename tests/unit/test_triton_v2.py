"""Triton's KServe v2 pass-through (Capability.KSERVE_V2): bodies relayed byte for byte with
the server's key, answers classified by status code, against a fake Triton
(httpx MockTransport)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from modelium.runtimes.base import (
    Capability,
    ModelNotLoadedError,
    RuntimeUnavailableError,
)
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.triton import manager as manager_module
from modelium.runtimes.triton.client import TritonClient
from modelium.runtimes.triton.manager import TritonManager


class FakeTriton:
    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []
        self.answer = (200, b'{"outputs": []}', {})
        self.ready = True
        self.state = "READY"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path
        if path == "/v2/health/ready":
            return httpx.Response(200)
        if path == "/v2/repository/index":
            return httpx.Response(200, json=[{"name": "m", "version": "1", "state": self.state}])
        if path == "/v2/repository/models/m/unload":
            self.state = "UNAVAILABLE"
            return httpx.Response(200, json={})
        if path == "/v2/models/m/ready":
            return httpx.Response(200 if self.ready else 400, json={})
        if path == "/v2/models/m":
            return httpx.Response(200, json={"name": "m", "inputs": [{"name": "X"}]})
        status, content, headers = self.answer
        return httpx.Response(status, content=content, headers=headers)


@pytest.fixture
def triton(monkeypatch: pytest.MonkeyPatch) -> FakeTriton:
    fake = FakeTriton()
    real = httpx.AsyncClient

    def client(**kwargs):
        kwargs.pop("limits", None)
        return real(transport=httpx.MockTransport(fake), **kwargs)

    monkeypatch.setattr(manager_module.httpx, "AsyncClient", client)
    return fake


async def _adopted(tmp_path: Path) -> TritonManager:
    manager = TritonManager(install=None, state_dir=tmp_path, endpoint="127.0.0.1:1", startup_timeout_seconds=5)
    await manager.start()
    await manager.adopt({"m": tmp_path})
    return manager


async def test_declares_kserve_v2_and_relays_binary_bodies_as_is(tmp_path: Path, triton: FakeTriton) -> None:
    manager = await _adopted(tmp_path)
    assert Capability.KSERVE_V2 in manager.capabilities
    body = b'{"inputs":[{"name":"X","parameters":{"binary_data_size":4}}]}' + b"\x01\x02\x03\x04"
    triton.answer = (200, b'{"model_name":"m"}RAW!', {"Inference-Header-Content-Length": "18",
                                                       "content-type": "application/octet-stream"})
    answer = await manager.v2_infer("m", body, len(body) - 4)
    sent = triton.seen[-1]
    assert sent.url.path == "/v2/models/m/infer" and sent.content == body
    assert sent.headers["inference-header-content-length"] == str(len(body) - 4)
    assert answer.content == b'{"model_name":"m"}RAW!' and answer.header_length == 18
    assert answer.content_type == "application/octet-stream"
    assert (await manager.v2_metadata("m"))["inputs"] == [{"name": "X"}]
    await manager.stop()


async def test_errors_are_classified_by_status(tmp_path: Path, triton: FakeTriton) -> None:
    manager = await _adopted(tmp_path)
    triton.answer = (400, json.dumps({"error": "unexpected datatype"}).encode(), {})
    with pytest.raises(BadRequestError, match="unexpected datatype"):
        await manager.v2_infer("m", b"{}", None)
    triton.answer = (500, b'{"error": "model said not found"}', {})
    with pytest.raises(RuntimeUnavailableError):
        await manager.v2_infer("m", b"{}", None)
    triton.answer, triton.ready = (404, b'{"error": "unknown model"}', {}), False
    with pytest.raises(ModelNotLoadedError):
        await manager.v2_infer("m", b"{}", None)
    with pytest.raises(ModelNotLoadedError):
        await manager.v2_infer("other", b"{}", None)  # never loaded by this manager: no call made
    assert all(r.url.path != "/v2/models/other/infer" for r in triton.seen)
    await manager.stop()


async def test_client_adds_the_servers_key_and_never_lets_a_caller_replace_it() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as http:
        client = TritonClient(http, lambda: "http://triton", lambda: {"x-modelium-key": "secret"})
        await client.infer_raw("m", b"{}", None)
        await client.request("GET", "/v2/models/m", headers={"x-modelium-key": "forged"})
    assert [r.headers["x-modelium-key"] for r in seen] == ["secret", "secret"]
    assert seen[0].headers["content-type"] == "application/json"
