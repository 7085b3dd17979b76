"""Why the orchestrator could not serve a request; the gateway maps each to an HTTP status."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base class; ``message`` is shown to the client as is. ``retry_after`` (seconds),
    when known, becomes the answer's Retry-After header."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class UnknownModelError(OrchestratorError):
    """No model of that name (HTTP 404); carries the names that do exist."""

    def __init__(self, name: str, known: list[str]) -> None:
        listing = ", ".join(known) if known else "none yet"
        super().__init__(f"model {name!r} not found; known models: {listing}")
        self.name = name
        self.known = known


class ModelFailedError(OrchestratorError):
    """The model is in state failed (HTTP 409); the message carries its reason."""


class NoCapacityError(OrchestratorError):
    """Nothing fits right now, even after evicting what may be evicted (HTTP 503)."""


class NotReadyError(OrchestratorError):
    """The daemon is still starting (HTTP 503)."""


class TooManyRequestsError(OrchestratorError):
    """The model's concurrency limit and queue are full (HTTP 429)."""


class LoadTimeoutError(OrchestratorError):
    """The request's wait budget ran out before the model could serve it (HTTP 503)."""


class RequestTimeoutError(OrchestratorError):
    """The runtime did not answer an admitted request within gateway.request_timeout_seconds
    (HTTP 504); its slot is freed."""
