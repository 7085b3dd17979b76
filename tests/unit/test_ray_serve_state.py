"""RayServeManager.loaded_models / process_ids against a scripted ``serve.status`` and
handle (FAKES, labelled as such: the real cluster is exercised by
tests/e2e/test_ray_serve_manager.py). A real cluster cannot be put in UNHEALTHY or made
to fail ``serve.status`` on cue; these are the cases review finding 2c is about."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from modelium.runtimes.base import RuntimeUnavailableError
from modelium.runtimes.ray_serve import RayServeManager


def _app(model: str, status: str, running: int = 1, ours: bool = True) -> SimpleNamespace:
    deployment = "modelium-" + model if ours else "someone-else"
    return SimpleNamespace(status=status, message="",
                           deployments={deployment: SimpleNamespace(replica_states={"RUNNING": running}, message="")})


class FakeServe:
    def __init__(self, apps: dict[str, SimpleNamespace]) -> None:
        self.apps = apps
        self.fail: Exception | None = None
        self.on_status = lambda: None
        self.replica_pids: dict[str, list[int]] = {}

    def status(self) -> SimpleNamespace:
        self.on_status()
        if self.fail is not None:
            raise self.fail
        return SimpleNamespace(applications=self.apps)

    def get_app_handle(self, name: str) -> Any:
        pids = self.replica_pids[name]

        async def pick() -> int:  # Serve routes each call to one replica of its choosing
            await asyncio.sleep(0)
            return random.choice(pids)

        return SimpleNamespace(process_id=SimpleNamespace(remote=pick))


class FakeCluster:
    def __init__(self) -> None:
        self.running = True
        self.process = SimpleNamespace(returncode=None)
        self.log_path = Path("/tmp/ray.log")
        self.address = "127.0.0.1:6390"

    def is_running(self) -> bool:
        return self.running


def _manager(serve: FakeServe, *, address: str = "auto") -> RayServeManager:
    manager = RayServeManager(address=address)
    manager._serve = serve
    manager._ray = SimpleNamespace(is_initialized=lambda: True)
    manager._started = True
    manager.cluster = FakeCluster() if address == "auto" else None  # type: ignore[assignment]
    return manager


async def test_transient_apps_are_live_and_failed_or_deleting_ones_gone() -> None:
    serve = FakeServe({
        "running": _app("running", "RUNNING"),
        "redeploying": _app("redeploying", "DEPLOYING"),
        "repairing": _app("repairing", "UNHEALTHY"),
        "submitted": _app("submitted", "NOT_STARTED"),
        "failed": _app("failed", "DEPLOY_FAILED"),
        "deleting": _app("deleting", "DELETING"),
        "foreign": _app("foreign", "RUNNING", ours=False),
        "m.REV2": _app("m.REV2", "RUNNING"),  # an instance key is an app name like any other
    })
    manager = _manager(serve)
    assert await manager.loaded_models() == {"running", "redeploying", "repairing", "submitted", "m.REV2"}


async def test_a_failing_status_is_unknown_while_the_cluster_lives() -> None:
    serve = FakeServe({"a": _app("a", "RUNNING")})
    manager = _manager(serve)
    serve.fail = RuntimeError("GCS rpc failed: deadline exceeded")
    with pytest.raises(RuntimeUnavailableError, match="deadline exceeded"):
        await manager.loaded_models()
    joined = _manager(serve, address="127.0.0.1:6390")
    with pytest.raises(RuntimeUnavailableError):
        await joined.loaded_models()


async def test_a_dead_private_cluster_has_nothing_loaded() -> None:
    serve = FakeServe({"a": _app("a", "RUNNING")})
    manager = _manager(serve)
    manager.cluster.running = False  # type: ignore[union-attr]
    assert await manager.loaded_models() == set()
    # ...and one that dies while serve.status is pending
    manager = _manager(serve)
    cluster = manager.cluster

    def die() -> None:
        cluster.running = False  # type: ignore[union-attr]

    serve.on_status, serve.fail = die, ConnectionError("GCS gone")
    assert await manager.loaded_models() == set()


async def test_process_ids_asks_until_every_replica_answered() -> None:
    serve = FakeServe({"m": _app("m", "RUNNING", running=3), "gone": _app("gone", "DELETING", running=0)})
    serve.replica_pids = {"m": [101, 102, 103]}
    manager = _manager(serve)
    assert await manager.process_ids("m") == [101, 102, 103]
    assert await manager.process_ids("gone") == []
    assert await manager.process_ids("unknown") == []
    remote = _manager(serve, address="10.0.0.5:6379")  # another host's pids mean nothing here
    assert await remote.process_ids("m") == []
