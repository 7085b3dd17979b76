"""ASGI middleware that every vLLM server Modelium starts loads
(``--middleware modelium_vllm_guard.KeyGuard``, this folder on its ``PYTHONPATH``).

vLLM's own ``--api-key`` / ``VLLM_API_KEY`` check covers only paths under ``/v1``,
``/v2``, ``/inference`` and ``/cohere`` (vLLM 0.32, ``serve/middleware/authenticate.py``):
``/metrics``, ``/tokenize``, ``/pooling``, ``/classify``, ``/score``, ``/invocations`` and,
in dev mode (``VLLM_SERVER_DEV_MODE=1``, needed for parking), ``/sleep``, ``/wake_up``,
``/collective_rpc``, ``/reset_prefix_cache``... stay open. This guard asks for the same
key (``Authorization: Bearer <VLLM_API_KEY>``) on **every** path except ``GET /health``,
websockets included; without a key in the environment it refuses everything but
``/health`` (fail closed).

Standalone on purpose (standard library only, no ``modelium`` import): it runs inside
vLLM's own virtual environment, where Modelium is not installed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

KEY_ENV = "VLLM_API_KEY"
OPEN_PATHS = frozenset({"/health"})
_BODY = b'{"error": "Unauthorized"}'


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class KeyGuard:
    """Refuses (401, or a 1008 close for a websocket) any request without the key."""

    def __init__(self, app: Any) -> None:
        self.app = app
        key = os.environ.get(KEY_ENV, "")
        self._key = _digest(key) if key else None

    def allowed(self, scope: dict[str, Any]) -> bool:
        if scope["type"] == "http" and scope.get("path") in OPEN_PATHS and scope.get("method") in ("GET", "HEAD"):
            return True
        if self._key is None:
            return False
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(_digest(token.strip()), self._key)
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode()),
                (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": _BODY})
