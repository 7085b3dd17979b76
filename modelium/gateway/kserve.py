"""KServe v2 (the Open Inference Protocol, REST) for every model, whatever its runtime.

Routes (``add_kserve_routes``):

* ``GET /v2/health/live``: 200 while the gateway answers. ``GET /v2/health/ready``: 200
  once the orchestrator is started, 400 before (the spec's "4xx = false"). Both are open
  like ``/health`` (probes carry no key; they tell nothing but up/down).
* ``GET /v2``: server metadata (``extensions: ["binary_tensor_data"]``).
* ``GET /v2/models/NAME``: model metadata. Triton models: Triton's own (inputs, outputs,
  platform) while the model is loaded, else 400 (Triton describes loaded models only;
  asking for metadata never loads anything). Other runtimes: the adapted contract of
  :mod:`.kserve_tensors` (input ``text`` BYTES, output ``output`` BYTES of JSON), which
  needs no load.
* ``GET /v2/models/NAME/ready``: 200 ``{"name", "ready": true}`` only while the model is
  READY (serving); otherwise 400 with its state. Never triggers a load: readiness is
  KServe's "can serve now", so an unloaded model that an infer would load is *not* ready.
* ``.../versions/1/...`` is the same as without a version (Modelium serves one version of
  a model, the newest drop, named "1"); any other version is a 404.
* ``POST /v2/models/NAME/infer``: loads on demand like ``/predict`` (waits in the
  model's queue; ``X-Max-Wait-Seconds``, ``X-Priority``), bounded by
  ``gateway.max_body_bytes``, ``gateway.max_batch_items`` (rows of any input) and
  ``gateway.request_timeout_seconds``, cancelled when the client leaves. Triton models:
  the body (JSON or binary tensors) goes to Triton's own v2 infer byte for byte and its
  answer comes back as is (runtimes that declare ``Capability.KSERVE_V2``). Others:
  adapted, text rows in, one JSON document per row out (see :mod:`.kserve_tensors`).

All these routes but the health probes sit behind the gateway's API keys. Errors have
the KServe shape ``{"error": "message"}`` plus ``request_id`` (also in ``X-Request-ID``);
statuses are the gateway's (404 unknown model, 409 failed, 429 / 503 with Retry-After,
504, 500) except that a client mistake is **400**, as Triton and the spec answer, not
the 422 of the other routes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from modelium import __version__
from modelium.gateway.errors import CLIENT_GONE_STATUS, map_error, status_label
from modelium.gateway.kserve_tensors import (
    AdaptedRequest,
    adapted_metadata,
    adapted_request,
    encode_answer,
    split_body,
)
from modelium.gateway.limits import ClientGone, check_batch, unless_client_leaves
from modelium.gateway.request_ids import current_request_id
from modelium.gateway.request_options import request_options
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import (
    Orchestrator,
    RequestTimeoutError,
    Serving,
    UnknownModelError,
)
from modelium.orchestrator.records import ModelRecord, ModelState, ema
from modelium.runtimes.base import (
    Capability,
    ModelNotLoadedError,
    RuntimeManager,
    V2Answer,
)
from modelium.runtimes.errors import BadRequestError

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]
MODEL_VERSION = "1"


def v2_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    content: dict[str, Any] = {"error": message}
    request_id = current_request_id()
    if request_id is not None:
        content["request_id"] = request_id
    return JSONResponse(status_code=status, content=content, headers=headers)


def v2_mapped(exc: Exception) -> Response:
    """``map_error``'s status, message and Retry-After in the v2 shape (422 -> 400)."""
    if isinstance(exc, ClientGone):
        return Response(status_code=CLIENT_GONE_STATUS)
    mapped = map_error(exc)
    error = json.loads(bytes(mapped.body))["error"]
    headers = {k: v for k, v in mapped.headers.items() if k.lower() == "retry-after"}
    status = 400 if mapped.status_code == 422 else mapped.status_code
    return v2_error(status, error["message"], headers)


def add_kserve_routes(app: FastAPI, orchestrator: Orchestrator, metrics: ModeliumMetrics, *,
                      dependencies: Sequence[Any] = ()) -> None:
    """Register the KServe v2 routes on ``app`` (see the module doc)."""
    deps = list(dependencies)
    handler = _Infer(orchestrator, metrics)

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        if orchestrator.ready and not orchestrator.startup_error:
            return JSONResponse({"ready": True})
        return v2_error(400, orchestrator.startup_error or "modelium is still starting")

    @app.get("/v2", dependencies=deps)
    async def server_metadata() -> dict[str, Any]:
        return {"name": "modelium", "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/models/{name}", dependencies=deps)
    async def model_metadata(name: str) -> Response:
        try:
            record = orchestrator.get(name)
            manager = _manager(orchestrator, record)
            if manager is None or Capability.KSERVE_V2 not in manager.capabilities:
                return JSONResponse(adapted_metadata(name, f"modelium_{record.runtime or 'none'}"))
            if record.state != ModelState.READY:
                return v2_error(400, _not_serving(record, "its runtime describes a model once it is loaded"))
            try:
                metadata = await manager.v2_metadata(record.instance)
            except ModelNotLoadedError:  # unloaded while we asked
                return v2_error(400, _not_serving(orchestrator.get(name), "its runtime describes loaded models only"))
            return JSONResponse({**metadata, "name": name})
        except Exception as exc:  # noqa: BLE001 - mapped to the v2 error shape
            return v2_mapped(exc)

    @app.get("/v2/models/{name}/ready", dependencies=deps)
    async def model_ready(name: str) -> Response:
        try:
            record = orchestrator.get(name)
        except UnknownModelError as exc:
            return v2_mapped(exc)
        if orchestrator.ready and record.state == ModelState.READY:
            return JSONResponse({"name": name, "ready": True})
        return v2_error(400, _not_serving(record, "an infer request loads it"))

    @app.post("/v2/models/{name}/infer", dependencies=deps)
    async def infer(name: str, request: Request) -> Response:
        return await handler.handle(name, request)

    # Versioned paths: every model has one version, "1" (what Modelium serves now).
    @app.get("/v2/models/{name}/versions/{version}", dependencies=deps)
    async def versioned_metadata(name: str, version: str) -> Response:
        return _unknown_version(name, version) or await model_metadata(name)

    @app.get("/v2/models/{name}/versions/{version}/ready", dependencies=deps)
    async def versioned_ready(name: str, version: str) -> Response:
        return _unknown_version(name, version) or await model_ready(name)

    @app.post("/v2/models/{name}/versions/{version}/infer", dependencies=deps)
    async def versioned_infer(name: str, version: str, request: Request) -> Response:
        return _unknown_version(name, version) or await handler.handle(name, request)


def _unknown_version(name: str, version: str) -> Response | None:
    if version == MODEL_VERSION:
        return None
    return v2_error(404, f"model {name!r} has one version, {MODEL_VERSION!r} (the one served now); "
                         f"got version {version!r}")


def _manager(orchestrator: Orchestrator, record: ModelRecord) -> RuntimeManager | None:
    return orchestrator.managers.get(record.runtime or "")


def _passes_through(manager: RuntimeManager | None) -> bool:
    return manager is not None and Capability.KSERVE_V2 in manager.capabilities


def _not_serving(record: ModelRecord, hint: str) -> str:
    return f"model {record.name!r} is not ready (state {record.state.value}; {hint})"


class _Infer:
    def __init__(self, orchestrator: Orchestrator, metrics: ModeliumMetrics) -> None:
        self.orchestrator = orchestrator
        self.metrics = metrics

    async def handle(self, name: str, request: Request) -> Response:
        started = time.perf_counter()
        orchestrator = self.orchestrator
        try:
            record = orchestrator.get(name)
        except UnknownModelError as exc:  # not counted: unknown names would explode label sets
            return v2_mapped(exc)
        runtime = record.runtime or "none"
        try:
            options = request_options(request)
            header_length = _header_length(request)
            body = await request.body()
            limit = orchestrator.settings.gateway.max_batch_items
            # Checked before anything waits for a load: a bad request never loads a model.
            adapted = self._check(name, body, header_length, limit, _passes_through(_manager(orchestrator, record)))
            for attempt in (1, 2):
                serving = await unless_client_leaves(request, orchestrator.acquire(
                    name, wait_seconds=options.wait_seconds, priority=options.priority))
                try:
                    runtime = serving.record.runtime or "none"
                    manager = orchestrator.managers[serving.record.runtime or ""]
                    # Re-checked after the wait: a re-drop may have moved the model to another runtime.
                    if _passes_through(manager):
                        answer = await unless_client_leaves(request, self._timed(
                            serving, manager.v2_infer(serving.instance, body, header_length)))
                        response = _relayed(answer, name, serving.instance)
                    else:
                        if adapted is None:
                            adapted = self._check(name, body, header_length, limit, False)
                        assert adapted is not None
                        outputs = await unless_client_leaves(request, orchestrator.infer(
                            serving, adapted.texts, adapted.parameters))
                        response = _adapted_response(name, adapted, outputs)
                except ModelNotLoadedError as exc:
                    lost = await orchestrator.report_lost(serving, str(exc))
                    if attempt == 2 or not lost:
                        raise
                    continue
                finally:
                    orchestrator.release(serving)
                self.metrics.observe_request(name, runtime, "ok", time.perf_counter() - started)
                return response
            raise AssertionError("unreachable")
        except Exception as exc:  # noqa: BLE001 - mapped to the v2 error shape
            response = v2_mapped(exc)
            self.metrics.observe_request(name, runtime, status_label(response.status_code),
                                         time.perf_counter() - started)
            return response

    @staticmethod
    def _check(name: str, body: bytes, header_length: int | None, limit: int,
               passes_through: bool) -> AdaptedRequest | None:
        """Validate what the gateway can before a load: the adapted request parsed, or
        (pass-through) the header's JSON and its rows per input against the batch limit."""
        if not passes_through:
            adapted = adapted_request(body, header_length)
            check_batch("inputs.text", adapted.texts, limit)
            return adapted
        header, _ = split_body(body, header_length)
        inputs = header.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise BadRequestError(f"inputs: required, the tensors model {name!r} takes (GET /v2/models/{name})")
        for tensor in inputs:
            shape = tensor.get("shape") if isinstance(tensor, dict) else None
            rows = shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], int) else 0
            if rows > limit:
                raise BadRequestError(f"inputs.{tensor.get('name')}: at most {limit} rows per request "
                                      f"(gateway.max_batch_items), got {rows}")
        return None

    async def _timed(self, serving: Serving, call: Any) -> V2Answer:
        """A pass-through call bounded by ``gateway.request_timeout_seconds`` and timed
        into the model's service cost, as ``Orchestrator.infer`` does for adapted calls."""
        started = self.orchestrator.clock()
        timeout = self.orchestrator.settings.gateway.request_timeout_seconds
        try:
            answer = await asyncio.wait_for(call, timeout)
        except TimeoutError:
            raise RequestTimeoutError(f"model {serving.record.name!r} did not answer within {timeout:.0f}s "
                                      "(gateway.request_timeout_seconds)") from None
        costs = serving.record.costs
        costs.service_seconds = ema(costs.service_seconds, self.orchestrator.clock() - started)
        return answer


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequestError(f"header Inference-Header-Content-Length must be a byte count, got {raw!r}")
    return int(raw)


def _adapted_response(name: str, adapted: AdaptedRequest, outputs: Any) -> Response:
    """The runtime was given a list of texts, so it answers a list, one result per row."""
    if not isinstance(outputs, list) or len(outputs) != len(adapted.texts):
        raise RuntimeError(f"model {name!r} answered {type(outputs).__name__} for {len(adapted.texts)} rows")
    encoded = encode_answer(name, adapted, outputs)
    return _response(encoded.content, encoded.content_type, encoded.header_length)


def _relayed(answer: V2Answer, name: str, instance: str) -> Response:
    """Triton's answer as is; only its ``model_name`` is the public name when a re-dropped
    version (instance ``NAME.REVn``) answered."""
    content, header_length = answer.content, answer.header_length
    if instance != name:
        header, binary = split_body(content, header_length)
        header["model_name"] = name
        head = json.dumps(header).encode()
        content, header_length = head + binary, (len(head) if header_length is not None else None)
    return _response(content, answer.content_type, header_length)


def _response(content: bytes, content_type: str, header_length: int | None) -> Response:
    headers = {"Inference-Header-Content-Length": str(header_length)} if header_length is not None else None
    return Response(content=content, media_type=content_type, headers=headers)
