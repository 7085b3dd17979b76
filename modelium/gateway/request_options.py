"""Per-request scheduling options, read from headers on every inference route.

* ``X-Max-Wait-Seconds: N`` how long this request may wait in its model's queue (for a
  load, a swap or a free slot) before a 503 with Retry-After; default
  ``orchestration.load_wait_timeout_seconds``, at most
  ``orchestration.scheduler.max_request_wait_seconds``.
* ``X-Priority: high | normal | low`` its place in the model's queue (FIFO within one).

A malformed value is a 422 naming the header, never silently ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from starlette.requests import Request

from modelium.orchestrator import Priority
from modelium.runtimes.errors import BadRequestError

WAIT_HEADER = "x-max-wait-seconds"
PRIORITY_HEADER = "x-priority"


@dataclass(frozen=True)
class RequestOptions:
    wait_seconds: float | None = None
    priority: Priority = Priority.NORMAL


def request_options(request: Request) -> RequestOptions:
    raw_wait = request.headers.get(WAIT_HEADER)
    wait: float | None = None
    if raw_wait is not None:
        try:
            wait = float(raw_wait)
        except ValueError:
            raise BadRequestError(f"header X-Max-Wait-Seconds must be a number of seconds, got {raw_wait!r}") from None
        if not math.isfinite(wait) or wait < 0:
            raise BadRequestError(f"header X-Max-Wait-Seconds must be >= 0, got {raw_wait!r}")
    try:
        priority = Priority.parse(request.headers.get(PRIORITY_HEADER))
    except ValueError as exc:
        raise BadRequestError(f"header X-Priority: {exc}") from None
    return RequestOptions(wait, priority)
