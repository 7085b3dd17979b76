"""Error types shared by every runtime (Ray Serve, Triton, in-process).

Runtimes raise these instead of framework-specific exceptions so the gateway can
map client mistakes to a 4xx without knowing which backend served the request.
"""

from __future__ import annotations


class BadRequestError(ValueError):
    """The request itself is wrong (unknown parameter, bad type, missing mask token...).

    The gateway maps this to HTTP 422; anything else escaping a runtime is a 500.
    Subclassing ValueError keeps plain ``except ValueError`` callers working.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
