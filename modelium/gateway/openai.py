"""OpenAI-compatible routes: ``POST /v1/completions``, ``POST /v1/chat/completions``
(``GET /v1/models`` is in :mod:`.embeddings`), plus ``GET /runtimes/vllm/NAME/metrics`` for debugging.

Requests are routed by the body's ``model`` field; the orchestrator admits the request
(queueing it while the model loads or a swap makes room) and says how it is served
(:meth:`Orchestrator.acquire` returns a ``Serving`` with the runtime's own OpenAI server,
if it has one):

* **vLLM** (its manager has an OpenAI server for it): relayed by
  :mod:`.openai_relay` (plain answers byte for byte; streams as raw bytes, chunk by chunk,
  cancelled upstream when the client leaves). A refused connection is reported to the
  orchestrator, which asks the runtime; when the server really is gone the model is
  reloaded and the request is tried once more.
* **Ray Serve** (transformers, no OpenAI server): adapted onto ``orchestrator.infer`` by
  :mod:`.openai_adapter`.

Metrics (next to ``modelium_requests_total``): ``modelium_time_to_first_token_seconds``
is measured from the request's arrival to the first upstream SSE event carrying text (the
whole latency for non-streamed answers); ``modelium_generated_tokens_total`` comes from
``usage.completion_tokens`` (of the answer, or of the stream's usage chunk, which the
relay asks vLLM for when the client did not and strips again: see :mod:`.sse_tap`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from modelium.gateway.errors import (
    error_response,
    map_error,
    map_relay_error,
    status_label,
)
from modelium.gateway.limits import check_batch, unless_client_leaves
from modelium.gateway.openai_adapter import (
    CHAT,
    COMPLETIONS,
    adapt,
    generated_token_count,
)
from modelium.gateway.openai_relay import RequestFailed, UpstreamClient, VllmRelay
from modelium.gateway.request_options import request_options
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import Orchestrator, UnknownModelError
from modelium.orchestrator.records import ModelRecord, ModelState
from modelium.runtimes.base import RuntimeUnavailableError
from modelium.runtimes.errors import BadRequestError

__all__ = ["UpstreamClient", "add_openai_routes", "generated_token_count"]

log = logging.getLogger(__name__)

LLM_TASKS = frozenset({"text-generation", "text2text-generation"})
VLLM_METRICS_TIMEOUT = 10.0


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


class _OpenAIHandler:
    """Validation, admission and retry around the relay and the adapter; metrics."""

    def __init__(self, orchestrator: Orchestrator, metrics: ModeliumMetrics, upstream: UpstreamClient) -> None:
        self.orchestrator = orchestrator
        self.metrics = metrics
        self.upstream = upstream
        self.relay = VllmRelay(orchestrator, upstream, self._record_success)

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
                        return await adapt(self.orchestrator, self._record_success, request, kind, body,
                                           serving, _task(serving.record), started, bool(stream))
                    finally:
                        self.orchestrator.release(serving)
                try:
                    return await self.relay.proxy(request, kind, raw, body, serving, base_url, started,
                                                  bool(stream))
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
        except RequestFailed as failed:
            response = failed.response
        except Exception as exc:  # noqa: BLE001 - mapped like every relayed request
            response = map_relay_error(exc, model)
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

