"""`GET /dashboard`: the live page, its static files, and the per-model log tail.

Why here and not a separate app: the page only reads the gateway's own JSON routes
(`/models`, `/status`, `/health`, `/decisions`, `/models/NAME/logs`, `/dashboard/live`), so
it needs no server of its own, no build step and no CDN: three files from package data
(``modelium/gateway/dashboard/``). The HTML, JS and CSS hold no data, so they need no key;
every data route keeps the gateway's API-key check, and the page asks for a key when one
answers 401.

``/dashboard/live`` adds what the other routes do not expose and the table shows: QPS and
idle seconds (the orchestrator's metric source, the one its policies read), queue depth
and requests in flight (admission), runtime health with the reason a runtime is missing,
and NVML's used/total memory per GPU (when the inventory came from NVML).
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.params import Depends
from fastapi.responses import HTMLResponse, Response

from modelium.gateway.errors import error_response, map_error
from modelium.log_tail import ModelLogTail
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import Orchestrator, UnknownModelError

LOG_LIMIT_DEFAULT = 200
LOG_LIMIT_MAX = 1000
HEALTH_TIMEOUT_SECONDS = 2.0  # a hung runtime must not stall the page's poll
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def _asset(name: str) -> str:
    return resources.files("modelium.gateway").joinpath("dashboard", name).read_text("utf-8")


def add_dashboard_routes(app: FastAPI, orchestrator: Orchestrator, metrics: ModeliumMetrics,
                         tail: ModelLogTail, *, dependencies: list[Depends]) -> None:
    """Register the page (no key), its assets (no key) and the data routes (``dependencies``:
    the API-key check)."""

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> HTMLResponse:
        # no-store: a daemon upgrade must never be shown with an old script from the cache.
        return HTMLResponse(_asset("index.html"), headers={"Cache-Control": "no-store"})

    @app.get("/dashboard/static/{name}", include_in_schema=False)
    async def dashboard_asset(name: str) -> Response:
        media_type = STATIC_FILES.get(name)
        if media_type is None:  # only the known files: never a path from the request
            return error_response(404, "not_found", f"no dashboard file {name!r}")
        return Response(_asset(name), media_type=media_type, headers={"Cache-Control": "no-store"})

    @app.get("/dashboard/live", dependencies=dependencies)
    async def dashboard_live() -> dict[str, Any]:
        return {"time": time.time(), "models": _live_models(orchestrator),
                "runtimes": await _runtimes(orchestrator),
                "gpu_memory": [{"device": d, "used_bytes": used, "total_bytes": total}
                               for d, used, total in metrics.gpu_memory()]}

    @app.get("/models/{name}/logs", dependencies=dependencies)
    async def model_logs(name: str, after: int = 0, limit: int = LOG_LIMIT_DEFAULT) -> Any:
        """The daemon's lines about ``name`` with ``seq > after``, oldest first; ``next`` is
        the ``after`` to send next time (a follower loops on it)."""
        try:
            orchestrator.get(name)
        except UnknownModelError as exc:
            return map_error(exc)
        if not 1 <= limit <= LOG_LIMIT_MAX:
            return error_response(422, "invalid_request",
                                  f"limit must be between 1 and {LOG_LIMIT_MAX} (got {limit})",
                                  max_limit=LOG_LIMIT_MAX)
        if after < 0:
            return error_response(422, "invalid_request", f"after must be 0 or more (got {after})")
        lines = tail.lines(name, after=after, limit=limit)
        return {"model": name, "lines": [line.to_dict() for line in lines],
                "next": lines[-1].seq if lines else after}


def _live_models(orchestrator: Orchestrator) -> dict[str, dict[str, Any]]:
    source = orchestrator.metric_source
    out: dict[str, dict[str, Any]] = {}
    for record in orchestrator.models():
        name = record.name
        out[name] = {"qps": _number(source.qps, name), "idle_seconds": _number(source.idle_seconds, name),
                     "queued": orchestrator.admission.queued(name),
                     "in_flight": orchestrator.admission.in_flight(name)}
    return out


def _number(read: Any, name: str) -> float | None:
    try:
        return float(read(name))
    except Exception:  # noqa: BLE001 - a Prometheus outage shows as "-", not a broken page
        return None


async def _runtimes(orchestrator: Orchestrator) -> dict[str, dict[str, Any]]:
    async def one(manager: Any) -> dict[str, Any]:
        try:
            health = await asyncio.wait_for(manager.health(), HEALTH_TIMEOUT_SECONDS)
            return {"enabled": True, "ok": bool(health.ok), "detail": health.detail}
        except Exception as exc:  # noqa: BLE001 - shown on the page
            return {"enabled": True, "ok": False, "detail": f"{type(exc).__name__}: {exc}"}

    names = list(orchestrator.managers)
    answers = await asyncio.gather(*(one(orchestrator.managers[n]) for n in names))
    runtimes = dict(zip(names, answers, strict=True))
    for name, why in orchestrator.ctx.planner.unavailable.items():  # enabled but not installed
        runtimes.setdefault(name, {"enabled": False, "ok": False, "detail": why})
    return runtimes
