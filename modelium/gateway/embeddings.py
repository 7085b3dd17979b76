"""``POST /v1/embeddings`` (OpenAI's shape) for every runtime, and ``GET /v1/models``
listing every model.

Embeddings, by how the model is served (decided after admission, like the OpenAI routes):

* a runtime with its own OpenAI server (vLLM serving an embedding model as such): the
  body goes to its ``/v1/embeddings`` byte for byte, with the server's key
  (``upstream_headers``); vLLM's answer (or its error, in the gateway's error shape)
  comes back. Token-array inputs and ``dimensions`` are vLLM's to accept or refuse.
* otherwise (Triton's python backend, Ray Serve: a ``feature-extraction`` model run by
  ``TransformersPredictor``): adapted onto ``orchestrator.infer`` with mean pooling and
  ``count_prompt_tokens`` (usage = the tokens the model saw, special tokens included).
  ``input`` must be a string or a list of strings (token arrays: 422), ``dimensions``
  is a 422 (no truncation or projection is done), ``encoding_format`` is ``float`` or
  ``base64`` (little-endian float32 bytes, as OpenAI sends them).

A model that is neither a feature-extraction model nor a text-generation model (which
vLLM may serve as an embedding model) is a 422 before anything loads. The model loads on
demand; ``X-Max-Wait-Seconds``, ``X-Priority``, the body and batch limits apply as on
``/predict``.

``GET /v1/models`` lists every model (not only LLMs): OpenAI's fields plus ``state``,
``task``, ``runtime`` and, for failed models, ``reason``. It is registered before the
OpenAI routes, so this one answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from modelium.gateway.errors import (
    error_response,
    map_error,
    map_relay_error,
    status_label,
)
from modelium.gateway.limits import check_batch, unless_client_leaves
from modelium.gateway.request_ids import current_request_id
from modelium.gateway.request_options import request_options
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import Orchestrator, Serving
from modelium.orchestrator.records import ModelRecord
from modelium.runtimes.base import RuntimeUnavailableError
from modelium.runtimes.errors import BadRequestError

EMBEDDING_TASK = "feature-extraction"
#: Tasks vLLM may serve as embedding models (it answers the error when it does not).
RELAYABLE_TASKS = frozenset({"text-generation"})
ENCODINGS = ("float", "base64")
#: Fields the adapter accepts: ``user`` is ignored, as OpenAI does for embeddings.
ADAPTED_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


class _Upstream(Protocol):
    def get(self) -> httpx.AsyncClient: ...


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: list[str] | None  # None: token arrays (only an OpenAI server takes them)
    encoding: str
    dimensions: int | None


def add_embeddings_routes(app: FastAPI, orchestrator: Orchestrator, metrics: ModeliumMetrics,
                          upstream: _Upstream, *, dependencies: Sequence[Any] = ()) -> None:
    """Register ``GET /v1/models`` and ``POST /v1/embeddings`` (before the OpenAI routes)."""
    deps = list(dependencies)
    handler = _Embeddings(orchestrator, metrics, upstream)

    @app.get("/v1/models", dependencies=deps)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_entry(r) for r in orchestrator.models()]}

    @app.post("/v1/embeddings", dependencies=deps)
    async def embeddings(request: Request) -> Response:
        return await handler.handle(request)


def model_entry(record: ModelRecord) -> dict[str, Any]:
    entry = {
        "id": record.name,
        "object": "model",
        "created": _created(record),
        "owned_by": "modelium",
        "state": record.state.value,
        "task": record.profile.task if record.profile is not None else None,
        "runtime": record.runtime,
    }
    if record.state.value == "failed":
        entry["reason"] = record.reason
    return entry


def _created(record: ModelRecord) -> int:
    """When the model's folder was filed (stable across reloads, unlike loaded_at)."""
    try:
        return int(record.path.stat().st_mtime)
    except OSError:
        return int(record.updated_at)


def parse_request(body: Any) -> EmbeddingRequest:
    """The runtime-independent checks (422 naming the field)."""
    if not isinstance(body, dict):
        raise BadRequestError('request body must be a JSON object like {"model": "NAME", "input": "text"}')
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("model: field required (a model name; GET /v1/models lists them)")
    raw = body.get("input")
    texts: list[str] | None
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        texts = list(raw)
    elif _token_arrays(raw):
        texts = None
    else:
        raise BadRequestError("input: a string or a non-empty list of strings (or token arrays, for models "
                              "served by vLLM)")
    if texts is not None and any(t == "" for t in texts):
        raise BadRequestError("input: strings must not be empty")
    encoding = body.get("encoding_format")
    encoding = "float" if encoding is None else encoding
    if encoding not in ENCODINGS:
        raise BadRequestError(f"encoding_format must be 'float' or 'base64', got {encoding!r}")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise BadRequestError(f"dimensions must be a positive integer, got {dimensions!r}")
    return EmbeddingRequest(model, texts, encoding, dimensions)


def _token_arrays(raw: Any) -> bool:
    def ints(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)

    return ints(raw) or (isinstance(raw, list) and bool(raw) and all(ints(x) for x in raw))


def adapter_check(request: EmbeddingRequest, body: dict[str, Any]) -> list[str]:
    """What only an OpenAI server could honour is a 422 for the adapter; the texts."""
    if request.texts is None:
        raise BadRequestError(f"input: token arrays are not supported for model {request.model!r} "
                              "(served by transformers); send strings")
    if request.dimensions is not None:
        raise BadRequestError(f"dimensions is not supported for model {request.model!r}: its vectors have "
                              "the model's hidden size (omit dimensions)")
    unknown = sorted(set(body) - ADAPTED_FIELDS)
    if unknown:
        raise BadRequestError(f"not supported for model {request.model!r}: {', '.join(unknown)}")
    return request.texts


def encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    """``float``: the list; ``base64``: little-endian float32 bytes, base64 (OpenAI's)."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


def adapted_answer(model: str, request: EmbeddingRequest, results: Any) -> dict[str, Any]:
    """OpenAI's response from the predictor's ``{"embedding", "num_prompt_tokens"}`` rows."""
    texts = request.texts or []
    if not isinstance(results, list) or len(results) != len(texts):
        raise RuntimeError(f"model {model!r} answered {type(results).__name__} for {len(texts)} inputs")
    data, tokens = [], 0
    for index, row in enumerate(results):
        vector = row.get("embedding") if isinstance(row, dict) else None
        count = row.get("num_prompt_tokens") if isinstance(row, dict) else None
        if (not isinstance(vector, list) or not vector
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in vector)):
            raise RuntimeError(f"model {model!r} did not answer a flat vector of numbers for input {index}")
        if isinstance(count, int) and not isinstance(count, bool):
            tokens += count
        data.append({"object": "embedding", "index": index, "embedding": encode_vector(vector, request.encoding)})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class _Embeddings:
    def __init__(self, orchestrator: Orchestrator, metrics: ModeliumMetrics, upstream: _Upstream) -> None:
        self.orchestrator = orchestrator
        self.metrics = metrics
        self.upstream = upstream

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            return error_response(422, "invalid_request", f"request body is not valid JSON: {exc}")
        try:
            parsed = parse_request(body)
            record = self.orchestrator.get(parsed.model)
        except Exception as exc:  # noqa: BLE001 - 422 / 404, not counted (unknown names)
            return map_error(exc)
        name, runtime = parsed.model, record.runtime or "none"
        try:
            task = record.profile.task if record.profile is not None else None
            if task is not None and task != EMBEDDING_TASK and task not in RELAYABLE_TASKS:
                raise BadRequestError(f"model {name!r} is a {task} model, not an embedding model "
                                      f"(use POST /predict/{name})")
            check_batch("input", body.get("input"), self.orchestrator.settings.gateway.max_batch_items)
            options = request_options(request)
            for attempt in (1, 2):
                serving = await unless_client_leaves(request, self.orchestrator.acquire(
                    name, wait_seconds=options.wait_seconds, priority=options.priority))
                runtime = serving.record.runtime or "none"
                try:
                    if serving.base_url is None:
                        if task != EMBEDDING_TASK:
                            raise BadRequestError(f"model {name!r} is a {task} model served by {runtime}, "
                                                  "which has no embeddings for it")
                        texts = adapter_check(parsed, body)
                        results = await unless_client_leaves(request, self.orchestrator.infer(
                            serving, texts, {"count_prompt_tokens": True}))
                        response: Response = JSONResponse(adapted_answer(name, parsed, results))
                    else:
                        response = await self._relay(request, raw, serving, serving.base_url)
                except httpx.ConnectError as exc:
                    lost = await self.orchestrator.report_lost(
                        serving, f"its server at {serving.base_url} refused the connection ({exc})")
                    if attempt == 2 or not lost:
                        raise RuntimeUnavailableError(f"the OpenAI server of model {name!r} refused the "
                                                      f"connection: {exc}") from exc
                    continue
                finally:
                    self.orchestrator.release(serving)
                break
        except Exception as exc:  # noqa: BLE001 - mapped like every relayed request
            response = map_relay_error(exc, name)
        status = "ok" if response.status_code < 400 else status_label(response.status_code)
        self.metrics.observe_request(name, runtime, status, time.perf_counter() - started)
        return response

    async def _relay(self, request: Request, raw: bytes, serving: Serving, base_url: str) -> Response:
        """vLLM's own /v1/embeddings, bounded by ``gateway.request_timeout_seconds``."""
        manager = self.orchestrator.managers[serving.record.runtime or ""]
        request_id = current_request_id()  # vLLM's log lines can be matched to the gateway's
        headers = {"content-type": "application/json", **({"X-Request-ID": request_id} if request_id else {}),
                   **manager.upstream_headers(serving.instance)}
        timeout = self.orchestrator.settings.gateway.request_timeout_seconds
        answer = await unless_client_leaves(request, asyncio.wait_for(self.upstream.get().post(
            f"{base_url.rstrip('/')}/v1/embeddings", content=raw, headers=headers), timeout))
        if answer.status_code >= 400:
            return upstream_error(answer.status_code, answer.content)
        return Response(content=answer.content, status_code=answer.status_code,
                        media_type=answer.headers.get("content-type", "application/json"))


def upstream_error(status: int, content: bytes) -> JSONResponse:
    """vLLM's error (``{"error": {...}}`` or the older ``{"object": "error", "message"}``)
    in the gateway's error shape, keeping its status and message."""
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    inner = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), dict) else data
    if isinstance(inner, dict) and isinstance(inner.get("message"), str):
        kind = inner.get("type") if isinstance(inner.get("type"), str) else "upstream_error"
        return error_response(status, kind, inner["message"])
    return error_response(status, "upstream_error", content.decode("utf-8", "replace").strip()[:2000]
                          or f"HTTP {status}")
