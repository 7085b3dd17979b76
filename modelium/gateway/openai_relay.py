"""The relay to a model's own OpenAI server (vLLM): the gateway's hot path.

* Non-streamed: the client's body is forwarded byte for byte over the one shared pooled
  ``httpx.AsyncClient`` (bounded by ``gateway.request_timeout_seconds``, cancelled when
  the client leaves); the answer comes back with vLLM's status and JSON.
* Streamed (``"stream": true``): over :class:`~.upstream_http.StreamPool` (an asyncio
  protocol with httptools; see that module for why not httpx), and relayed as raw bytes:
  whatever arrived since the last write goes out in one ``send``, watched by a
  :class:`~.sse_tap.StreamTap` (a few byte searches per chunk, no JSON). When the client
  did not ask for ``stream_options.include_usage`` the gateway asks for it (the token
  count comes from vLLM's usage chunk) and cuts that chunk out again before it reaches
  the client. When the client goes away the upstream connection is closed at once, which
  makes vLLM abort the generation; a server that dies mid-stream is reported in-stream.
* Errors are normalised to ``{"error": {"type", "message", ...}}`` keeping vLLM's status
  and message (OpenAI's error shape). Each upstream request carries the runtime's key
  (``upstream_headers``) and the request's ``X-Request-ID`` (:func:`upstream_headers`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from modelium.gateway.errors import error_response
from modelium.gateway.limits import unless_client_leaves
from modelium.gateway.openai_adapter import SSE_HEADERS, Recorder
from modelium.gateway.request_ids import REQUEST_ID_HEADER, current_request_id
from modelium.gateway.sse_tap import StreamTap, ask_for_usage
from modelium.gateway.upstream_http import ClientLeft, StreamPool, UpstreamStream
from modelium.orchestrator import Orchestrator, Serving

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=60.0)
HttpClientFactory = Callable[[], httpx.AsyncClient]


def default_http_client() -> httpx.AsyncClient:
    """Pooled client for loopback vLLM servers: long read timeout (long generations), no
    proxies from the environment."""
    return httpx.AsyncClient(
        timeout=UPSTREAM_TIMEOUT,
        limits=httpx.Limits(max_connections=1024, max_keepalive_connections=128),
        trust_env=False,
    )


class UpstreamClient:
    """The shared clients: httpx for plain calls, :class:`StreamPool` for streams; both
    created on first use (on the serving loop), closed at shutdown by the app's lifespan."""

    def __init__(self, factory: HttpClientFactory | None = None) -> None:
        self._factory = factory or default_http_client
        self._client: httpx.AsyncClient | None = None
        self._streams: StreamPool | None = None

    def get(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._factory()
        return self._client

    def streams(self) -> StreamPool:
        if self._streams is None:
            self._streams = StreamPool(connect_timeout=UPSTREAM_TIMEOUT.connect or 10.0,
                                       read_timeout=UPSTREAM_TIMEOUT.read or 600.0)
        return self._streams

    async def aclose(self) -> None:
        client, self._client = self._client, None
        streams, self._streams = self._streams, None
        if streams is not None:
            await streams.aclose()
        if client is not None:
            await client.aclose()


class RequestFailed(Exception):
    """A response to return as is (counted under its status)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def upstream_headers(runtime_headers: dict[str, str]) -> dict[str, str]:
    """The headers of every relayed request: JSON, no compression (bytes are relayed as
    they come), the runtime's own key, and the request's id (so vLLM's logs and ours
    name the same request)."""
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **runtime_headers}
    request_id = current_request_id()
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    return headers


class VllmRelay:
    def __init__(self, orchestrator: Orchestrator, upstream: UpstreamClient, record: Recorder) -> None:
        self.orchestrator, self.upstream, self.record = orchestrator, upstream, record

    async def proxy(self, request: Request, kind: str, raw: bytes, body: dict[str, Any], serving: Serving,
                    base_url: str, started: float, stream: bool) -> Response:
        """Relay to the model's own server; ``serving`` is released when the answer (or
        the stream) ends, whatever happens."""
        url = f"{base_url.rstrip('/')}/v1/{kind}"
        manager = self.orchestrator.managers[serving.record.runtime or ""]
        headers = upstream_headers(manager.upstream_headers(serving.instance))
        if not stream:
            return await self._plain(request, url, raw, headers, serving, started)
        raw, strip_usage = ask_for_usage(raw, body)
        try:
            upstream = await self.upstream.streams().post(url, raw, headers)
            if upstream.status >= 400:
                try:
                    content = await upstream.read_all()
                finally:
                    upstream.close()
                raise RequestFailed(upstream_error(upstream.status, content))
        except BaseException:
            self.orchestrator.release(serving)
            raise
        tap = StreamTap(started, strip_usage=strip_usage)

        def on_close(client_gone: bool) -> None:
            self.orchestrator.release(serving)
            status = "cancelled" if client_gone and not tap.done else ("error" if tap.failed else "ok")
            self.record(serving.record, tap.first_text_seconds, tap.tokens, time.perf_counter() - started,
                        status)

        return RelayResponse(upstream, tap, on_close, serving.record.name)

    async def _plain(self, request: Request, url: str, raw: bytes, headers: dict[str, str], serving: Serving,
                     started: float) -> Response:
        """Bounded by ``gateway.request_timeout_seconds``, cancelled when the client leaves."""
        timeout = self.orchestrator.settings.gateway.request_timeout_seconds
        client = self.upstream.get()
        try:
            upstream = await unless_client_leaves(
                request, asyncio.wait_for(client.post(url, content=raw, headers=headers), timeout))
        finally:
            self.orchestrator.release(serving)
        seconds = time.perf_counter() - started
        if upstream.status_code >= 400:
            raise RequestFailed(upstream_error(upstream.status_code, upstream.content))
        answer = json_or_none(upstream.content)
        tokens = completion_tokens(answer.get("usage") if isinstance(answer, dict) else None)
        self.record(serving.record, seconds, tokens, seconds, "ok")
        return Response(content=upstream.content, status_code=upstream.status_code,
                        media_type=upstream.headers.get("content-type", "application/json"))


class RelayResponse(Response):
    """Relays an :class:`UpstreamStream` as SSE: one ``send`` per batch of bytes that
    arrived together; a task waits for the client to leave (then the upstream connection
    is aborted); ``on_close(client_gone)`` runs exactly once, whatever happens."""

    def __init__(self, upstream: UpstreamStream, tap: StreamTap, on_close: Callable[[bool], None],
                 model: str) -> None:
        self.status_code = 200
        self.media_type = "text/event-stream"
        self.background = None
        self.init_headers(SSE_HEADERS)
        self._upstream, self._tap, self._on_close, self._model = upstream, tap, on_close, model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upstream, tap = self._upstream, self._tap
        client_gone = False

        async def watch() -> None:
            nonlocal client_gone
            while (await receive())["type"] != "http.disconnect":
                pass
            client_gone = True
            upstream.abort()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            tail = b""
            while True:
                try:
                    chunk = await upstream.next_chunk()
                except ClientLeft:
                    break
                except httpx.HTTPError as exc:  # the server died mid-stream: say so in-stream
                    tail = self._broken(exc)
                    break
                if not chunk:
                    tail = tap.pending
                    break
                out = tap.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            if not client_gone:
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        except OSError:  # ASGI 2.4 servers: sending to a closed connection
            client_gone = True
        finally:
            watcher.cancel()
            upstream.close()
            self._on_close(client_gone)

    def _broken(self, exc: Exception) -> bytes:
        self._tap.failed = True
        log.warning("stream of %s broke: %s", self._model, exc)
        message = f"the model server stopped mid-stream: {type(exc).__name__}: {exc}"
        event = json.dumps({"error": {"type": "runtime_unavailable", "message": message, "code": 503}})
        held = self._tap.pending
        return (held + b"\n\n" if held.strip() else b"") + b"data: " + event.encode() + b"\n\ndata: [DONE]\n\n"


def json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def completion_tokens(usage: Any) -> int | None:
    if isinstance(usage, dict):
        tokens = usage.get("completion_tokens")
        if isinstance(tokens, int) and not isinstance(tokens, bool):
            return tokens
    return None


def upstream_error(status: int, content: bytes) -> JSONResponse:
    """vLLM's error (old ``{"object": "error", "message"...}`` or OpenAI's ``{"error": {...}}``)
    in the gateway's one error format, keeping its status, type and message."""
    data = json_or_none(content)
    inner = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), dict) else data
    if isinstance(inner, dict) and isinstance(inner.get("message"), str):
        error_type = inner.get("type") if isinstance(inner.get("type"), str) else "upstream_error"
        extra = {k: inner[k] for k in ("param", "code") if k in inner}
        return error_response(status, error_type, inner["message"], **extra)
    text = content.decode("utf-8", "replace").strip()[:2000] or f"HTTP {status}"
    return error_response(status, "upstream_error", text)
