"""What a failure becomes for a client: its status, ``{"type", "message"}`` and whether it is
worth another try. The one table: the gateway's :func:`modelium.gateway.errors.map_error`
answers synchronous requests from it, and the job runner records failed tries with it."""

from __future__ import annotations

import logging

from modelium.orchestrator.errors import (
    LoadTimeoutError,
    ModelFailedError,
    NoCapacityError,
    NotReadyError,
    RequestTimeoutError,
    TooManyRequestsError,
    UnknownModelError,
)
from modelium.orchestrator.jobs.records import JobFailure
from modelium.runtimes.base import ModelNotLoadedError, RuntimeUnavailableError
from modelium.runtimes.errors import BadRequestError

log = logging.getLogger(__name__)


def describe_failure(exc: Exception, request_id: str | None) -> JobFailure:
    """Client mistakes and capacity problems keep their message; internal errors are
    logged (under the request id) and described without their internals."""
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, UnknownModelError):
        return JobFailure(404, {"type": "model_not_found", "message": exc.message, "known_models": exc.known})
    if isinstance(exc, BadRequestError):
        return JobFailure(422, {"type": "invalid_request", "message": exc.message})
    if isinstance(exc, ModelFailedError):
        return JobFailure(409, {"type": "model_failed", "message": exc.message})
    if isinstance(exc, TooManyRequestsError):
        return JobFailure(429, {"type": "too_many_requests", "message": exc.message}, retryable=True,
                          retry_after=retry_after)
    if isinstance(exc, (NoCapacityError, NotReadyError, LoadTimeoutError)):
        return JobFailure(503, {"type": "unavailable", "message": exc.message}, retryable=True,
                          retry_after=retry_after)
    if isinstance(exc, RequestTimeoutError):
        return JobFailure(504, {"type": "timeout", "message": exc.message})
    if isinstance(exc, (RuntimeUnavailableError, ModelNotLoadedError)):
        log.warning("request %s: runtime unavailable: %s", request_id, exc, extra={"request_id": request_id})
        return JobFailure(503, {"type": "runtime_unavailable",
                                "message": f"the model's runtime could not serve the request (request id "
                                           f"{request_id}; the detail is in the daemon's log)"}, retryable=True)
    log.error("request %s failed", request_id, exc_info=exc, extra={"request_id": request_id})
    return JobFailure(500, {"type": "internal_error",
                            "message": f"internal error (request id {request_id}; the detail is in the daemon's log)"})
