"""TritonManager logic against a stand-in server and a scripted KServe HTTP API (FAKES,
labelled as such: the real tritonserver is exercised by tests/e2e/test_triton_manager.py).

Covered here because a real server cannot be made to do it on cue: an index call that
fails or times out while the server lives (must raise, never report every model lost), a
load finishing while the index call is pending, N concurrent loads after one crash
(exactly one restart), and the status-code classification of infer answers.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from modelium.analysis import analyze_folder
from modelium.analysis.profile import MemoryEstimate
from modelium.hardware.devices import Device
from modelium.runtimes.base import LoadRequest, ModelNotLoadedError, RuntimeUnavailableError
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.triton import manager as manager_module
from modelium.runtimes.triton.manager import TritonManager

CPU = Device(id="cpu", kind="cpu", index=None, total_bytes=16 << 30, name="host RAM")
MEMORY = MemoryEstimate(0, 0, 0, 0, 1, 1, "cpu")
CONFIG = 'name: "x"\nbackend: "python"\nmax_batch_size: 0\n' \
         'input [ { name: "X", data_type: TYPE_FP32, dims: [ -1 ] } ]\n' \
         'output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] } ]\n'


class FakeServer:
    """Stands in for TritonServer: alive until ``die()``; counts how many were made."""

    made: list[FakeServer] = []

    def __init__(self, install: Any, work_dir: Path, *, repository: Path, extra_args: Any = ()) -> None:
        self.ready = False
        self._alive = False
        self.ports = SimpleNamespace(http=1)
        self.pid = 1000 + len(FakeServer.made)
        self.returncode: int | None = None
        self.survivors: list[int] = []
        self.headers = {"x-modelium-key": f"key-{self.pid}"}  # a new key per server, like access.py
        FakeServer.made.append(self)

    base_url = "http://triton.test"
    metrics_url = "http://triton.test/metrics"

    @property
    def alive(self) -> bool:
        return self._alive

    def start(self) -> None:
        self._alive = True

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.sleep(0.05)  # let concurrent callers pile up behind the lock
        self.ready = True

    def stop(self) -> None:
        self._alive = False

    def die(self) -> None:
        self._alive, self.returncode = False, -9

    def log_tail(self, lines: int = 40) -> str:
        return "fake log"

    def stub_pids(self, entry: Path) -> list[int]:
        return [4242]


class FakeTriton:
    """The KServe-v2 routes the manager uses, scripted per test."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.index_mode = "ok"  # "ok" | "500" | "timeout" | "slow"
        self.infer_answer: dict[str, tuple[int, str]] = {}
        self.index_started = asyncio.Event()
        self.index_release = asyncio.Event()
        self.keys: list[str | None] = []  # the x-modelium-key of every restricted call

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if parts[:2] == ["v2", "health"]:
            return httpx.Response(200)
        # Like --http-restricted-api: an own server's APIs need that server's current key.
        self.keys.append(request.headers.get("x-modelium-key"))
        if FakeServer.made and self.keys[-1] != FakeServer.made[-1].headers["x-modelium-key"]:
            return httpx.Response(403, json={"error": "This API is restricted, expecting header 'x-modelium-key'"})
        if parts[:3] == ["v2", "repository", "index"]:
            return await self._index(request)
        if parts[:3] == ["v2", "repository", "models"]:
            name, action = parts[3], parts[4]
            self.states[name] = "READY" if action == "load" else "UNAVAILABLE"
            return httpx.Response(200, json={})
        name = parts[2]
        if parts[3:] == ["ready"]:
            return httpx.Response(200 if self.states.get(name) == "READY" else 400,
                                  json={} if self.states.get(name) == "READY" else {"error": "Model version not ready"})
        if parts[3:] == [] and request.method == "GET":
            return httpx.Response(200, json={"inputs": [{"name": "X", "datatype": "FP32", "shape": [-1]}]})
        status, message = self.infer_answer.get(name, (200, ""))
        if status != 200:
            return httpx.Response(status, json={"error": message})
        return httpx.Response(200, json={"outputs": [{"name": "Y", "datatype": "FP32", "shape": [1], "data": [1.0]}]})

    async def _index(self, request: httpx.Request) -> httpx.Response:
        if self.index_mode == "timeout":
            raise httpx.ReadTimeout("index timed out", request=request)
        if self.index_mode == "500":
            return httpx.Response(500, json={"error": "busy"})
        if self.index_mode == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        snapshot = [{"name": n, "version": "1", "state": s} for n, s in self.states.items()]
        if self.index_mode == "slow":
            self.index_started.set()
            await self.index_release.wait()
        return httpx.Response(200, content=json.dumps(snapshot))


@pytest.fixture
def triton(monkeypatch: pytest.MonkeyPatch) -> FakeTriton:
    fake = FakeTriton()
    real_client = httpx.AsyncClient

    def client(**kwargs: Any) -> httpx.AsyncClient:
        kwargs.pop("limits", None)
        return real_client(transport=httpx.MockTransport(fake), **kwargs)

    monkeypatch.setattr(manager_module.httpx, "AsyncClient", client)
    monkeypatch.setattr(manager_module, "TritonServer", FakeServer)
    FakeServer.made = []
    return fake


def _manager(tmp_path: Path, endpoint: str | None = None) -> TritonManager:
    install = None if endpoint else SimpleNamespace(executable=Path("/fake/tritonserver"),
                                                    backends=frozenset({"python"}))
    return TritonManager(install=install, state_dir=tmp_path / "state", endpoint=endpoint,  # type: ignore[arg-type]
                         startup_timeout_seconds=5)


def _request(tmp_path: Path, name: str) -> LoadRequest:
    folder = tmp_path / "drops" / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(CONFIG)
    (folder / "1" / "model.py").write_text("")
    return LoadRequest(name=name, model_dir=folder, profile=analyze_folder(folder, name), device=CPU, memory=MEMORY)


async def test_concurrent_loads_after_one_crash_restart_the_server_once(tmp_path: Path, triton: FakeTriton) -> None:
    manager = _manager(tmp_path)
    await manager.start()
    names = [f"m{i}" for i in range(6)]
    for name in names:
        await manager.load(_request(tmp_path, name))
    first = manager.server
    assert isinstance(first, FakeServer) and len(FakeServer.made) == 1
    first.die()
    assert await manager.loaded_models() == set()  # the process is gone: really lost
    assert "exited with code -9" in (manager.exit_reason("m0") or "")
    # every model's reload sees the same dead server: one restart, not six
    await asyncio.gather(*(manager.load(_request(tmp_path / "again", n)) for n in names))
    assert len(FakeServer.made) == 2 and manager.restarts == 1
    assert await manager.loaded_models() == set(names)
    assert await manager.restart_server(first) is False  # a late caller that saw `first` die
    assert manager.restarts == 1
    # Every call carried the key of the server it went to (the restarted one has its own).
    assert set(triton.keys) == {"key-1000", "key-1001"} and triton.keys[-1] == "key-1001"
    await manager.stop()


async def test_index_failure_while_alive_is_unknown_not_lost(tmp_path: Path, triton: FakeTriton) -> None:
    manager = _manager(tmp_path)
    await manager.start()
    await manager.load(_request(tmp_path, "a"))
    for mode in ("500", "timeout"):
        triton.index_mode = mode
        with pytest.raises(RuntimeUnavailableError):
            await manager.loaded_models()
    triton.index_mode = "ok"
    assert await manager.loaded_models() == {"a"}  # nothing was forgotten meanwhile
    triton.index_mode = "timeout"
    manager.server.die()  # type: ignore[union-attr]
    assert await manager.loaded_models() == set()  # dead server: the models are gone
    await manager.stop()


async def test_unreachable_external_server_raises(tmp_path: Path, triton: FakeTriton) -> None:
    manager = _manager(tmp_path, endpoint="triton.test")
    await manager.start()
    await manager.load(_request(tmp_path, "a"))
    assert await manager.process_ids("a") == []  # not our processes
    triton.index_mode = "refused"
    with pytest.raises(RuntimeUnavailableError):
        await manager.loaded_models()
    triton.index_mode = "ok"
    assert await manager.loaded_models() == {"a"}
    assert triton.keys and set(triton.keys) == {None}  # an external server gets no key
    await manager.stop()


async def test_a_load_finishing_during_the_index_call_counts_as_live(tmp_path: Path, triton: FakeTriton) -> None:
    manager = _manager(tmp_path)
    await manager.start()
    await manager.load(_request(tmp_path, "old"))
    triton.index_mode = "slow"
    pending = asyncio.create_task(manager.loaded_models())
    await triton.index_started.wait()  # the snapshot is taken: "new" is not in it
    manager._loaded.add("new")  # what load() does once Triton said READY
    triton.index_release.set()
    assert await pending == {"old", "new"}
    triton.index_mode = "ok"
    await manager.stop()


async def test_infer_errors_are_classified_by_status_code(tmp_path: Path, triton: FakeTriton) -> None:
    manager = _manager(tmp_path)
    await manager.start()
    await manager.load(_request(tmp_path, "echo"))
    assert await manager.process_ids("echo") == [4242]
    assert await manager.infer("echo", {"X": [1.0]}, {}) == {"Y": [1.0]}
    cases = [
        (500, "model 'x' not found: is not ready", RuntimeUnavailableError),  # the model's own text
        (404, "not found (the model's own NOT_FOUND)", RuntimeUnavailableError),  # model still READY
        (503, "unknown model", RuntimeUnavailableError),
        (400, "unexpected shape, model 'x' is not found", BadRequestError),
    ]
    for status, message, expected in cases:
        triton.infer_answer["echo"] = (status, message)
        with pytest.raises(expected) as caught:
            await manager.infer("echo", {"X": [1.0]}, {})
        assert not isinstance(caught.value, ModelNotLoadedError)
    # Triton's own 404 for a model it no longer has READY
    triton.states["echo"] = "UNAVAILABLE"
    triton.infer_answer["echo"] = (404, "Request for unknown model: 'echo' has no available versions")
    with pytest.raises(ModelNotLoadedError):
        await manager.infer("echo", {"X": [1.0]}, {})
    await manager.stop()
