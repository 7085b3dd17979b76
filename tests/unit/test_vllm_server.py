"""VllmServer (one supervised process) and VllmManager, against a fake vLLM server.

The fake is a small stdlib HTTP server speaking the few vLLM endpoints Modelium uses
(``/health``, ``/v1/completions``, ``/v1/chat/completions``, ``/sleep``, ``/wake_up``,
``/is_sleeping``), refusing calls without the server's ``VLLM_API_KEY`` as the guard does. It can exit early, hang, ignore SIGTERM, fail to wake, and start a child in its process
group that outlives it (as vLLM's engine-core process outlives a SIGKILLed API server).
For the manager it is installed as a fake ``vllm.entrypoints.openai.api_server`` module on
PYTHONPATH, so the real command line is used. Real vLLM: tests/e2e/test_vllm_manager.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from modelium.analysis.profile import MemoryEstimate, ModelProfile
from modelium.config.settings import VllmModelSettings
from modelium.hardware.devices import Device
from modelium.runtimes.base import LoadRequest, ModelNotLoadedError, RuntimeLoadError
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.process import free_ports
from modelium.runtimes.ray_serve.cluster import free_port_range
from modelium.runtimes.vllm import VllmInstall, VllmManager, VllmServer

FAKE_SERVER = r'''
import json, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

args = sys.argv[1:]
def flag(name, default=None):
    return args[args.index(name) + 1] if name in args else default

port = int(flag("--port"))
import threading  # safety net: a fake never outlives a broken test run by long
threading.Thread(target=lambda: (time.sleep(float(os.environ.get("FAKE_VLLM_LIFETIME", "120"))), os._exit(9)),
                 daemon=True).start()
served = flag("--served-model-name", "model")
mode = os.environ.get("FAKE_VLLM_MODE", "serve")
for i in range(60):
    print(f"fake vllm log line {i}", flush=True)
if os.environ.get("FAKE_VLLM_CHILD"):
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
    with open(os.environ["FAKE_VLLM_CHILD"], "w") as f:
        f.write(str(child.pid))
if mode == "exit":
    print("ValueError: fake start-up failure", flush=True)
    time.sleep(0.3)
    sys.exit(3)
if mode == "hang":
    time.sleep(600)
if mode == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
delay = float(os.environ.get("FAKE_VLLM_DELAY", "0"))
if delay:
    time.sleep(delay)
state = {"sleeping": False}
record = os.environ.get("FAKE_VLLM_RECORD")

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def authorized(self):  # like modelium_vllm_guard: the server's key on every path but /health
        key = os.environ.get("VLLM_API_KEY")
        if not key or urlparse(self.path).path == "/health" or self.headers.get("authorization") == "Bearer " + key:
            return True
        self.answer(401, {"error": "Unauthorized"})
        return False
    def do_GET(self):
        if not self.authorized():
            return
        path = urlparse(self.path).path
        if path == "/health":
            self.answer(200, {})
        elif path == "/is_sleeping":
            self.answer(200, {"is_sleeping": state["sleeping"]})
        else:
            self.answer(404, {"detail": "Not Found"})
    def do_POST(self):
        if not self.authorized():
            return
        url = urlparse(self.path)
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        if record:
            with open(record, "a") as f:
                f.write(json.dumps({"path": url.path, "query": url.query, "body": body}) + "\n")
        if url.path == "/sleep" and os.environ.get("VLLM_SERVER_DEV_MODE") == "1":
            state["sleeping"] = parse_qs(url.query).get("level") == ["1"]
            self.answer(200, {})
        elif url.path == "/wake_up" and os.environ.get("FAKE_VLLM_WAKE_FAIL"):
            self.answer(500, {"error": "CUDA error: out of memory"})
        elif url.path == "/wake_up" and os.environ.get("VLLM_SERVER_DEV_MODE") == "1":
            state["sleeping"] = False
            self.answer(200, {})
        elif url.path in ("/v1/completions", "/v1/chat/completions"):
            if body.get("model") != served:
                return self.answer(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                   "type": "NotFoundError", "code": 404}})
            if body["max_tokens"] > 100:
                return self.answer(400, {"error": {"message": "max_tokens=%d is too big" % body["max_tokens"],
                                                   "type": "BadRequestError", "code": 400}})
            n = body["max_tokens"]
            if url.path == "/v1/completions":
                prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
                choices = [{"index": i, "text": f"<{p}>", "finish_reason": "length" if n > 1 else "stop",
                            "token_ids": list(range(n))} for i, p in enumerate(prompts)]
                choices.reverse()  # vLLM does not promise the order; the manager sorts by index
            else:
                choices = [{"index": 0, "message": {"role": "assistant", "content": body["messages"][-1]["content"]},
                            "finish_reason": "stop"}]
            self.answer(200, {"choices": choices, "usage": {"completion_tokens": n * len(choices)}})
        else:
            self.answer(404, {"detail": "Not Found"})

ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''

CPU = Device(id="cpu", kind="cpu", index=None, total_bytes=8 << 30, name="host RAM")
GPU = Device(id="gpu:1", kind="gpu", index=1, total_bytes=80 << 30, name="simulated")


@pytest.fixture(autouse=True)
def _local_connections_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """test_predictor.py forbids socket.connect for the rest of the session (a session
    fixture); these tests must talk to their local fake servers."""
    if "connect" in vars(socket.socket):
        monkeypatch.delattr(socket.socket, "connect")


@pytest.fixture
def fake_script(tmp_path: Path) -> Path:
    path = tmp_path / "fake_vllm.py"
    path.write_text(FAKE_SERVER)
    return path


def _port() -> int:
    return free_ports(1)[0]


_STARTED: list[tuple[VllmServer, Path | None]] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    """Even when a test fails half-way, its fake servers (and their children) go."""
    yield
    while _STARTED:
        server, child_file = _STARTED.pop()
        server.stop(timeout=1)
        if child_file is not None and child_file.exists():
            try:
                os.kill(int(child_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def _server(tmp_path: Path, script: Path, *, name: str = "m", client=None, **env: str) -> VllmServer:
    port = _port()
    command = [sys.executable, str(script), "--port", str(port), "--served-model-name", name]
    server = VllmServer(name, command, {**os.environ, **env}, tmp_path / "logs" / f"{name}.log", port, client=client)
    child = env.get("FAKE_VLLM_CHILD")
    _STARTED.append((server, Path(child) if child else None))
    return server


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------- VllmServer


async def test_ready_then_stop(tmp_path: Path, fake_script: Path) -> None:
    server = _server(tmp_path, fake_script)
    server.start()
    try:
        await server.wait_ready(30)
        assert server.ready and server.alive and server.returncode is None
        assert server.ready_seconds is not None and server.ready_seconds < 30
        assert server.log_tail(3).splitlines() == ["fake vllm log line 57", "fake vllm log line 58",
                                                   "fake vllm log line 59"]
        # runs the command itself once the wrapper exec'ed (parent-death signal set)
        assert psutil.Process(server.pid).cmdline()[1:] == server.command[1:]
        assert os.getpgid(server.pid) == server.pid  # its own process group
    finally:
        assert server.stop() == 0
    assert not server.alive and not server.ready
    assert server.stop() == 0  # twice is fine


async def test_readiness_fails_at_once_when_the_process_exits(tmp_path: Path, fake_script: Path) -> None:
    server = _server(tmp_path, fake_script, FAKE_VLLM_MODE="exit")
    server.start()
    started = time.monotonic()
    with pytest.raises(RuntimeLoadError) as info:
        await server.wait_ready(120)
    assert time.monotonic() - started < 15  # not the 120 s timeout
    message = str(info.value)
    assert "exited with code 3" in message
    assert "ValueError: fake start-up failure" in message
    assert "fake vllm log line 59" in message and "fake vllm log line 5\n" not in message  # a tail only
    assert server.returncode == 3
    server.stop()


async def test_readiness_times_out_with_the_log_tail(tmp_path: Path, fake_script: Path) -> None:
    server = _server(tmp_path, fake_script, FAKE_VLLM_MODE="hang")
    server.start()
    try:
        with pytest.raises(RuntimeLoadError, match=r"did not become healthy within 1s(.|\n)*log line 59"):
            await server.wait_ready(1)
    finally:
        server.stop()
    assert not _alive(server.pid)


async def test_stop_kills_the_whole_process_group(tmp_path: Path, fake_script: Path) -> None:
    """The child ignores SIGTERM and the server too: SIGKILL of the group after the wait."""
    child_file = tmp_path / "child.pid"
    server = _server(tmp_path, fake_script, FAKE_VLLM_MODE="ignore_term", FAKE_VLLM_CHILD=str(child_file))
    server.start()
    await server.wait_ready(30)
    child = int(child_file.read_text())
    assert _alive(child) and os.getpgid(child) == server.pid
    started = time.monotonic()
    code = server.stop(timeout=1)
    assert 0.9 < time.monotonic() - started < 8
    assert code == -signal.SIGKILL
    assert _wait_gone(child) and not _alive(server.pid)


async def test_a_dead_servers_leftover_child_is_swept(tmp_path: Path, fake_script: Path) -> None:
    """vLLM's engine core outlives a SIGKILLed API server: reap() kills what is left."""
    child_file = tmp_path / "child.pid"
    server = _server(tmp_path, fake_script, FAKE_VLLM_CHILD=str(child_file))
    server.start()
    await server.wait_ready(30)
    child = int(child_file.read_text())
    os.kill(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server.alive and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert server.returncode == -signal.SIGKILL
    assert psutil.Process(server.pid).status() == psutil.STATUS_ZOMBIE  # not reaped: the group id stays ours
    assert _alive(child)  # orphaned, still in the group
    server.reap()
    assert _wait_gone(child)
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).ppid() != os.getpid()


def test_server_dies_with_its_owner_even_on_sigkill(tmp_path: Path, fake_script: Path) -> None:
    """Parent-death signal: SIGKILL the process that started the server; the server goes."""
    pid_file = tmp_path / "server.pid"
    owner = textwrap.dedent(f"""
        import asyncio, os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from pathlib import Path
        from modelium.runtimes.vllm.server import VllmServer
        port = {_port()}
        server = VllmServer("m", [sys.executable, {str(fake_script)!r}, "--port", str(port)], dict(os.environ),
                            Path({str(tmp_path / "owner.log")!r}), port)
        server.start()
        asyncio.run(server.wait_ready(30))
        Path({str(pid_file)!r}).write_text(str(server.pid))
        import time; time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", owner])
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        server_pid = int(pid_file.read_text())
        assert _alive(server_pid)
        process.kill()
        process.wait()
        assert _wait_gone(server_pid), "the server outlived its SIGKILLed owner"
    finally:
        process.kill()
        process.wait()


async def test_park_and_wake(tmp_path: Path, fake_script: Path) -> None:
    async with httpx.AsyncClient() as client:
        server = _server(tmp_path, fake_script, client=client, VLLM_SERVER_DEV_MODE="1",
                         FAKE_VLLM_RECORD=str(tmp_path / "requests.jsonl"))
        server.start()
        try:
            await server.wait_ready(30)
            assert await server.park() >= 0
            assert server.parked and await server.is_sleeping()
            assert await server.wake() >= 0
            assert not server.parked and not await server.is_sleeping()
        finally:
            server.stop()
    calls = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert [(c["path"], c["query"]) for c in calls] == [("/sleep", "level=1"), ("/wake_up", "")]


async def test_park_without_sleep_mode_says_how_to_enable_it(tmp_path: Path, fake_script: Path) -> None:
    server = _server(tmp_path, fake_script)  # no VLLM_SERVER_DEV_MODE: /sleep is a 404
    server.start()
    try:
        await server.wait_ready(30)
        with pytest.raises(RuntimeError, match="404.*enable-sleep-mode"):
            await server.park()
    finally:
        server.stop()
    with pytest.raises(RuntimeError, match="not running"):
        await server.wake()


# ---------------------------------------------------------------------- VllmManager (fake vLLM module)


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``python -m vllm.entrypoints.openai.api_server`` runs the fake, in this interpreter."""
    package = tmp_path / "fakepkg"
    module = package / "vllm/entrypoints/openai"
    module.mkdir(parents=True)
    for folder in (package / "vllm", package / "vllm/entrypoints", module):
        (folder / "__init__.py").write_text("")
    (module / "api_server.py").write_text(FAKE_SERVER)
    monkeypatch.setenv("PYTHONPATH", str(package))
    monkeypatch.setenv("MODELIUM_SECRET", "not for vllm")
    return package


def _profile() -> ModelProfile:
    return ModelProfile(
        name="m", path="/m", format="safetensors", architecture="LlamaForCausalLM", model_type="llama",
        task="text-generation", parameters=344_384, weight_bytes=1_377_536, dtype="float32",
        parameters_source="safetensors-header", kv_bytes_per_token=1024, context_length=512,
        hidden_size=64, num_layers=2, vocab_size=2048, has_tokenizer=True,
    )


def _request(name: str, device: Device = CPU, **options) -> LoadRequest:
    memory = MemoryEstimate(0, 0, 0, 0, 1, 1, device.kind)
    return LoadRequest(name=name, model_dir=Path("/models") / name, profile=_profile(), device=device,
                       memory=memory, options=options)


def _manager(tmp_path: Path, device: str = "cpu", **changes) -> VllmManager:
    kwargs = dict(
        python=Path(sys.executable),
        install=VllmInstall(Path(sys.executable), "fake", frozenset({"LlamaForCausalLM"}), device),
        base_port=free_port_range(20, low=40000, high=60000), state_dir=tmp_path / "state",
        default_settings=VllmModelSettings(max_model_len=2048, max_num_seqs=4, kv_cache_bytes=2**26),
        extra_args=["--seed", "1"], startup_timeout_seconds=30,
    )
    kwargs.update(changes)
    return VllmManager(**kwargs)


async def test_manager_load_infer_unload(tmp_path: Path, fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    manager = _manager(tmp_path)
    await manager.start()
    try:
        await manager.load(_request("a"))
        await manager.load(_request("b"))
        await manager.load(_request("a"))  # already running: no-op
        assert await manager.loaded_models() == {"a", "b"}
        port_a, port_b = manager.server_port("a"), manager.server_port("b")
        assert port_a == manager.ports.base_port and port_b == port_a + 1
        assert manager.openai_base_url("a") == f"http://127.0.0.1:{port_a}"
        server = manager._servers["a"]
        cmd = server.command
        assert cmd[cmd.index("--max-model-len") + 1] == "512"  # capped at the model's context
        assert cmd[-2:] == ["--seed", "1"]
        assert "MODELIUM_SECRET" not in psutil.Process(server.pid).environ()
        key_a, key_b = (psutil.Process(manager.server_pid(n)).environ()["VLLM_API_KEY"] for n in ("a", "b"))
        assert key_a != key_b and key_a not in " ".join(cmd)  # one key per server, never on its argv
        assert manager.upstream_headers("a") == {"Authorization": f"Bearer {key_a}"}
        assert manager.upstream_headers("nope") == {}
        async with httpx.AsyncClient(trust_env=False) as client:  # the fake refuses like the guard
            assert (await client.post(f"{manager.openai_base_url('a')}/v1/completions", json={})).status_code == 401
        assert (tmp_path / "state/vllm/logs/a.log").exists()

        assert await manager.infer("a", "hi", {}) == {
            "generated_text": "<hi>", "num_generated_tokens": 64, "finish_reason": "length"}
        out = await manager.infer("a", ["x", "y"], {"max_new_tokens": 1, "return_full_text": True})
        assert out == [{"generated_text": "x<x>", "num_generated_tokens": 1, "finish_reason": "stop"},
                       {"generated_text": "y<y>", "num_generated_tokens": 1, "finish_reason": "stop"}]
        chat = await manager.infer("b", [{"role": "user", "content": "hello"}], {"chat": True, "max_new_tokens": 3})
        assert chat == {"generated_text": "hello", "num_generated_tokens": 3, "finish_reason": "stop"}
        await manager.infer("a", "s", {"temperature": 0.7, "top_p": 0.9})
        await manager.infer("a", "g", {"temperature": 0.7, "do_sample": False})
        bodies = [json.loads(line)["body"] for line in record.read_text().splitlines()]
        assert bodies[0] == {"model": "a", "prompt": "hi", "return_token_ids": True, "max_tokens": 64, "temperature": 0.0}
        assert bodies[1]["prompt"] == ["x", "y"]
        assert bodies[2]["messages"] == [{"role": "user", "content": "hello"}]
        assert (bodies[3]["temperature"], bodies[3]["top_p"]) == (0.7, 0.9)
        assert bodies[4]["temperature"] == 0.0

        with pytest.raises(BadRequestError, match="unknown parameter.*'top_k'"):
            await manager.infer("a", "x", {"top_k": 3})
        with pytest.raises(BadRequestError, match="max_new_tokens"):
            await manager.infer("a", "x", {"max_new_tokens": 0})
        with pytest.raises(BadRequestError, match="max_tokens=500 is too big"):  # vLLM's 400, its message
            await manager.infer("a", "x", {"max_new_tokens": 500})
        with pytest.raises(BadRequestError, match="inputs"):
            await manager.infer("a", 3, {})
        with pytest.raises(ModelNotLoadedError):
            await manager.infer("nope", "x", {})

        pid_a = server.pid
        await manager.unload("a")
        assert not _alive(pid_a)
        assert await manager.loaded_models() == {"b"}
        assert manager.openai_base_url("a") is None and manager.exit_reason("a") is None
        await manager.unload("a")  # unknown: no-op
        await manager.load(_request("c"))
        assert manager.server_port("c") == port_a  # the freed port is reused
        assert (await manager.health()).ok
    finally:
        pids = [s.pid for s in manager._servers.values()]
        await manager.stop()
    assert pids and not any(_alive(pid) for pid in pids)
    assert manager.ports.allocated == frozenset()


async def test_manager_crash_is_reported_with_the_log_tail(tmp_path: Path, fake_vllm: Path) -> None:
    manager = _manager(tmp_path)
    await manager.start()
    try:
        await manager.load(_request("a"))
        server = manager._servers["a"]
        port = server.port
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with pytest.raises(ModelNotLoadedError, match="exited with code -9"):
            await manager.infer("a", "x", {})
        assert await manager.loaded_models() == set()
        reason = manager.exit_reason("a")
        assert reason.startswith("vLLM server for a exited with code -9; last log lines:")
        assert "fake vllm log line 59" in reason
        assert manager.openai_base_url("a") is None
        assert port not in manager.ports.allocated
        await manager.load(_request("a"))  # a restart clears the reason
        assert manager.exit_reason("a") is None and await manager.loaded_models() == {"a"}
    finally:
        await manager.stop()


async def test_manager_load_failure_cleans_up(tmp_path: Path, fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_MODE", "exit")
    manager = _manager(tmp_path)
    await manager.start()
    try:
        with pytest.raises(RuntimeLoadError, match="exited with code 3(.|\n)*fake start-up failure"):
            await manager.load(_request("a"))
        assert manager.ports.allocated == frozenset()
        assert await manager.loaded_models() == set() and manager.server_port("a") is None
        assert manager.exit_reason("a") is None  # it never was ready: the load error says why
    finally:
        await manager.stop()


async def test_manager_cancelled_load_stops_the_server(tmp_path: Path, fake_vllm: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_DELAY", "30")
    manager = _manager(tmp_path)
    await manager.start()
    try:
        task = asyncio.create_task(manager.load(_request("a")))
        await asyncio.sleep(1)
        pid = manager._servers["a"].pid
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _wait_gone(pid) and manager.ports.allocated == frozenset()
    finally:
        await manager.stop()


async def test_manager_gpu_options_reach_the_command_and_env(tmp_path: Path, fake_vllm: Path) -> None:
    manager = _manager(tmp_path, device="cuda")
    await manager.start()
    try:
        settings = VllmModelSettings(max_model_len=256, park=True)
        await manager.load(_request("g", GPU, vllm=settings, gpu_memory_utilization=0.2345,
                                    kv_cache_bytes=123, gpu_indices=[1]))
        server = manager._servers["g"]
        cmd = server.command
        assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.2345"
        assert "--enable-sleep-mode" in cmd and "--kv-cache-memory-bytes" not in cmd
        env = psutil.Process(server.pid).environ()
        assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["VLLM_SERVER_DEV_MODE"] == "1"
        await manager.park("g")
        assert manager.is_parked("g")
        await manager.wake("g")
        assert not manager.is_parked("g")
        # without options: the share is derived from the device's total
        await manager.load(_request("h", GPU))
        cmd = manager._servers["h"].command
        assert 0 < float(cmd[cmd.index("--gpu-memory-utilization") + 1]) < 0.1
        assert manager._servers["h"].env["CUDA_VISIBLE_DEVICES"] == "1"
        with pytest.raises(RuntimeError, match="park"):
            await manager.park("h")
        with pytest.raises(RuntimeLoadError, match="CUDA build"):
            await manager.load(_request("c", CPU))
    finally:
        await manager.stop()


async def test_cpu_build_refuses_a_gpu_placement(tmp_path: Path, fake_vllm: Path) -> None:
    manager = _manager(tmp_path)
    await manager.start()
    try:
        with pytest.raises(RuntimeLoadError, match="CPU build"):
            await manager.load(_request("g", GPU))
        assert manager.ports.allocated == frozenset()
    finally:
        await manager.stop()


async def test_adopt_kills_strays_of_this_state_dir_only(tmp_path: Path, fake_vllm: Path) -> None:
    """A server left running by an earlier daemon (here: started by a manager we then
    forget) is killed by the next manager's adopt(); another state dir's is not."""
    old = _manager(tmp_path)
    other = _manager(tmp_path / "other")
    await old.start()
    await other.start()
    try:
        await old.load(_request("stray"))
        await other.load(_request("keep"))
        stray_pid, keep_pid = old._servers["stray"].pid, other._servers["keep"].pid
        stray = old._servers.pop("stray")  # "forgotten", as after a daemon restart
        new = _manager(tmp_path)
        try:
            report = await new.adopt({})
            assert report.adopted == () and report.removed == ("stray",)
            assert _wait_gone(stray_pid) and _alive(keep_pid)
        finally:
            await new.stop()
            stray.stop(timeout=1)  # reap it (a no-op kill if adopt did its job)
    finally:
        await other.stop()
        await old.stop()
