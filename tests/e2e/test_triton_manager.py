"""TritonManager against a real tritonserver (the one bundled in ``.venvs/triton``,
``make triton``): load, infer, a failing model, unload, a killed server, stop; the HTTP
status codes Triton really answers (which the manager's error classification rests on);
the stub processes of a model with several instances."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from modelium.analysis import analyze_folder
from modelium.analysis.profile import MemoryEstimate
from modelium.hardware.devices import Device
from modelium.runtimes.base import LoadRequest, ModelNotLoadedError, RuntimeLoadError, RuntimeUnavailableError
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.triton import TritonManager, locate_tritonserver
from tests.e2e.processes import alive as _alive, process_tree as _tree

pytestmark = pytest.mark.e2e

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CPU = Device(id="cpu", kind="cpu", index=None, total_bytes=16 << 30, name="host RAM")
MEMORY = MemoryEstimate(weights_bytes=0, kv_cache_bytes=0, activation_bytes=0, runtime_overhead_bytes=0,
                        batch_size=1, sequence_length=1, device_kind="cpu")

ADD_ONE_CONFIG = '''name: "NAME"
backend: "python"
max_batch_size: 8
input [ { name: "X", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
dynamic_batching { }
'''

ADD_ONE_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        pass

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            out = pb_utils.Tensor("Y", (x + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
'''

BAD_MODEL = '''
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("modelium-test: this model refuses to initialize")

    def execute(self, requests):
        return []
'''


# Python models whose errors *say* "not found" / "is not ready": a client can make a user's
# model echo anything, so such text must never read as "the model is not loaded".
ECHO_NOT_FOUND_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError("input 'x' not found: model 'echo' is not ready"))
            for _ in requests]
'''
RAISE_NOT_FOUND_MODEL = '''
class TritonPythonModel:
    def execute(self, requests):
        raise RuntimeError("Request for unknown model: 'x' is not found, is not ready")
'''
CODE_NOT_FOUND_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError("row not found", pb_utils.TritonError.NOT_FOUND))
            for _ in requests]
'''


def _python_model(folder: Path, name: str, source: str, instances: int = 1) -> Path:
    (folder / "1").mkdir(parents=True)
    config = ADD_ONE_CONFIG.replace("NAME", name).replace("count: 1", f"count: {instances}")
    (folder / "config.pbtxt").write_text(config)
    (folder / "1" / "model.py").write_text(source)
    return folder


def _request(name: str, folder: Path) -> LoadRequest:
    profile = analyze_folder(folder, name)
    return LoadRequest(name=name, model_dir=folder, profile=profile, device=CPU, memory=MEMORY)


@pytest.fixture
def install():
    found = locate_tritonserver("modelium-no-such-tritonserver", PROJECT_ROOT)
    assert found is not None, "no tritonserver: run `make triton` (creates .venvs/triton)"
    return found


async def test_triton_manager_end_to_end(tmp_path: Path, install) -> None:
    manager = TritonManager(install=install, state_dir=tmp_path / "state", endpoint=None,
                            startup_timeout_seconds=60, load_timeout_seconds=120)
    seen_pids: list[int] = []
    try:
        await manager.start()
        assert manager.server is not None and manager.server.ready
        assert (await manager.health()).ok

        # A folder with its own config.pbtxt + python model, served as given.
        add_one = _python_model(tmp_path / "drops" / "add-one", "whatever", ADD_ONE_MODEL)
        await manager.load(_request("add-one", add_one))
        assert await manager.loaded_models() == {"add-one"}
        out = await manager.infer("add-one", {"X": [[1.0, 2.0, 3.0]]}, {})
        assert out == {"Y": [[2.0, 3.0, 4.0]]}
        with pytest.raises(BadRequestError):
            await manager.infer("add-one", {"X": [["a"]]}, {})  # not FP32
        with pytest.raises(BadRequestError, match="Triton rejected"):
            await manager.infer("add-one", {"X": [1.0, 2.0]}, {})  # rank 1: the batch dim is missing
        with pytest.raises(BadRequestError):
            await manager.infer("add-one", "some text", {})  # not a text model
        assert "nv_inference_request_success" in await manager.metrics_text()

        # A model whose initialize raises: Triton's own message, the others keep serving.
        bad = _python_model(tmp_path / "drops" / "bad", "bad", BAD_MODEL)
        with pytest.raises(RuntimeLoadError, match="refuses to initialize"):
            await manager.load(_request("bad", bad))
        assert await manager.loaded_models() == {"add-one"}
        assert await manager.infer("add-one", {"X": [[0.0]]}, {}) == {"Y": [[1.0]]}

        # Unload: the index says UNAVAILABLE when unload() returns.
        await manager.load(_request("add-two", _python_model(tmp_path / "drops" / "add-two", "x", ADD_ONE_MODEL)))
        assert await manager.loaded_models() == {"add-one", "add-two"}
        await manager.unload("add-two")
        index = {e["name"]: e for e in await manager.repository_index()}
        assert index.get("add-two", {}).get("state", "UNAVAILABLE") == "UNAVAILABLE"
        assert await manager.loaded_models() == {"add-one"}
        with pytest.raises(ModelNotLoadedError):
            await manager.infer("add-two", {"X": [[0.0]]}, {})
        await manager.unload("never-loaded")  # no-op

        # kill -9 tritonserver: detected, stubs gone with it, next load restarts it.
        server = manager.server
        assert server is not None and server.pid is not None
        first_tree = _tree(server.pid)
        assert len(first_tree) >= 2, "the python model's stub should run under tritonserver"
        seen_pids += first_tree
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert await manager.loaded_models() == set()
        reason = manager.exit_reason("add-one")
        assert reason is not None and "exited with code -9" in reason
        assert not (await manager.health()).ok
        with pytest.raises(ModelNotLoadedError):
            await manager.infer("add-one", {"X": [[0.0]]}, {})
        await manager.load(_request("add-one", add_one))  # restarts the server first
        assert manager.server is not server and manager.restarts == 1
        assert manager.exit_reason("add-one") is None
        assert await manager.infer("add-one", {"X": [[41.0]]}, {}) == {"Y": [[42.0]]}
        deadline = time.monotonic() + 10  # the old stub notices its parent died
        while _alive(first_tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(first_tree) == []
        assert manager.server is not None and manager.server.pid is not None
        seen_pids += _tree(manager.server.pid)
    finally:
        await manager.stop()
    # stop(): no tritonserver, no stub left.
    assert _alive(seen_pids) == []
    assert manager.server is None


async def test_status_codes_and_stub_processes(tmp_path: Path, install) -> None:
    """What tritonserver 2.51 answers (pinned: the manager classifies by these codes), that
    no error text makes a model "not loaded", and process_ids finds each instance's stub."""
    manager = TritonManager(install=install, state_dir=tmp_path / "state", endpoint=None,
                            startup_timeout_seconds=60, load_timeout_seconds=120)
    drops = tmp_path / "drops"
    x = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    try:
        await manager.start()
        for name, source in (("echo", ECHO_NOT_FOUND_MODEL), ("raiser", RAISE_NOT_FOUND_MODEL),
                             ("coded", CODE_NOT_FOUND_MODEL)):
            await manager.load(_request(name, _python_model(drops / name, name, source)))
        two = _request("two", _python_model(drops / "two", "two", ADD_ONE_MODEL, instances=2))
        assert two.profile.instances == 2
        await manager.load(two)
        await manager.load(_request("one.REV2", _python_model(drops / "one", "one", ADD_ONE_MODEL)))

        assert manager.server is not None
        async with httpx.AsyncClient(base_url=manager.base_url, headers=manager.server.headers,
                                     trust_env=False) as http:
            async def status(path: str) -> int:
                return (await http.post(path, json=x)).status_code

            assert await status("/v2/models/no-such-model/infer") == 404  # Triton's own "not loaded"
            assert await status("/v2/models/echo/infer") == 500  # an execute() error, whatever its text
            assert await status("/v2/models/raiser/infer") == 500
            assert await status("/v2/models/coded/infer") == 404  # the model's own NOT_FOUND code
            assert (await http.get("/v2/models/coded/ready")).status_code == 200
            assert (await http.get("/v2/models/no-such-model/ready")).status_code == 400

        for name in ("echo", "raiser", "coded"):
            with pytest.raises(RuntimeUnavailableError) as caught:
                await manager.infer(name, {"X": [[1.0]]}, {})
            assert not isinstance(caught.value, ModelNotLoadedError)
        assert await manager.loaded_models() == {"echo", "raiser", "coded", "two", "one.REV2"}

        # A model Triton really dropped (unloaded behind the manager's back): its 404 is
        # "not loaded"; the manager still believed in it, so only the status can say so.
        await manager._require_client().unload("coded")
        await manager._require_client().wait_unavailable("coded", 30)
        with pytest.raises(ModelNotLoadedError):
            await manager.infer("coded", {"X": [[1.0]]}, {})

        # Stubs: one process per instance, named by the model's entry path; REV keys work.
        assert manager.server is not None and manager.server.pid is not None
        stubs_two = await manager.process_ids("two")
        stubs_rev = await manager.process_ids("one.REV2")
        assert len(stubs_two) == 2 and len(stubs_rev) == 1
        tree = set(_tree(manager.server.pid))
        assert set(stubs_two) | set(stubs_rev) <= tree and manager.server.pid not in stubs_two
        for pid in stubs_two:
            assert psutil.Process(pid).cmdline()[1] == str(manager.repository / "two" / "1" / "model.py")
        assert await manager.process_ids("never-loaded") == []
        await manager.unload("two")
        assert await manager.process_ids("two") == []
    finally:
        await manager.stop()


async def test_direct_calls_without_the_key_are_refused(tmp_path: Path, install) -> None:
    """Modelium's own tritonserver answers only calls carrying its ``x-modelium-key``
    (every API but health), speaks no gRPC, and hides the key from ``ps``."""
    manager = TritonManager(install=install, state_dir=tmp_path / "state", endpoint=None,
                            startup_timeout_seconds=60, load_timeout_seconds=120)
    x = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    try:
        await manager.start()
        await manager.load(_request("add-one", _python_model(tmp_path / "add-one", "x", ADD_ONE_MODEL)))
        server = manager.server
        assert server is not None and server.pid is not None and server.ports is not None
        key = server.api_key
        assert len(key) >= 40 and server.headers == {"x-modelium-key": key}
        calls = [("POST", "/v2/models/add-one/infer", x), ("POST", "/v2/repository/models/add-one/load", {}),
                 ("POST", "/v2/repository/models/add-one/unload", {}), ("POST", "/v2/repository/index", {}),
                 ("GET", "/v2/models/add-one", None),
                 ("GET", "/v2/models/add-one/config", None), ("GET", "/v2/models/stats", None),
                 ("GET", "/v2", None), ("GET", "/v2/systemsharedmemory/status", None),
                 ("GET", "/v2/trace/setting", None), ("GET", "/v2/logging", None)]
        async with httpx.AsyncClient(base_url=manager.base_url, trust_env=False, timeout=30) as http:
            for method, path, body in calls:
                for headers in ({}, {"x-modelium-key": "guess"}, {"authorization": f"Bearer {key}"}):
                    response = await http.request(method, path, json=body, headers=headers)
                    assert response.status_code == 403, (method, path, headers, response.status_code)
                    assert "This API is restricted, expecting header 'x-modelium-key'" in response.text
            # Health stays open: "up", and whether a model of that name is ready.
            for path in ("/v2/health/ready", "/v2/health/live", "/v2/models/add-one/ready"):
                assert (await http.get(path)).status_code == 200
            assert await manager.loaded_models() == {"add-one"}  # nothing was unloaded
            with_key = {"headers": server.headers}
            assert (await http.post("/v2/models/add-one/infer", json=x, **with_key)).json()["outputs"][0]["data"] == [2.0]
            assert (await http.post("/v2/repository/models/add-one/load", json={}, **with_key)).status_code == 200
            assert (await http.post("/v2/repository/index", json={}, **with_key)).status_code == 200
            # The metrics port cannot be restricted by Triton: read-only counters, on loopback.
            assert (await http.get(server.metrics_url)).status_code == 200
        assert await manager.infer("add-one", {"X": [[1.0]]}, {}) == {"Y": [[2.0]]}

        # No gRPC: tritonserver listens on its HTTP and metrics ports only, on loopback.
        listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(server.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {("127.0.0.1", server.ports.http), ("127.0.0.1", server.ports.metrics)}
        # The key is not readable in its command line (scrubbed once it answered), nor in its log.
        assert server.argv_scrubbed
        cmdline = " ".join(psutil.Process(server.pid).cmdline())
        assert key not in cmdline and "x-modelium-key=" + "*" * len(key) in cmdline
        assert key not in server.log_path.read_text()
        assert "RAY_AUTH_TOKEN" not in psutil.Process(server.pid).environ()

        # A restarted server has a new key; the manager uses it at once.
        os.kill(server.pid, signal.SIGKILL)
        while server.alive:
            time.sleep(0.05)
        await manager.load(_request("add-one", _python_model(tmp_path / "again", "x", ADD_ONE_MODEL)))
        assert manager.server is not server and manager.server.api_key != key
        assert await manager.infer("add-one", {"X": [[2.0]]}, {}) == {"Y": [[3.0]]}
    finally:
        await manager.stop()


_DAEMON_SCRIPT = '''
import asyncio, json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.e2e.test_triton_manager import ADD_ONE_MODEL, _python_model, _request, _tree
from modelium.runtimes.triton import TritonManager, locate_tritonserver

async def main():
    tmp = Path(sys.argv[2])
    manager = TritonManager(install=locate_tritonserver("modelium-no-such-tritonserver", Path(sys.argv[1])),
                            state_dir=tmp / "state", endpoint=None, startup_timeout_seconds=60)
    await manager.start()
    await manager.load(_request("add-one", _python_model(tmp / "add-one", "x", ADD_ONE_MODEL)))
    print(json.dumps(_tree(manager.server.pid)), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
'''


def test_daemon_killed_leaves_no_triton_process(tmp_path: Path) -> None:
    """The daemon is SIGKILLed: the parent-death signal takes tritonserver and its stubs down."""
    import json
    import subprocess
    import sys

    daemon = subprocess.Popen([sys.executable, "-c", _DAEMON_SCRIPT, str(PROJECT_ROOT), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = daemon.stdout.readline() if daemon.stdout else ""
        assert line, "the daemon stand-in did not report its tritonserver"
        pids = json.loads(line)
        assert len(pids) >= 2  # tritonserver + the model's stub
        daemon.kill()
        daemon.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _alive(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(pids) == []
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
