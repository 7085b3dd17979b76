"""Bounded requests: body size (413 while reading), batch length (422), the runtime call
timeout (504, slot freed), and a client that leaves a non-streamed call (upstream
cancelled). The gateway runs in uvicorn on a real port (tests/unit/test_gateway_openai.py)."""

from __future__ import annotations

import asyncio
import socket
import time
from urllib.parse import urlparse

import httpx

from tests.unit.test_gateway_openai import (  # noqa: F401 - fixtures
    Stack,
    stack,
    stack_factory,
    upstream,
    upstream_server,
)


def _raw(url: str, head: bytes, body_chunks: list[bytes]) -> bytes:
    """Send a request by hand and return what the server answered (it may answer, and close,
    before the body is all sent: that is the point)."""
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break  # the server answered and closed
        sock.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.find(b"\r\n\r\n") + 40:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_a_body_over_the_limit_is_413_without_being_read(stack_factory) -> None:
    stack: Stack = stack_factory(gateway={"max_body_bytes": 64 * 1024})
    declared = 256 * 1024 * 1024
    head = (f"POST /predict/llama-r HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    started = time.monotonic()
    answer = _raw(stack.gateway.url, head, [b"x" * 16384])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"gateway.max_body_bytes is 65536" in answer and time.monotonic() - started < 5


def test_a_chunked_body_is_cut_off_at_the_limit(stack_factory) -> None:
    stack: Stack = stack_factory(gateway={"max_body_bytes": 64 * 1024})
    head = (b"POST /predict/llama-r HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (32768, b"y" * 32768)
    answer = _raw(stack.gateway.url, head, [chunk] * 8)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_too_many_inputs_is_422_naming_the_limit(stack_factory) -> None:
    stack: Stack = stack_factory(gateway={"max_batch_items": 4})
    many = stack.http.post("/predict/llama-r", json={"inputs": ["x"] * 5})
    assert many.status_code == 422 and "gateway.max_batch_items" in many.json()["error"]["message"]
    prompts = stack.http.post("/v1/completions", json={"model": "llama-v", "prompt": ["a"] * 5})
    assert prompts.status_code == 422 and "prompt: at most 4" in prompts.json()["error"]["message"]
    assert stack.http.post("/predict/llama-r", json={"inputs": ["x"] * 4}).status_code == 200


def test_a_hung_runtime_call_is_504_and_frees_its_slot(stack_factory) -> None:
    stack: Stack = stack_factory(gateway={"request_timeout_seconds": 0.3})
    async def hang(name, inputs, parameters):
        await asyncio.sleep(3600)  # a replica that never answers

    stack.ray.infer = hang  # type: ignore[method-assign]
    answer = stack.http.post("/predict/llama-r", json={"inputs": "hi"})
    assert answer.status_code == 504 and "request_timeout_seconds" in answer.json()["error"]["message"]
    assert stack.gateway.call(_in_flight(stack, "llama-r")) == 0


async def _in_flight(stack: Stack, name: str) -> int:
    return stack.orchestrator.admission.in_flight(name)


def test_a_client_that_leaves_cancels_the_upstream_call(stack: Stack) -> None:
    try:
        httpx.post(f"{stack.gateway.url}/v1/completions", json={"model": "llama-v", "prompt": "hang"},
                   timeout=0.5, trust_env=False)
    except httpx.TimeoutException:
        pass
    assert stack.upstream.stream_abandoned.wait(10), "the gateway kept the upstream call going"
    deadline = time.monotonic() + 5
    while stack.gateway.call(_in_flight(stack, "llama-v")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.gateway.call(_in_flight(stack, "llama-v")) == 0
