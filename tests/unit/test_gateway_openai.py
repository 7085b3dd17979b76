"""OpenAI-compatible routes: vLLM pass-through (against a fake upstream OpenAI server on a
real socket) and the Ray Serve adapter, over a real orchestrator with fake runtimes.

The gateway runs in uvicorn on a real port (TestClient buffers streamed bodies, so it
could not show that chunks are relayed as they arrive or that a disconnect reaches the
upstream server).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from modelium.config import settings_from_dict
from modelium.gateway import create_app
from modelium.hardware import GIB, Device, Inventory, MemoryLedger
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import Orchestrator
from modelium.runtimes.base import LoadRequest, ModelNotLoadedError
from tests.unit.fakes import FakeManager, make_config_only_model

WAIT = 10.0  # seconds any single step may take before the test fails instead of hanging


# --------------------------------------------------------------------------- servers


class ServerThread:
    """Serve an ASGI app with uvicorn on a free loopback port, in a thread with its own loop."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop (where the orchestrator lives)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)
        self.sock.close()


class Upstream:
    """A fake vLLM OpenAI server. Streams send one chunk, then wait for ``release``."""

    def __init__(self) -> None:
        self.reset()
        app = FastAPI()

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self._answer(request, chat=False)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await self._answer(request, chat=True)

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response("vllm:num_requests_running 0.0\n", media_type="text/plain; version=0.0.4")

        self.server = ServerThread(app)
        self.url = self.server.url

    def reset(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.release = threading.Event()
        self.stream_started = threading.Event()
        self.stream_finished = threading.Event()
        self.stream_abandoned = threading.Event()

    async def _answer(self, request: Request, *, chat: bool) -> Response:
        raw = await request.body()
        self.bodies.append(raw)
        self.headers.append(dict(request.headers))
        body = json.loads(raw)
        if body.get("max_tokens") == -1:
            return JSONResponse(status_code=400, content={
                "object": "error", "message": "max_tokens must be at least 1, got -1.",
                "type": "BadRequestError", "param": "max_tokens", "code": 400})
        if body.get("prompt") == "hang" and not body.get("stream"):
            while not self.release.is_set():  # until the test releases, or the caller leaves
                if await request.is_disconnected():
                    self.stream_abandoned.set()
                    return Response(status_code=499)
                await asyncio.sleep(0.01)
        if not body.get("stream"):
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": "hi from vllm"},
                          "finish_reason": "stop", "logprobs": None}
            else:
                choice = {"index": 0, "text": "hello from vllm", "finish_reason": "length", "logprobs": None}
            return JSONResponse({
                "id": "up-1", "object": "chat.completion" if chat else "text_completion", "created": 1,
                "model": body["model"], "choices": [choice],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
        return StreamingResponse(self._stream(body, chat), media_type="text/event-stream")

    async def _stream(self, body: dict[str, Any], chat: bool) -> Any:
        def event(text: str | None, finish: str | None = None) -> bytes:
            if chat:
                delta = {"content": text} if text is not None else {}
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish}
            return f"data: {json.dumps({'id': 'up-s', 'model': body['model'], 'choices': [choice]})}\n\n".encode()

        finished = False
        release, done, abandoned = self.release, self.stream_finished, self.stream_abandoned
        try:
            self.stream_started.set()
            if chat:
                yield b'data: {"id": "up-s", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
            yield event("A")
            while not release.is_set():  # the test reads chunk 1 first, then releases
                await asyncio.sleep(0.01)
            yield event("B")
            yield event("C", "length")
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
                yield f"data: {json.dumps({'id': 'up-s', 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            (done if finished else abandoned).set()


# --------------------------------------------------------------------------- fake runtimes


class FakeVllm(FakeManager):
    """Pretends to run one OpenAI server per model; ``urls`` gives the URL per load."""

    name = "vllm"

    def __init__(self, default_url: str) -> None:
        super().__init__()
        self.default_url = default_url
        self.urls: dict[str, list[str]] = {}
        self.current: dict[str, str] = {}
        self.dead_urls: set[str] = set()

    async def load(self, request: LoadRequest) -> None:
        await super().load(request)
        queued = self.urls.get(request.name)
        self.current[request.name] = queued.pop(0) if queued else self.default_url

    async def unload(self, name: str) -> None:
        await super().unload(name)
        self.current.pop(name, None)

    def openai_base_url(self, name: str) -> str | None:
        return self.current.get(name) if name in self.loaded else None

    async def loaded_models(self) -> set[str]:
        """A server at a dead URL is a process that exited: the runtime knows it is gone."""
        live = await super().loaded_models()
        return {n for n in live if self.current.get(n) not in self.dead_urls}


class FakeTransformers(FakeManager):
    """Ray Serve stand-in whose outputs have the TransformersPredictor's generation shape."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, Any, dict[str, Any]]] = []

    async def infer(self, name: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        if name not in self.loaded:
            raise ModelNotLoadedError(name)
        self.requests.append((name, inputs, dict(parameters)))
        if parameters.get("chat"):
            return {"generated_text": f"echo: {inputs[-1]['content']}", "num_generated_tokens": 3,
                    "finish_reason": "stop", "num_prompt_tokens": 7}

        def one(prompt: str) -> dict[str, Any]:
            return {"generated_text": " world", "num_generated_tokens": 2, "finish_reason": "length",
                    "num_prompt_tokens": len(prompt.split())}

        return [one(p) for p in inputs] if isinstance(inputs, list) else one(inputs)


# --------------------------------------------------------------------------- fixtures


class Stack:
    def __init__(self, gateway: ServerThread, upstream: Upstream, orchestrator: Orchestrator,
                 vllm: FakeVllm, ray: FakeTransformers, clients: list[httpx.AsyncClient]) -> None:
        self.gateway, self.upstream, self.orchestrator = gateway, upstream, orchestrator
        self.vllm, self.ray, self.clients = vllm, ray, clients
        self.http = httpx.Client(base_url=gateway.url, timeout=WAIT, trust_env=False)

    def metric(self, name: str, **labels: str) -> float | None:
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
                return float(line.rsplit(" ", 1)[1])
        return None


@pytest.fixture(scope="module")
def upstream_server() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.release.set()
    server.server.stop()


@pytest.fixture
def upstream(upstream_server: Upstream) -> Iterator[Upstream]:
    upstream_server.reset()
    yield upstream_server
    upstream_server.release.set()  # let a stream a test left waiting finish


@pytest.fixture
def stack_factory(tmp_path: Path, upstream: Upstream) -> Iterator[Callable[..., Stack]]:
    built: list[Stack] = []

    def build(**config: Any) -> Stack:
        repo = tmp_path / "models/repository"
        for name in ("llama-v", "llama-r", "broken"):
            make_config_only_model(repo / name)
        make_config_only_model(repo / "classy", architectures=["BertForSequenceClassification"],
                               model_type="bert")
        config.setdefault("models", {"llama-v": {"runtime": "vllm"}, "llama-r": {"runtime": "ray_serve"},
                                     "broken": {"runtime": "ray_serve"}, "classy": {"runtime": "ray_serve"}})
        settings = settings_from_dict(config, base_dir=tmp_path)
        inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, 64 * GIB, "simulated"),), source="configured")
        vllm, ray = FakeVllm(upstream.url), FakeTransformers()
        ray.fail_loads.add("broken")
        metrics = ModeliumMetrics()
        orchestrator = Orchestrator(settings, {"ray_serve": ray, "vllm": vllm}, inventory, MemoryLedger(), metrics)
        clients: list[httpx.AsyncClient] = []

        def factory() -> httpx.AsyncClient:
            client = httpx.AsyncClient(timeout=httpx.Timeout(WAIT), trust_env=False)
            clients.append(client)
            return client

        gateway = ServerThread(create_app(orchestrator, metrics, http_client_factory=factory))
        stack = Stack(gateway, upstream, orchestrator, vllm, ray, clients)
        built.append(stack)
        gateway.call(orchestrator.start())
        gateway.call(orchestrator.quiesce())
        return stack

    yield build
    for stack in built:
        stack.http.close()
        stack.gateway.stop()


@pytest.fixture
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory()


def sse_data(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


# --------------------------------------------------------------------------- /v1/models


def test_v1_models_lists_every_model_with_state_and_task(stack: Stack) -> None:
    """Issue 11: every model, not only LLMs (modelium/gateway/embeddings.py answers)."""
    body = stack.http.get("/v1/models").json()
    assert body["object"] == "list"
    models = {m["id"]: m for m in body["data"]}
    assert set(models) == {"llama-r", "llama-v", "classy", "broken"}
    assert models["llama-v"]["runtime"] == "vllm" and models["llama-r"]["runtime"] == "ray_serve"
    assert models["classy"]["task"] == "text-classification" and models["llama-v"]["task"] == "text-generation"
    assert models["broken"]["state"] == "failed" and models["broken"]["reason"]
    for name in ("llama-r", "llama-v", "classy"):
        m = models[name]
        assert m["object"] == "model" and m["owned_by"] == "modelium" and m["state"] == "ready"
        assert isinstance(m["created"], int)
    stack.http.post("/models/llama-v/unload")
    listed = {m["id"]: m["state"] for m in stack.http.get("/v1/models").json()["data"]}
    assert listed["llama-v"] == "unloaded"  # still listed: it loads on demand


# --------------------------------------------------------------------------- vLLM pass-through


def test_completions_proxy_forwards_body_untouched(stack: Stack) -> None:
    raw = b'{"model": "llama-v",  "prompt": "hi", "max_tokens": 5, "top_k": 3, "vllm_extra": {"x": 1}}'
    response = stack.http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == "hello from vllm"
    assert stack.upstream.bodies == [raw]  # byte for byte, unknown fields included
    assert "authorization" not in stack.upstream.headers[0]
    assert stack.metric("modelium_generated_tokens_total", model="llama-v", runtime="vllm") == 5
    assert stack.metric("modelium_time_to_first_token_seconds_count", model="llama-v", runtime="vllm") == 1
    assert stack.metric("modelium_requests_total", model="llama-v", runtime="vllm", status="ok") == 1


def test_chat_proxy_non_stream(stack: Stack) -> None:
    response = stack.http.post("/v1/chat/completions", json={
        "model": "llama-v", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "hi from vllm"


def test_upstream_error_keeps_status_and_message(stack: Stack) -> None:
    response = stack.http.post("/v1/completions", json={"model": "llama-v", "prompt": "x", "max_tokens": -1})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == "max_tokens must be at least 1, got -1."
    assert error["type"] == "BadRequestError" and error["param"] == "max_tokens"
    assert stack.metric("modelium_requests_total", model="llama-v", runtime="vllm", status="bad_request") == 1


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_stream_is_relayed_chunk_by_chunk(stack: Stack, route: str) -> None:
    body: dict[str, Any] = {"model": "llama-v", "stream": True}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in route else {"prompt": "hi"})
    with stack.http.stream("POST", route, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = response.iter_bytes()
        received = b""
        while b'"A"' not in received:  # chunk 1 arrives while upstream is still held back
            received += next(chunks)
        assert not stack.upstream.stream_finished.is_set()
        stack.upstream.release.set()
        for chunk in chunks:
            received += chunk
    events = sse_data(received.decode())
    assert events[-1] == "[DONE]"
    texts = [json.loads(e)["choices"][0].get("text") or json.loads(e)["choices"][0].get("delta", {}).get("content")
             for e in events[:-1]]
    assert [t for t in texts if t] == ["A", "B", "C"]
    assert stack.upstream.stream_finished.wait(WAIT)
    assert stack.metric("modelium_generated_tokens_total", model="llama-v", runtime="vllm") == 3
    assert stack.metric("modelium_time_to_first_token_seconds_count", model="llama-v", runtime="vllm") == 1
    assert stack.metric("modelium_requests_total", model="llama-v", runtime="vllm", status="ok") == 1
    assert stack.metric("modelium_requests_in_flight", model="llama-v") == 0


def test_stream_usage_chunk_is_used_for_token_count(stack: Stack) -> None:
    stack.upstream.release.set()
    body = {"model": "llama-v", "prompt": "hi", "stream": True, "stream_options": {"include_usage": True}}
    with stack.http.stream("POST", "/v1/completions", json=body) as response:
        text = response.read().decode()
    assert json.loads(sse_data(text)[-2])["usage"]["completion_tokens"] == 3  # passed to the client
    assert stack.metric("modelium_generated_tokens_total", model="llama-v", runtime="vllm") == 3


def test_client_disconnect_cancels_upstream_request(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway.url, timeout=WAIT, trust_env=False) as client:
        with client.stream("POST", "/v1/completions",
                           json={"model": "llama-v", "prompt": "hi", "stream": True}) as response:
            first = next(response.iter_bytes())
            assert b'"A"' in first
        # leaving the block closes the connection while upstream is still generating
    assert stack.upstream.stream_abandoned.wait(WAIT), "upstream request was not cancelled"
    assert not stack.upstream.stream_finished.is_set()
    deadline = time.monotonic() + WAIT
    while stack.metric("modelium_requests_total", model="llama-v", runtime="vllm", status="cancelled") != 1:
        assert time.monotonic() < deadline, "cancelled request not counted"
        time.sleep(0.05)
    assert stack.metric("modelium_requests_in_flight", model="llama-v") == 0


def test_refused_connection_reports_lost_and_retries_once(stack: Stack, upstream: Upstream) -> None:
    with socket.socket() as dead:  # bound but not listening: connections are refused
        dead.bind(("127.0.0.1", 0))
        stack.http.post("/models/llama-v/unload")
        stack.vllm.dead_urls.add(f"http://127.0.0.1:{dead.getsockname()[1]}")
        stack.vllm.urls["llama-v"] = [f"http://127.0.0.1:{dead.getsockname()[1]}"]
        assert stack.http.post("/models/llama-v/load").status_code == 200
        response = stack.http.post("/v1/completions", json={"model": "llama-v", "prompt": "hi"})
        assert response.status_code == 200, response.text
        assert stack.http.get("/models/llama-v").json()["load_count"] == 3
        decisions = stack.http.get("/decisions").json()["decisions"]
        assert any(d["model"] == "llama-v" and d["action"] == "lost" for d in decisions)

        dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
        stack.vllm.default_url = dead_url
        stack.vllm.current["llama-v"] = dead_url
        refused = stack.http.post("/v1/completions", json={"model": "llama-v", "prompt": "hi", "stream": True})
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "runtime_unavailable"


def test_one_shared_http_client_closed_at_shutdown(stack: Stack) -> None:
    stack.upstream.release.set()
    for _ in range(3):
        stack.http.post("/v1/completions", json={"model": "llama-v", "prompt": "hi"})
        stack.http.post("/v1/completions", json={"model": "llama-v", "prompt": "hi", "stream": True})
    assert len(stack.clients) == 1
    stack.gateway.stop()
    assert stack.clients[0].is_closed


def test_vllm_metrics_proxy(stack: Stack) -> None:
    response = stack.http.get("/runtimes/vllm/llama-v/metrics")
    assert response.status_code == 200 and "vllm:num_requests_running" in response.text
    assert stack.http.get("/runtimes/vllm/llama-r/metrics").status_code == 404  # not on vLLM
    assert stack.http.get("/runtimes/vllm/nope/metrics").status_code == 404
    stack.http.post("/models/llama-v/unload")
    not_loaded = stack.http.get("/runtimes/vllm/llama-v/metrics")
    assert not_loaded.status_code == 409 and "unloaded" in not_loaded.json()["error"]["message"]
    assert stack.vllm.calls.count(("load", "llama-v")) == 1  # asking did not load it


# --------------------------------------------------------------------------- Ray Serve adapter


def test_adapter_completions(stack: Stack) -> None:
    response = stack.http.post("/v1/completions", json={"model": "llama-r", "prompt": "hello there",
                                                         "temperature": 0, "n": 1, "stop": None, "user": "u"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion" and body["model"] == "llama-r" and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"index": 0, "text": " world", "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"completion_tokens": 2, "prompt_tokens": 2, "total_tokens": 4}
    _, inputs, parameters = stack.ray.requests[-1]
    assert inputs == "hello there"
    assert parameters == {"max_new_tokens": 16, "do_sample": False, "count_prompt_tokens": True}

    batch = stack.http.post("/v1/completions", json={"model": "llama-r", "prompt": ["a", "b c"], "echo": True,
                                                      "max_tokens": 4, "temperature": 0.5, "top_p": 0.9}).json()
    assert [c["text"] for c in batch["choices"]] == ["a world", "b c world"]
    assert stack.ray.requests[-1][2] == {"max_new_tokens": 4, "do_sample": True, "temperature": 0.5,
                                         "top_p": 0.9, "count_prompt_tokens": True}
    assert stack.metric("modelium_generated_tokens_total", model="llama-r", runtime="ray_serve") == 6
    assert stack.metric("modelium_time_to_first_token_seconds_count", model="llama-r", runtime="ray_serve") == 2


def test_adapter_chat(stack: Stack) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ping"}]
    response = stack.http.post("/v1/chat/completions", json={"model": "llama-r", "messages": messages,
                                                              "max_completion_tokens": 8})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "echo: ping"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"completion_tokens": 3, "prompt_tokens": 7, "total_tokens": 10}
    _, inputs, parameters = stack.ray.requests[-1]
    assert inputs == messages
    assert parameters["chat"] is True and parameters["max_new_tokens"] == 8
    assert parameters["do_sample"] is True and parameters["temperature"] == 1.0  # OpenAI's default


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_adapter_stream_is_sse(stack: Stack, route: str) -> None:
    body: dict[str, Any] = {"model": "llama-r", "stream": True, "stream_options": {"include_usage": True}}
    body.update({"messages": [{"role": "user", "content": "ping"}]} if "chat" in route else {"prompt": "hi"})
    with stack.http.stream("POST", route, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_data(response.read().decode())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 3
    if "chat" in route:
        assert chunks[0]["object"] == "chat.completion.chunk"
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "echo: ping"}
    else:
        assert chunks[0]["choices"][0]["text"] == " world"
    assert chunks[1]["choices"][0]["finish_reason"] in {"stop", "length"}
    assert chunks[2]["choices"] == [] and chunks[2]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(("extra", "named"), [
    ({"n": 2}, "n"),
    ({"logprobs": 1}, "logprobs"),
    ({"stop": ["\n"]}, "stop"),
    ({"top_k": 5}, "top_k"),
    ({"presence_penalty": 0.5, "seed": 1}, "presence_penalty, seed"),
])
def test_adapter_rejects_what_it_cannot_honour(stack: Stack, extra: dict[str, Any], named: str) -> None:
    response = stack.http.post("/v1/completions", json={"model": "llama-r", "prompt": "x", **extra})
    assert response.status_code == 422
    assert named in response.json()["error"]["message"]
    assert stack.ray.requests == []


def test_adapter_validates_values(stack: Stack) -> None:
    for body, word in [({"prompt": [1, 2]}, "token-id"), ({}, "prompt"), ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
                       ({"prompt": "x", "temperature": 3}, "temperature")]:
        response = stack.http.post("/v1/completions", json={"model": "llama-r", **body})
        assert response.status_code == 422 and word in response.json()["error"]["message"], body
    chat = stack.http.post("/v1/chat/completions", json={"model": "llama-r", "messages": []})
    assert chat.status_code == 422 and "messages" in chat.json()["error"]["message"]


# --------------------------------------------------------------------------- errors, auth, /predict


def test_model_field_errors(stack: Stack) -> None:
    missing = stack.http.post("/v1/completions", json={"prompt": "x"})
    assert missing.status_code == 422 and "model" in missing.json()["error"]["message"]
    unknown = stack.http.post("/v1/chat/completions", json={"model": "ghost", "messages": []})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "model_not_found"
    assert "llama-v" in unknown.json()["error"]["known_models"]
    not_llm = stack.http.post("/v1/completions", json={"model": "classy", "prompt": "x"})
    assert not_llm.status_code == 422 and "not an LLM" in not_llm.json()["error"]["message"]
    failed = stack.http.post("/v1/completions", json={"model": "broken", "prompt": "x"})
    assert failed.status_code == 409 and "boom" in failed.json()["error"]["message"]
    garbage = stack.http.post("/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert garbage.status_code == 422 and garbage.json()["error"]["type"] == "invalid_request"


def test_api_key_required(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory(gateway={"api_keys": ["s3cret"]})
    assert stack.http.get("/v1/models").status_code == 401
    assert stack.http.post("/v1/completions", json={"model": "llama-v", "prompt": "x"}).status_code == 401
    assert stack.http.get("/runtimes/vllm/llama-v/metrics").status_code == 401
    ok = stack.http.post("/v1/completions", json={"model": "llama-v", "prompt": "x"},
                         headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert "authorization" not in stack.upstream.headers[-1]  # the key is not sent upstream


def test_predict_counts_generated_tokens(stack: Stack) -> None:
    response = stack.http.post("/predict/llama-r", json={"inputs": ["a", "b"]})
    assert response.status_code == 200, response.text
    assert stack.metric("modelium_generated_tokens_total", model="llama-r", runtime="ray_serve") == 4
    assert stack.metric("modelium_time_to_first_token_seconds_count", model="llama-r", runtime="ray_serve") == 1


# --------------------------------------------------------------------------- the relay's own usage request


def test_stream_asks_upstream_for_usage_and_strips_it(stack: Stack) -> None:
    """Tokens come from vLLM's usage chunk, which the client did not ask for: it is asked
    for upstream and cut out again, so the client sees the stream it asked for."""
    stack.upstream.release.set()
    body = {"model": "llama-v", "prompt": "hi", "stream": True}
    with stack.http.stream("POST", "/v1/completions", json=body,
                           headers={"X-Request-ID": "relay-test-1"}) as response:
        text = response.read().decode()
    sent = json.loads(stack.upstream.bodies[-1])
    assert sent["stream_options"] == {"include_usage": True}
    assert {k: v for k, v in sent.items() if k != "stream_options"} == body
    assert "usage" not in text and sse_data(text)[-1] == "[DONE]"
    assert stack.upstream.headers[-1].get("x-request-id") == "relay-test-1"
    assert stack.metric("modelium_generated_tokens_total", model="llama-v", runtime="vllm") == 3
