"""Optional API keys: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

With no keys configured every request is allowed (the gateway then only binds to loopback,
unless ``gateway.allow_unauthenticated`` says otherwise). ``/health`` and ``/metrics``
never need a key so probes and scrapers work; ``/health`` shows runtime details only to an
authorized caller. Keys are compared as SHA-256 digests with ``hmac.compare_digest``, and
every configured key is compared, so neither a key's length nor its position leaks.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence

from fastapi import HTTPException, Request


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def presented_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key", "")


def key_is_valid(request: Request, api_keys: Sequence[str]) -> bool:
    presented = _digest(presented_key(request))
    matches = [hmac.compare_digest(presented, _digest(key)) for key in api_keys]
    return any(matches)


def api_key_checker(api_keys: Sequence[str]) -> Callable[[Request], Awaitable[None]]:
    keys = list(api_keys)

    # async although it never awaits: FastAPI runs a sync dependency in a worker thread,
    # a thread hop per request that cost more CPU than the whole relay (docs/benchmarks.md).
    async def check(request: Request) -> None:
        if keys and not key_is_valid(request, keys):
            raise HTTPException(status_code=401, detail="missing or invalid API key",
                                headers={"WWW-Authenticate": "Bearer"})

    return check
