"""One error shape for every route, and which exception becomes which status.

``{"error": {"type", "message", ...}}``. Client mistakes say exactly what is wrong (404 with
the known models, 422 naming the field, 409 with the model's failure reason, 413, 429 and
503 with a computed Retry-After, 504 after the request timeout). Server-side failures
(runtime errors, bugs) never echo exception internals to the client: the body carries the
request id, and the detail goes to the log under that id. Every error body carries the
request's id (``error.request_id``, the one of the ``X-Request-ID`` header: see
:mod:`.request_ids`).
"""

from __future__ import annotations

import math
from typing import Any

import httpx
from fastapi.responses import JSONResponse, Response

from modelium.gateway.request_ids import current_request_id, new_request_id
from modelium.gateway.limits import ClientGone
from modelium.orchestrator.jobs.failures import describe_failure
from modelium.runtimes.base import RuntimeUnavailableError

RETRY_AFTER_SECONDS = "30"
RETRY_AFTER_BUSY_SECONDS = "1"
BODY_HINT = 'expected a JSON body like {"inputs": "text" or ["text", ...], "parameters": {...}}'
CLIENT_GONE_STATUS = 499  # nginx's "client closed request": nobody reads it


def error_response(
    status: int, error_type: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    headers = dict(headers or {})
    if status == 503:
        headers.setdefault("Retry-After", RETRY_AFTER_SECONDS)
    request_id = current_request_id()
    if request_id is not None:
        extra.setdefault("request_id", request_id)
    return JSONResponse(
        status_code=status,
        content={"error": {"type": error_type, "message": message, **extra}},
        headers=headers,
    )


def describe_problem(error: dict[str, Any]) -> str:
    """One line per validation problem, naming the field (``parameters``, ``inputs``...)."""
    where = ".".join(str(part) for part in error["loc"] if part != "body")
    if not where:
        return f"request body: {error['msg']}; {BODY_HINT}"
    return f"{where}: {error['msg']}"


def map_error(exc: Exception, request_id: str | None = None) -> JSONResponse:
    """The answer to a failed request (the table is :func:`describe_failure`); 5xx answers
    carry the request id, never exception internals."""
    request_id = request_id or current_request_id() or new_request_id()
    failure = describe_failure(exc, request_id)
    error = dict(failure.error)
    headers = {}
    if failure.status == 429:
        headers["Retry-After"] = _retry_after(failure.retry_after, RETRY_AFTER_BUSY_SECONDS)
    elif failure.status == 503:
        headers["Retry-After"] = _retry_after(failure.retry_after, RETRY_AFTER_SECONDS)
    if failure.status >= 500:
        error["request_id"] = request_id
    return error_response(failure.status, error.pop("type"), error.pop("message"), headers=headers, **error)


def map_relay_error(exc: Exception, model: str) -> Response:
    """The answer when a request relayed to a runtime's own HTTP server (vLLM) failed: the
    client left (499), the server was too slow (504), the connection broke (503), or
    anything :func:`map_error` knows."""
    if isinstance(exc, ClientGone):
        return Response(status_code=CLIENT_GONE_STATUS)
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return error_response(504, "timeout", f"model {model!r} did not answer in time")
    if isinstance(exc, httpx.HTTPError):
        return map_error(RuntimeUnavailableError(f"model {model!r}: {type(exc).__name__}: {exc}"))
    return map_error(exc)


def _retry_after(seconds: float | None, default: str) -> str:
    return str(max(1, math.ceil(seconds))) if seconds is not None else default


def status_label(status_code: int) -> str:
    return {400: "bad_request", 404: "not_found", 409: "failed", 413: "too_large", 422: "bad_request",
            429: "rejected", 499: "cancelled", 503: "unavailable", 504: "timeout"}.get(status_code, "error")
