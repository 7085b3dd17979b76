"""The HTTP gateway: one FastAPI app in front of every runtime.

Transport only: it validates requests, checks API keys, asks the orchestrator, and maps
errors to status codes. Errors always have the shape
``{"error": {"type": ..., "message": ..., ...}}`` so clients can rely on one format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelium import __version__
from modelium.config.settings import is_loopback_host
from modelium.gateway.auth import api_key_checker, key_is_valid
from modelium.gateway.dashboard import add_dashboard_routes
from modelium.gateway.errors import (
    CLIENT_GONE_STATUS,
    describe_problem,
    error_response,
    map_error,
    status_label,
)
from modelium.gateway.embeddings import add_embeddings_routes
from modelium.gateway.jobs import add_job_routes
from modelium.gateway.kserve import add_kserve_routes
from modelium.gateway.limits import BodyLimit, ClientGone, check_batch, unless_client_leaves
from modelium.gateway.request_ids import RequestIds, current_request_id, new_request_id
from modelium.gateway.request_options import request_options
from modelium.gateway.schemas import PredictRequest
from modelium.log_tail import TAIL, ModelLogTail
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import Orchestrator, UnknownModelError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

RUNTIME_METRICS_TIMEOUT = 5.0  # seconds a runtime's own /metrics may take per scrape


def create_app(
    orchestrator: Orchestrator,
    metrics: ModeliumMetrics,
    *,
    http_client_factory: Callable[[], httpx.AsyncClient] | None = None,
    log_tail: ModelLogTail | None = None,
) -> FastAPI:
    """Build the gateway for one orchestrator (tests build it around fakes).

    ``http_client_factory`` makes the one shared client used to reach runtimes' own HTTP
    servers (vLLM); it is created on first use and closed when the app shuts down.
    ``log_tail`` holds the per-model lines of `GET /models/NAME/logs` (default: the
    process's own, which `configure_logging` puts on the root logger).
    """
    # Imported here: openai.py uses this module's error helpers.
    from modelium.gateway.openai import UpstreamClient, add_openai_routes, generated_token_count

    settings = orchestrator.settings
    upstream = UpstreamClient(http_client_factory)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await upstream.aclose()

    app = FastAPI(title="Modelium", version=__version__, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.gateway.max_body_bytes)
    app.add_middleware(RequestIds)  # added last: outermost, so even a 413 carries the id
    authorized = Depends(api_key_checker(settings.gateway.api_keys))
    gateway = settings.gateway

    def may_see_detail(request: Request) -> bool:
        """Runtime details (paths, versions) only for an authorized caller: one with a key
        when keys are set, anyone on a loopback-only gateway otherwise."""
        if gateway.api_keys:
            return key_is_valid(request, gateway.api_keys)
        return is_loopback_host(gateway.host)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, error_type, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [describe_problem(err) for err in exc.errors()]
        return error_response(422, "invalid_request", "; ".join(problems), details=problems)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        runtimes = {}
        for name, manager in orchestrator.managers.items():
            try:
                status = await manager.health()
                runtimes[name] = {"ok": status.ok, "detail": status.detail}
            except Exception as exc:  # noqa: BLE001 - health must always answer
                runtimes[name] = {"ok": False, "detail": str(exc)}
        ok = orchestrator.ready and all(r["ok"] for r in runtimes.values())
        status = "ok" if ok else ("starting" if not orchestrator.ready else "degraded")
        if orchestrator.startup_error:
            status = "error"
        if not may_see_detail(request):  # up / down, and which runtime, but no paths
            return JSONResponse(status_code=200 if ok else 503, content={
                "status": status, "runtimes": {n: {"ok": r["ok"]} for n, r in runtimes.items()}})
        return JSONResponse(
            status_code=200 if ok else 503,
            content={"status": status, "runtimes": runtimes, "error": orchestrator.startup_error},
        )

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        for manager in orchestrator.managers.values():
            try:
                extra = await asyncio.wait_for(manager.metrics_text(), RUNTIME_METRICS_TIMEOUT)
            except Exception:  # noqa: BLE001 - a down runtime must not break the scrape
                extra = None
            if extra:
                body += extra.encode() if extra.endswith("\n") else (extra + "\n").encode()
        return Response(content=body, media_type=content_type)

    @app.get("/models", dependencies=[authorized])
    async def list_models() -> dict[str, Any]:
        return {"models": [record.to_dict() for record in orchestrator.models()]}

    @app.get("/models/{name}", dependencies=[authorized])
    async def get_model(name: str) -> Any:
        try:
            return orchestrator.get(name).to_dict()
        except UnknownModelError as exc:
            return map_error(exc)

    @app.post("/models/{name}/load", dependencies=[authorized])
    async def load_model(name: str) -> Any:
        try:
            return (await orchestrator.load(name)).to_dict()
        except Exception as exc:  # noqa: BLE001 - mapped below
            return map_error(exc)

    @app.post("/models/{name}/unload", dependencies=[authorized])
    async def unload_model(name: str) -> Any:
        try:
            return (await orchestrator.unload(name)).to_dict()
        except Exception as exc:  # noqa: BLE001 - mapped below
            return map_error(exc)

    @app.post("/models/{name}/pin", dependencies=[authorized])
    async def pin_model(name: str) -> Any:
        try:
            return orchestrator.set_pinned(name, True).to_dict()
        except Exception as exc:  # noqa: BLE001 - mapped below
            return map_error(exc)

    @app.post("/models/{name}/unpin", dependencies=[authorized])
    async def unpin_model(name: str) -> Any:
        try:
            return orchestrator.set_pinned(name, False).to_dict()
        except Exception as exc:  # noqa: BLE001 - mapped below
            return map_error(exc)

    @app.get("/decisions", dependencies=[authorized])
    async def decisions(limit: int = 100, model: str | None = None) -> dict[str, Any]:
        """Newest first; ``model`` keeps one model's decisions only."""
        return {"decisions": orchestrator.decisions.newest(max(1, min(limit, 500)), model)}

    @app.get("/status", dependencies=[authorized])
    async def status() -> dict[str, Any]:
        return {
            "version": __version__,
            "ready": orchestrator.ready,
            "startup_error": orchestrator.startup_error,
            "devices": [d.to_dict() for d in orchestrator.inventory.devices],
            "inventory_source": orchestrator.inventory.source,
            "reserved_bytes": orchestrator.ledger.by_device(),
            "models": {r.name: r.state.value for r in orchestrator.models()},
            "quarantined": list(orchestrator.quarantined),
            "recent_decisions": orchestrator.decisions.newest(20),
            **orchestrator.status(),
            "config": settings.to_public_dict(),
        }

    @app.post("/predict/{name}", dependencies=[authorized])
    async def predict(name: str, body: PredictRequest, request: Request) -> Any:
        request_id = current_request_id() or new_request_id()  # the X-Request-ID answered
        started = time.perf_counter()
        runtime = "none"
        try:
            options = request_options(request)
            check_batch("inputs", body.inputs, gateway.max_batch_items)
            record, outputs = await unless_client_leaves(request, orchestrator.predict(
                name, body.inputs, body.parameters, wait_seconds=options.wait_seconds,
                priority=options.priority))
            runtime = record.runtime or "none"
        except Exception as exc:  # noqa: BLE001 - mapped to a status below
            response = (Response(status_code=CLIENT_GONE_STATUS) if isinstance(exc, ClientGone)
                        else map_error(exc, request_id))
            if not isinstance(exc, UnknownModelError):  # unknown names would explode label sets
                runtime = _runtime_of(orchestrator, name)
                metrics.observe_request(name, runtime, status_label(response.status_code),
                                        time.perf_counter() - started)
            return response
        seconds = time.perf_counter() - started
        metrics.observe_request(name, runtime, "ok", seconds)
        tokens = generated_token_count(outputs)
        if tokens is not None:  # a generation: the whole answer is its first token
            metrics.observe_time_to_first_token(name, runtime, seconds)
            metrics.count_generated_tokens(name, runtime, tokens)
        return {
            "model": name,
            "runtime": runtime,
            "device": record.device,
            "outputs": outputs,
            "latency_ms": round(seconds * 1000, 2),
            "request_id": request_id,
        }

    add_dashboard_routes(app, orchestrator, metrics, log_tail if log_tail is not None else TAIL,
                         dependencies=[authorized])
    add_kserve_routes(app, orchestrator, metrics, dependencies=[authorized])
    add_job_routes(app, orchestrator, dependencies=[authorized])
    add_embeddings_routes(app, orchestrator, metrics, upstream, dependencies=[authorized])  # /v1/models: before openai's
    add_openai_routes(app, orchestrator, metrics, upstream, dependencies=[authorized])
    return app


def _runtime_of(orchestrator: Orchestrator, name: str) -> str:
    try:
        return orchestrator.get(name).runtime or "none"
    except UnknownModelError:
        return "none"
