"""Optional API keys: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

With no keys configured every request is allowed (the gateway binds to loopback by
default). ``/health`` and ``/metrics`` never need a key so probes and scrapers work.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

from fastapi import HTTPException, Request


def api_key_checker(api_keys: Sequence[str]) -> Callable[[Request], None]:
    keys = [k.encode() for k in api_keys]

    def check(request: Request) -> None:
        if not keys:
            return
        presented = request.headers.get("x-api-key", "")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            presented = auth[7:].strip()
        if not any(hmac.compare_digest(presented.encode(), key) for key in keys):
            raise HTTPException(status_code=401, detail="missing or invalid API key",
                                headers={"WWW-Authenticate": "Bearer"})

    return check
