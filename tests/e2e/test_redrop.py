"""Re-drops under load, end to end with a real tritonserver: a new version of a model that
clients hammer replaces it without a failed request, beside the old one when there is
room and through a swap when there is not; a new version that fails to load leaves the
old one serving and is quarantined with Triton's reason."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.e2e.daemon_harness import running_daemon, triton_only_config
from tests.e2e.fixtures_orchestration import make_sleeper, make_versioned

pytestmark = pytest.mark.e2e

CLIENTS = 6


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    config = triton_only_config(
        # ~0.71 GiB per model (CUDA context + margin): three fit in 2.25 GiB usable.
        gpus=[{"id": 0, "memory_gb": 2.5}],
        orchestration={"decision_interval_seconds": 1, "auto_unload_after_seconds": 0},
    )
    with running_daemon(tmp_path_factory.mktemp("redrop"), config) as running:
        yield running


def _drop(daemon, name: str, make) -> None:
    staging = daemon.home / "staging" / name
    shutil.rmtree(staging, ignore_errors=True)
    make(staging)
    shutil.move(str(staging), daemon.home / "incoming" / name)


def _version(daemon) -> requests.Response:
    return requests.post(f"{daemon.url}/predict/hot", json={"inputs": {"SECONDS": [0.02]}}, timeout=120)


def _hammer_while(daemon, action, until) -> list[tuple[int, str]]:
    """Clients ask for `hot` in a loop while `action()` runs and until `until()` holds."""
    stop = threading.Event()
    seen: list[tuple[int, str]] = []

    def client(_: int) -> None:
        session = requests.Session()
        while not stop.is_set():
            answer = session.post(f"{daemon.url}/predict/hot", json={"inputs": {"SECONDS": [0.02]}},
                                  timeout=120)
            version = answer.json()["outputs"]["VERSION"][0] if answer.status_code == 200 else answer.text
            seen.append((answer.status_code, version))

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, i) for i in range(CLIENTS)]
        threading.Event().wait(1.0)
        action()
        try:
            daemon.wait_for(until, 90, "the re-drop to finish")
            threading.Event().wait(1.0)
        finally:
            stop.set()
        for future in futures:
            future.result()
    return seen


def test_redrop_beside_the_old_version_fails_no_request(daemon):
    _drop(daemon, "hot", lambda d: make_versioned(d, "v1"))
    _drop(daemon, "other", lambda d: make_sleeper(d))
    for name in ("hot", "other"):
        daemon.wait_for(lambda n=name: daemon.model(n)["state"] == "ready", 60, f"{name} ready")
    seen = _hammer_while(daemon, lambda: _drop(daemon, "hot", lambda d: make_versioned(d, "v2")),
                         lambda: _version(daemon).json()["outputs"]["VERSION"] == ["v2"])
    assert seen and {status for status, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
    versions = [v for _, v in seen]
    assert versions[0] == "v1" and versions[-1] == "v2"
    detail = daemon.model("hot")
    assert detail["revision"] == 2 and detail["instance"] == "hot.REV2"
    decisions = requests.get(f"{daemon.url}/decisions", params={"model": "hot"}, timeout=5).json()["decisions"]
    assert any(d["action"] == "redrop" and d["reason_code"] == "side-by-side" for d in decisions)


def test_redrop_without_room_beside_swaps_and_requests_wait_through_it(daemon):
    _drop(daemon, "filler", lambda d: make_sleeper(d))
    daemon.wait_for(lambda: daemon.model("filler")["state"] == "ready", 60, "filler ready")
    requests.post(f"{daemon.url}/models/filler/pin", timeout=5)
    requests.post(f"{daemon.url}/models/other/pin", timeout=5)  # no eviction makes room: a swap
    seen = _hammer_while(daemon, lambda: _drop(daemon, "hot", lambda d: make_versioned(d, "v3")),
                         lambda: _version(daemon).json()["outputs"]["VERSION"] == ["v3"])
    assert seen and {status for status, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
    assert seen[-1][1] == "v3" and daemon.model("hot")["revision"] == 3
    decisions = requests.get(f"{daemon.url}/decisions", params={"model": "hot"}, timeout=5).json()["decisions"]
    assert any(d["action"] == "redrop" and d["reason_code"] == "swap" for d in decisions)


def test_redrop_that_fails_to_load_leaves_the_old_version_serving(daemon):
    seen = _hammer_while(daemon, lambda: _drop(daemon, "hot", lambda d: make_versioned(d, "v4", broken=True)),
                         lambda: (daemon.home / "failed" / "hot" / "REASON.txt").exists())
    assert seen and {status for status, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
    assert {v for _, v in seen} == {"v3"}
    reason = (daemon.home / "failed" / "hot" / "REASON.txt").read_text()
    assert "failed to load" in reason and "corrupt weights in version v4" in reason, reason
    detail = daemon.model("hot")
    assert detail["state"] == "ready" and detail["revision"] == 3
    assert _version(daemon).json()["outputs"]["VERSION"] == ["v3"]
