"""OpenAI-compatible routes: ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions``, plus ``GET /runtimes/vllm/NAME/metrics`` for debugging.

Requests are routed by the body's ``model`` field; the orchestrator admits the request
(queueing it while the model loads or a swap makes room) and says how it is served
(:meth:`Orchestrator.acquire` returns a ``Serving`` with the runtime's own OpenAI server,
if it has one):

* **vLLM** (its manager has an OpenAI server for it): the body is forwarded byte for byte
  to ``{base_url}/v1/...`` over one shared pooled ``httpx.AsyncClient``. Answers come back
  with vLLM's status and JSON; errors are normalised to ``{"error": {"type", "message",
  ...}}`` keeping vLLM's message (that is also OpenAI's error shape). With ``"stream":
  true`` the upstream bytes are relayed chunk by chunk as they arrive (nothing is
  buffered), and when the client goes away the upstream request is closed, which makes
  vLLM abort the generation. A refused connection is reported to the orchestrator, which
  asks the runtime; when the server really is gone the model is reloaded and the request
  is tried once more.
* **Ray Serve** (transformers, no OpenAI server): the request is adapted onto
  ``orchestrator.infer`` (chat via the predictor's ``chat`` mode and the model's chat
  template). ``"stream": true`` is answered as Server-Sent Events too, but only once the
  whole text exists: one content chunk, one finish chunk, ``data: [DONE]``. True token
  streaming is vLLM-only for now. Fields the adapter cannot honour (``n`` > 1,
  ``logprobs``, ``stop``, penalties, tools, vLLM extras...) are a 422 naming them;
  harmless ones (``n: 1``, ``stop: null``, ``user``...) are ignored.

Metrics (next to ``modelium_requests_total``): ``modelium_time_to_first_token_seconds``
is measured from the request's arrival to the first upstream SSE event carrying text (the
whole latency for non-streamed answers); ``modelium_generated_tokens_total`` comes from
``usage.completion_tokens`` (non-streamed, and streams whose client asked for
``stream_options.include_usage``), otherwise from the number of SSE events carrying text,
which is vLLM's token count in ordinary decoding (one event per step; an approximation
with speculative decoding). The proxy never rewrites the client's body or the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from modelium.gateway.errors import CLIENT_GONE_STATUS, error_response, map_error, status_label
from modelium.gateway.limits import ClientGone, check_batch, unless_client_leaves
from modelium.metrics import ModeliumMetrics
from modelium.gateway.request_options import request_options
from modelium.orchestrator import Orchestrator, Serving, UnknownModelError
from modelium.orchestrator.records import ModelRecord, ModelState
from modelium.runtimes.base import RuntimeUnavailableError
from modelium.runtimes.errors import BadRequestError

log = logging.getLogger(__name__)

LLM_TASKS = frozenset({"text-generation", "text2text-generation"})
COMPLETIONS = "completions"
CHAT = "chat/completions"

#: OpenAI's default for /v1/completions.
DEFAULT_MAX_TOKENS = 16
#: Chat default for Ray-served models (OpenAI and vLLM go to the end of the context,
#: which is far too slow for transformers on a CPU).
DEFAULT_CHAT_MAX_TOKENS = 256

UPSTREAM_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=60.0)
VLLM_METRICS_TIMEOUT = 10.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_SSE_EVENT_BYTES = 4 * 1024 * 1024  # the observer stops parsing (never relaying) beyond this

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
    """The one shared HTTP client: created on first use (on the serving loop), closed at
    shutdown by the app's lifespan."""

    def __init__(self, factory: HttpClientFactory | None = None) -> None:
        self._factory = factory or default_http_client
        self._client: httpx.AsyncClient | None = None

    def get(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._factory()
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def generated_token_count(outputs: Any) -> int | None:
    """Total ``num_generated_tokens`` of a predictor-shaped output (one result or a list),
    or None when the outputs are not generation results."""
    results = outputs if isinstance(outputs, list) else [outputs]
    counts = [r.get("num_generated_tokens") for r in results if isinstance(r, dict)]
    if not results or len(counts) != len(results):
        return None
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        return None
    return sum(counts)


def add_openai_routes(
    app: FastAPI,
    orchestrator: Orchestrator,
    metrics: ModeliumMetrics,
    upstream: UpstreamClient,
    *,
    dependencies: Sequence[Any] = (),
) -> None:
    """Register the OpenAI routes and the vLLM metrics proxy on ``app``."""
    deps = list(dependencies)
    handler = _OpenAIHandler(orchestrator, metrics, upstream)

    @app.get("/v1/models", dependencies=deps)
    async def list_llms() -> dict[str, Any]:
        data = [
            {
                "id": record.name,
                "object": "model",
                "created": _created(record),
                "owned_by": "modelium",
                "state": record.state.value,
                "runtime": record.runtime,
            }
            for record in orchestrator.models()
            if record.state != ModelState.FAILED and _task(record) in LLM_TASKS
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/completions", dependencies=deps)
    async def completions(request: Request) -> Response:
        return await handler.handle(request, COMPLETIONS)

    @app.post("/v1/chat/completions", dependencies=deps)
    async def chat_completions(request: Request) -> Response:
        return await handler.handle(request, CHAT)

    @app.get("/runtimes/vllm/{name}/metrics", dependencies=deps)
    async def vllm_metrics(name: str) -> Response:
        return await handler.vllm_metrics(name)


def _task(record: ModelRecord) -> str | None:
    return record.profile.task if record.profile is not None else None


def _created(record: ModelRecord) -> int:
    """When the model's folder was filed (stable across reloads, unlike loaded_at)."""
    try:
        return int(record.path.stat().st_mtime)
    except OSError:
        return int(record.updated_at)


class _RequestFailed(Exception):
    """A response to return as is, with the status label to count it under."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class _OpenAIHandler:
    def __init__(self, orchestrator: Orchestrator, metrics: ModeliumMetrics, upstream: UpstreamClient) -> None:
        self.orchestrator = orchestrator
        self.metrics = metrics
        self.upstream = upstream

    # ------------------------------------------------------------------ entry point

    async def handle(self, request: Request, kind: str) -> Response:
        started = time.perf_counter()
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            return error_response(422, "invalid_request", f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return error_response(422, "invalid_request",
                                  'request body must be a JSON object like {"model": "NAME", ...}')
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return error_response(422, "invalid_request",
                                  "model: field required (a model name; GET /v1/models lists them)")
        try:
            record = self.orchestrator.get(model)
        except UnknownModelError as exc:  # not counted: unknown names would explode label sets
            return map_error(exc)
        runtime = record.runtime or "none"
        try:
            task = _task(record)
            if task is not None and task not in LLM_TASKS:
                raise BadRequestError(
                    f"model {model!r} is a {task} model, not an LLM; the OpenAI routes serve "
                    f"text-generation models only (use POST /predict/{model})"
                )
            stream = body.get("stream")
            if stream is not None and not isinstance(stream, bool):
                raise BadRequestError(f"stream must be a boolean, got {type(stream).__name__}")
            limit = self.orchestrator.settings.gateway.max_batch_items
            check_batch("prompt", body.get("prompt"), limit)
            check_batch("messages", body.get("messages"), limit)
            options = request_options(request)
            for attempt in (1, 2):
                serving = await unless_client_leaves(request, self.orchestrator.acquire(
                    model, wait_seconds=options.wait_seconds, priority=options.priority))
                runtime = serving.record.runtime or "none"
                base_url = serving.base_url
                if base_url is None:
                    try:
                        return await self._adapt(request, kind, body, serving, started, bool(stream))
                    finally:
                        self.orchestrator.release(serving)
                try:
                    return await self._proxy(request, kind, raw, serving, base_url, started, bool(stream))
                except httpx.ConnectError as exc:
                    lost = await self.orchestrator.report_lost(
                        serving, f"its server at {base_url} refused the connection ({exc})")
                    if attempt == 2 or not lost:
                        raise RuntimeUnavailableError(
                            f"the OpenAI server of model {model!r} at {base_url} refused the "
                            f"connection: {exc}"
                        ) from exc
                    log.warning("server of %s at %s is gone; reloading", model, base_url)
            raise AssertionError("unreachable")
        except _RequestFailed as failed:
            response = failed.response
        except ClientGone:
            response = Response(status_code=CLIENT_GONE_STATUS)
        except (httpx.TimeoutException, TimeoutError):
            response = error_response(504, "timeout", f"model {model!r} did not answer in time")
        except httpx.HTTPError as exc:
            response = map_error(RuntimeUnavailableError(f"model {model!r}: {type(exc).__name__}: {exc}"))
        except Exception as exc:  # noqa: BLE001 - mapped like /predict
            response = map_error(exc)
        self.metrics.observe_request(model, runtime, status_label(response.status_code),
                                     time.perf_counter() - started)
        return response

    def _record_success(self, record: ModelRecord, ttft: float | None, tokens: int | None,
                        seconds: float, status: str = "ok") -> None:
        runtime = record.runtime or "none"
        self.metrics.observe_request(record.name, runtime, status, seconds)
        if ttft is not None:
            self.metrics.observe_time_to_first_token(record.name, runtime, ttft)
        if tokens is not None:
            self.metrics.count_generated_tokens(record.name, runtime, tokens)

    # ------------------------------------------------------------------ vLLM proxy

    async def _proxy(self, request: Request, kind: str, raw: bytes, serving: Serving, base_url: str,
                     started: float, stream: bool) -> Response:
        """Relay to the model's own server; ``serving`` is released when the answer (or
        the stream) ends, whatever happens. A non-streamed call is bounded by
        ``gateway.request_timeout_seconds`` and cancelled when the client leaves."""
        record = serving.record
        client = self.upstream.get()
        url = f"{base_url.rstrip('/')}/v1/{kind}"
        # identity: the bytes are relayed as they come, so they must not be compressed.
        headers = {"content-type": "application/json", "accept-encoding": "identity",
                   **self.orchestrator.managers[record.runtime or ""].upstream_headers(serving.instance)}
        if not stream:
            timeout = self.orchestrator.settings.gateway.request_timeout_seconds
            try:
                upstream = await unless_client_leaves(
                    request, asyncio.wait_for(client.post(url, content=raw, headers=headers), timeout))
            finally:
                self.orchestrator.release(serving)
            seconds = time.perf_counter() - started
            if upstream.status_code >= 400:
                raise _RequestFailed(_upstream_error(upstream.status_code, upstream.content))
            answer = _json_or_none(upstream.content)
            tokens = _completion_tokens(answer.get("usage") if isinstance(answer, dict) else None)
            self._record_success(record, seconds, tokens, seconds)
            return Response(content=upstream.content, status_code=upstream.status_code,
                            media_type=upstream.headers.get("content-type", "application/json"))
        try:
            request = client.build_request("POST", url, content=raw, headers=headers)
            upstream = await client.send(request, stream=True)
            if upstream.status_code >= 400:
                try:
                    content = await upstream.aread()
                finally:
                    await upstream.aclose()
                raise _RequestFailed(_upstream_error(upstream.status_code, content))
        except BaseException:
            self.orchestrator.release(serving)
            raise
        observer = _SSEObserver(started)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_bytes():
                    observer.feed(chunk)
                    yield chunk
            except httpx.HTTPError as exc:  # the server died mid-stream: say so in-stream
                observer.failed = True
                log.warning("stream of %s broke: %s", record.name, exc)
                message = f"the model server stopped mid-stream: {type(exc).__name__}: {exc}"
                payload = {"error": {"type": "runtime_unavailable", "message": message, "code": 503}}
                yield (b"\n\n" if observer.pending else b"") + _sse(payload) + b"data: [DONE]\n\n"

        async def on_close(client_gone: bool) -> None:
            try:
                await upstream.aclose()  # cancels the upstream request if it is still running
            finally:
                self.orchestrator.release(serving)
                status = "cancelled" if client_gone and not observer.done else (
                    "error" if observer.failed else "ok")
                self._record_success(record, observer.first_content_seconds, observer.tokens,
                                     time.perf_counter() - started, status)

        return _RelayResponse(chunks(), on_close, media_type="text/event-stream", headers=SSE_HEADERS)

    # ------------------------------------------------------------------ Ray Serve adapter

    async def _adapt(self, http_request: Request, kind: str, body: dict[str, Any], serving: Serving,
                     started: float, stream: bool) -> Response:
        record = serving.record
        request = _adapter_request(kind, body, _task(record) or "text-generation")
        outputs = await unless_client_leaves(
            http_request, self.orchestrator.infer(serving, request.inputs, request.parameters))
        results = outputs if isinstance(outputs, list) and kind == COMPLETIONS and request.batch else [outputs]
        if not all(isinstance(r, dict) and isinstance(r.get("generated_text"), str) for r in results):
            raise RuntimeError(f"the runtime answered with no generated text: {str(outputs)[:200]}")
        seconds = time.perf_counter() - started
        tokens = generated_token_count(results) or 0
        self._record_success(record, seconds, tokens, seconds)
        usage: dict[str, int] = {"completion_tokens": tokens}
        prompt_counts = [r.get("num_prompt_tokens") for r in results]
        if all(isinstance(c, int) for c in prompt_counts):
            usage["prompt_tokens"] = sum(prompt_counts)  # type: ignore[arg-type]
            usage["total_tokens"] = usage["prompt_tokens"] + tokens
        texts = [
            (prompt + r["generated_text"]) if request.echo else r["generated_text"]
            for prompt, r in zip(request.prompts, results, strict=False)
        ] if kind == COMPLETIONS else [results[0]["generated_text"]]
        finishes = [r.get("finish_reason") or "stop" for r in results]
        created = int(time.time())
        if kind == COMPLETIONS:
            ident, obj = f"cmpl-{uuid.uuid4().hex}", "text_completion"
        else:
            ident, obj = f"chatcmpl-{uuid.uuid4().hex}", "chat.completion"
        head = {"id": ident, "object": obj, "created": created, "model": record.name}
        if stream:
            events = _stream_events(kind, head, texts, finishes, usage if request.include_usage else None)
            return StreamingResponse(iter(events), media_type="text/event-stream", headers=SSE_HEADERS)
        if kind == COMPLETIONS:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f}
                       for i, (t, f) in enumerate(zip(texts, finishes, strict=True))]
        else:
            choices = [{"index": 0, "message": {"role": "assistant", "content": texts[0]},
                        "logprobs": None, "finish_reason": finishes[0]}]
        return JSONResponse({**head, "choices": choices, "usage": usage})

    # ------------------------------------------------------------------ vLLM's own /metrics

    async def vllm_metrics(self, name: str) -> Response:
        try:
            record = self.orchestrator.get(name)
        except UnknownModelError as exc:
            return map_error(exc)
        if record.state == ModelState.READY and record.runtime != "vllm":
            return error_response(404, "not_found",
                                  f"model {name!r} is served by {record.runtime}, not by vLLM")
        manager = self.orchestrator.managers.get("vllm")
        base_url = manager.openai_base_url(record.instance) if manager and record.state == ModelState.READY else None
        if base_url is None:
            return error_response(
                409, "model_not_loaded",
                f"model {name!r} is {record.state.value}: no vLLM server runs for it now "
                f"(POST /models/{name}/load starts one)",
            )
        try:
            upstream = await self.upstream.get().get(f"{base_url.rstrip('/')}/metrics",
                                                     headers=manager.upstream_headers(record.instance),
                                                     timeout=VLLM_METRICS_TIMEOUT)
        except httpx.HTTPError as exc:
            return error_response(503, "runtime_unavailable",
                                  f"vLLM server of {name!r} at {base_url}: {type(exc).__name__}: {exc}")
        return Response(content=upstream.content, status_code=upstream.status_code,
                        media_type=upstream.headers.get("content-type", "text/plain"))


# --------------------------------------------------------------------------- proxy helpers


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def _completion_tokens(usage: Any) -> int | None:
    if isinstance(usage, dict):
        tokens = usage.get("completion_tokens")
        if isinstance(tokens, int) and not isinstance(tokens, bool):
            return tokens
    return None


def _upstream_error(status: int, content: bytes) -> JSONResponse:
    """vLLM's error (old ``{"object": "error", "message"...}`` or OpenAI's ``{"error": {...}}``)
    in the gateway's one error format, keeping its status, type and message."""
    data = _json_or_none(content)
    inner = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), dict) else data
    if isinstance(inner, dict) and isinstance(inner.get("message"), str):
        error_type = inner.get("type") if isinstance(inner.get("type"), str) else "upstream_error"
        extra = {k: inner[k] for k in ("param", "code") if k in inner}
        return error_response(status, error_type, inner["message"], **extra)
    text = content.decode("utf-8", "replace").strip()[:2000] or f"HTTP {status}"
    return error_response(status, "upstream_error", text)


class _SSEObserver:
    """Watches relayed SSE bytes (never changes them) for the first text, token counts,
    usage and the final ``[DONE]``."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_content_seconds: float | None = None
        self.content_events = 0
        self.usage_tokens: int | None = None
        self.done = False
        self.failed = False
        self._buffer = b""
        self._parsing = True

    @property
    def pending(self) -> bool:
        """Part of an event was relayed without its end yet."""
        return bool(self._buffer.strip())

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.content_events

    def feed(self, chunk: bytes) -> None:
        if not self._parsing:
            return
        self._buffer = (self._buffer + chunk).replace(b"\r\n", b"\n")
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            self._event(event)
        if len(self._buffer) > MAX_SSE_EVENT_BYTES:
            self._parsing, self._buffer = False, b""

    def _event(self, event: bytes) -> None:
        data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
        if not data:
            return
        if data.strip() == b"[DONE]":
            self.done = True
            return
        payload = _json_or_none(data)
        if not isinstance(payload, dict):
            return
        if "error" in payload:
            self.failed = True
        tokens = _completion_tokens(payload.get("usage"))
        if tokens is not None:
            self.usage_tokens = tokens
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict) and _has_text(choice):
                self.content_events += 1
                if self.first_content_seconds is None:
                    self.first_content_seconds = time.perf_counter() - self.started


def _has_text(choice: dict[str, Any]) -> bool:
    if choice.get("text"):
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and bool(delta.get("content") or delta.get("reasoning_content"))


class _RelayResponse(StreamingResponse):
    """A StreamingResponse that always watches for the client going away (whatever the
    server's ASGI version) and always runs ``on_close(client_gone)`` exactly once, shielded
    from cancellation, so the upstream request is closed and the metrics recorded."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[bool], Awaitable[None]],
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client_gone = False
        try:
            async with anyio.create_task_group() as group:

                async def relay() -> None:
                    nonlocal client_gone
                    try:
                        await self.stream_response(send)
                    except OSError:  # ASGI 2.4 servers: sending to a closed connection
                        client_gone = True
                    except Exception:  # noqa: BLE001 - the response has started: log and stop
                        log.exception("relaying a stream failed")
                    group.cancel_scope.cancel()

                group.start_soon(relay)
                await self.listen_for_disconnect(receive)
                client_gone = True
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(RuntimeError):  # already closed or still running
                    await self.body_iterator.aclose()  # type: ignore[attr-defined]
                await self._on_close(client_gone)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


# --------------------------------------------------------------------------- Ray Serve adapter


class _AdapterRequest:
    def __init__(self, inputs: Any, parameters: dict[str, Any], *, prompts: list[str], batch: bool,
                 echo: bool, include_usage: bool) -> None:
        self.inputs, self.parameters = inputs, parameters
        self.prompts, self.batch, self.echo, self.include_usage = prompts, batch, echo, include_usage


def _any(_: Any) -> bool:
    return True


def _none_or(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: value is None or any(value == a and type(value) is type(a) for a in allowed)


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


# Fields the adapter accepts without honouring them, when their value changes nothing.
_HARMLESS: dict[str, Callable[[Any], bool]] = {
    "n": _none_or(1),
    "best_of": _none_or(1),
    "stop": _empty,
    "user": _any,
    "metadata": _any,
    "store": _any,
    "service_tier": _any,
    "parallel_tool_calls": _any,
    "logprobs": _none_or(False),
    "top_logprobs": _none_or(0),
    "presence_penalty": _none_or(0, 0.0),
    "frequency_penalty": _none_or(0, 0.0),
    "logit_bias": _empty,
    "seed": lambda v: v is None,
    "suffix": lambda v: v is None or v == "",
    "response_format": lambda v: v is None or v == {"type": "text"},
    "tools": _empty,
    "functions": _empty,
    "tool_choice": _none_or("none", "auto"),
    "function_call": _none_or("none", "auto"),
    "modalities": lambda v: v is None or v == ["text"],
}
_HONOURED = {
    COMPLETIONS: {"model", "prompt", "max_tokens", "temperature", "top_p", "stream", "stream_options", "echo"},
    CHAT: {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
           "stream", "stream_options"},
}


def _adapter_request(kind: str, body: dict[str, Any], task: str) -> _AdapterRequest:
    """OpenAI body -> predictor inputs and parameters; BadRequestError (422) names what is wrong."""
    rejected = sorted(
        key for key, value in body.items()
        if key not in _HONOURED[kind] and not (key in _HARMLESS and _HARMLESS[key](value))
    )
    if rejected:
        raise BadRequestError(
            f"not supported for model {body['model']!r} (served by transformers; only "
            f"vLLM-served models take them): {', '.join(rejected)}"
        )
    parameters: dict[str, Any] = {"count_prompt_tokens": True}
    default_max = DEFAULT_MAX_TOKENS
    if kind == CHAT:
        if task != "text-generation":
            raise BadRequestError(f"model {body['model']!r} is a {task} model; chat completions "
                                  "need a text-generation model with a chat template (use /v1/completions)")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequestError("messages: field required (a non-empty list of {\"role\", \"content\"} objects)")
        inputs: Any = messages
        prompts: list[str] = []
        batch = False
        parameters["chat"] = True
        default_max = DEFAULT_CHAT_MAX_TOKENS
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts, batch = [prompt], False
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts, batch = list(prompt), True
        elif prompt is None:
            raise BadRequestError("prompt: field required (a string or a list of strings)")
        else:
            raise BadRequestError("prompt must be a string or a non-empty list of strings "
                                  "(token-id prompts are only supported for vLLM-served models)")
        inputs = prompts if batch else prompts[0]
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequestError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    parameters["max_new_tokens"] = max_tokens

    temperature = body.get("temperature")
    temperature = 1.0 if temperature is None else temperature  # OpenAI's default: sampling at 1
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise BadRequestError(f"temperature must be a number between 0 and 2, got {temperature!r}")
    top_p = body.get("top_p")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise BadRequestError(f"top_p must be a number in (0, 1], got {top_p!r}")
    if temperature == 0:
        parameters["do_sample"] = False  # greedy; top_p means nothing then
    else:
        parameters["do_sample"] = True
        parameters["temperature"] = float(temperature)
        if top_p is not None:
            parameters["top_p"] = float(top_p)

    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise BadRequestError(f"echo must be a boolean, got {echo!r}")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequestError(f"stream_options must be an object, got {options!r}")
    include_usage = bool(options and options.get("include_usage"))
    return _AdapterRequest(inputs, parameters, prompts=prompts, batch=batch, echo=bool(echo),
                           include_usage=include_usage)


def _stream_events(kind: str, head: dict[str, Any], texts: list[str], finishes: list[str],
                   usage: dict[str, int] | None) -> list[bytes]:
    """The whole answer as SSE: a content chunk per choice, a finish chunk per choice,
    the usage chunk when asked for, ``[DONE]``."""
    if kind == CHAT:
        head = {**head, "object": "chat.completion.chunk"}
    extra = {"usage": None} if usage is not None else {}

    def choice(i: int, text: str | None, finish: str | None) -> dict[str, Any]:
        if kind == COMPLETIONS:
            return {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta = {"role": "assistant", "content": text} if text is not None else {}
        return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}

    events = [_sse({**head, "choices": [choice(i, t, None)], **extra}) for i, t in enumerate(texts)]
    events += [_sse({**head, "choices": [choice(i, None, f)], **extra}) for i, f in enumerate(finishes)]
    if usage is not None:
        events.append(_sse({**head, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events
