"""What a failed try of a job becomes: the status and error the synchronous route would
have answered (the same table as :func:`modelium.gateway.errors.map_error`, kept here so
the orchestrator needs nothing from the gateway), and whether it is worth another try."""

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
        return JobFailure(404, {"type": "model_not_found", "message": exc.message})
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
        log.warning("job try: runtime unavailable: %s", exc)
        return JobFailure(503, {"type": "runtime_unavailable",
                                "message": f"the model's runtime could not serve the request (request id "
                                           f"{request_id}; the detail is in the daemon's log)"}, retryable=True)
    log.error("job try failed", exc_info=exc)
    return JobFailure(500, {"type": "internal_error",
                            "message": f"internal error (request id {request_id}; the detail is in the daemon's log)"})
