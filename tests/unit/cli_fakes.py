"""A fake `GatewayClient` and sample daemon answers for the CLI's unit tests.

The samples follow what the daemon's routes return (`ModelRecord.to_dict`, GET /status,
GET /health), including the odd cases: a model with almost no fields, a failed model's
reason, a pinned one, a device with memory used outside Modelium.
"""

from __future__ import annotations

import time
from typing import Any

from modelium.cli.client import GatewayError

GIB = 1024**3
NOW = time.time()


def model(name: str, state: str, **extra: Any) -> dict[str, Any]:
    record = {"name": name, "state": state, "runtime": None, "device": None, "reason": None,
              "runtime_reason": None, "pinned": False, "memory": None, "last_used": None,
              "loaded_at": None,
              "footprint": {"estimate_bytes": None, "reserved_bytes": 0, "measured_bytes": None}}
    record.update(extra)
    return record


def sample_models() -> list[dict[str, Any]]:
    return [
        model("tiny-bert", "ready", runtime="triton", device="gpu:0", loaded_at=NOW - 300,
              last_used=NOW - 120, memory={"total_bytes": 2 * GIB},
              footprint={"estimate_bytes": 2 * GIB, "reserved_bytes": 2 * GIB,
                         "measured_bytes": int(1.5 * GIB)}),
        model("big-llama", "loading", runtime="vllm", device="gpu:0", memory={"total_bytes": 8 * GIB},
              footprint={"estimate_bytes": 8 * GIB, "reserved_bytes": 8 * GIB, "measured_bytes": None}),
        model("keeper", "ready", runtime="ray_serve", device="cpu", pinned=True, loaded_at=NOW - 5000,
              footprint={"estimate_bytes": GIB, "reserved_bytes": GIB, "measured_bytes": None}),
        model("broken", "failed", runtime="triton",
              reason="triton could not load broken: ModuleNotFoundError: nope"),
        model("sleepy", "unloaded", runtime="triton", reason="unloaded on request",
              memory={"total_bytes": 3 * GIB},
              footprint={"estimate_bytes": 3 * GIB, "reserved_bytes": 0, "measured_bytes": None}),
        {"name": "half-known", "state": "analyzed"},  # most fields missing
    ]


def sample_config(**orchestration: Any) -> dict[str, Any]:
    return {"orchestration": {"auto_unload_after_seconds": 600.0, "min_qps_threshold": 0.1,
                              "always_loaded": [], **orchestration},
            "models": {}}


def sample_status(**extra: Any) -> dict[str, Any]:
    status = {
        "version": "0.1.0", "ready": True, "startup_error": None, "inventory_source": "configured",
        "devices": [
            {"id": "gpu:0", "kind": "gpu", "index": 0, "name": "simulated", "total_bytes": 24 * GIB,
             "used_bytes_outside": 4 * GIB, "simulated": True},
            {"id": "cpu", "kind": "cpu", "index": None, "name": "host RAM", "total_bytes": 64 * GIB,
             "used_bytes_outside": 0, "simulated": False},
        ],
        "reserved_bytes": {"gpu:0": 11 * GIB, "cpu": GIB},  # 1 GiB on gpu:0 no model accounts for
        "models": {m["name"]: m["state"] for m in sample_models()},
        "quarantined": [{"time": NOW - 60, "name": "weird-link", "reason": "a symlink; copy it in with cp -rL",
                         "path": "/x/failed/weird-link"}],
        "recent_decisions": [],
        "scheduler": {"claims": {"big-llama": {"device": "gpu:0", "bytes": 8 * GIB, "victims": ["old-one"]}},
                      "draining": {"old-one": {"code": "evict", "for": "big-llama", "park": False}},
                      "retiring": [], "intents": ["big-llama"]},
        "switching_share": {"gpu:0": 0.25},
        "unknown_runtimes": {},
        "config": sample_config(),
    }
    status.update(extra)
    return status


def sample_health(ok: bool = True) -> dict[str, Any]:
    return {"status": "ok" if ok else "degraded", "error": None,
            "runtimes": {"triton": {"ok": True, "detail": "tritonserver 2.50 on :8001"},
                         "ray_serve": {"ok": ok, "detail": "up" if ok else "ray head exited with 1"}}}


Route = Any  # an answer, a GatewayError to raise, or a callable(method, path, body) -> answer


class FakeClient:
    """Answers by (METHOD, path without query); records every call."""

    def __init__(self, routes: dict[tuple[str, str], Route]) -> None:
        self.routes = routes
        self.calls: list[tuple[str, str, Any]] = []

    def _answer(self, method: str, path: str, body: Any) -> Any:
        self.calls.append((method, path, body))
        key = (method, path.split("?", 1)[0])
        if key not in self.routes:
            raise GatewayError(f"HTTP 404: no route {key}", 404)
        route = self.routes[key]
        if callable(route):
            route = route(method, path, body)
        if isinstance(route, BaseException):
            raise route
        return route

    def request(self, method: str, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        return self._answer(method, path, body)

    def probe(self, path: str, *, timeout: float = 10.0) -> tuple[int, Any]:
        answer = self._answer("GET", path, None)
        return (200 if answer.get("status") == "ok" else 503), answer


def install(monkeypatch, client: Any) -> Any:
    """Make every CLI command talk to ``client``."""
    import modelium.cli.main as cli_main

    monkeypatch.setattr(cli_main, "_client", lambda config, url, api_key: client)
    return client


def gone() -> GatewayError:
    return GatewayError("cannot reach modelium at http://127.0.0.1:1 (is `modelium serve` running?)")
