"""RayServeManager against a real private Ray cluster (no fakes).

One cluster serves the whole module (start ~20 s on 2 cores; each transformers replica
~15 s to import torch and load), so the tests run in file order and share state:
load -> callers without the cluster's token refused -> predict -> bad request -> corrupt load -> unload -> adopt (second driver, then in
process) -> stop (no orphans) -> restart, SIGKILL of ``ray start`` itself (orphans found by
session and killed). The last test SIGKILLs a process that owns its own cluster and checks
the parent-death signal takes the whole cluster down.

Timings are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio

from examples.make_tiny_models import make_model
from modelium.analysis import analyze_folder, estimate_memory
from modelium.hardware.devices import Device
from modelium.runtimes.base import LoadRequest, ModelNotLoadedError, RuntimeLoadError, RuntimeUnavailableError
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.ray_serve import RayServeManager, folder_signature
from modelium.runtimes.ray_serve.deployment import ModelReplica
from modelium.runtimes.process import free_ports
from tests.e2e.processes import alive as _alive

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU = Device(id="cpu", kind="cpu", index=None, total_bytes=8 << 30, name="host RAM")
TIMINGS: dict[str, float] = {}


def _timed(label: str, started: float) -> None:
    TIMINGS[label] = round(time.monotonic() - started, 2)
    print(f"[timing] {label}: {TIMINGS[label]:.2f}s")


def _request(name: str, path: Path, **options: Any) -> LoadRequest:
    profile = analyze_folder(path, name)
    return LoadRequest(
        name=name,
        model_dir=path,
        profile=profile,
        device=CPU,
        memory=estimate_memory(profile, device_kind="cpu"),
        options=options,
    )


def _short_temp_dir(tag: str) -> Path:
    """pytest's tmp paths are too long for Ray's unix sockets (< 108 bytes)."""
    return Path("/tmp") / f"mdl-{tag}-{os.getpid()}"


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _session_members(session_id: int) -> list[int]:
    """Processes in the session ``ray start`` led (orphans re-parented to init stay in it)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session_id and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return members


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray-models")
    return {kind: make_model(kind, root / kind) for kind in ("llama", "bert-classifier")}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def manager(model_dirs: dict[str, Path]) -> AsyncIterator[RayServeManager]:
    gcs_port, http_port = free_ports(2)
    temp_dir = _short_temp_dir("ray")
    mgr = RayServeManager(http_port=http_port, gcs_port=gcs_port, temp_dir=temp_dir,
                          start_timeout_seconds=120, load_timeout_seconds=180)
    started = time.monotonic()
    await mgr.start()
    _timed("start private cluster + serve", started)
    try:
        started = time.monotonic()
        # Two loads at once: different models may load concurrently in the orchestrator.
        await asyncio.gather(
            mgr.load(_request("llama", model_dirs["llama"])),
            mgr.load(_request("bert", model_dirs["bert-classifier"])),
        )
        _timed("load llama + bert (concurrently)", started)
        yield mgr
    finally:
        await mgr.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


async def test_start_is_private_and_healthy(manager: RayServeManager) -> None:
    health = await manager.health()
    assert health.ok, health.detail
    assert f"private Ray cluster at 127.0.0.1:{manager.gcs_port}" in health.detail
    assert manager.cluster is not None and manager.cluster.is_running()
    await manager.start()  # idempotent
    # Every socket the cluster listens on is on loopback.
    exposed = []
    processes = [psutil.Process(manager.cluster.pid), *manager.cluster.descendants()]
    assert sum("ServeReplica" in p.name() for p in processes) == 2  # the replicas are checked too
    for proc in processes:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and not _is_loopback(conn.laddr.ip):
                    exposed.append((proc.pid, proc.name(), conn.laddr))
        except psutil.NoSuchProcess:
            continue
    assert not exposed, f"Ray listens beyond loopback: {exposed}"


_STRANGER = textwrap.dedent(
    """
    import os, sys, ray
    try:
        if sys.argv[1].startswith("ray://"):
            ray.init(sys.argv[1])
        else:
            ray.init(address=sys.argv[1], log_to_driver=False)
        print("CONNECTED", ray.get(ray.remote(lambda: os.getpid()).remote()))
    except Exception as exc:  # what a local user without the token gets
        print("REFUSED", type(exc).__name__, " ".join(str(exc).split())[:1500])
    """
)


def _stranger(address: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", _STRANGER, address], env=env, capture_output=True, text=True,
                          timeout=150)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("CONNECTED", "REFUSED"))]
    return lines[-1] if lines else f"no answer: {proc.stderr[-2000:]}"


#: What Ray's client proxier answers when the server it forked for a client dies at start-up.
_RAY_CLIENT_START_FAILED = "Starting Ray client server failed"


def _client_server_logs(cluster: Any) -> str:
    """The tail of Ray Client's proxier and per-client server logs, for a failure message."""
    tails = []
    for log in sorted((cluster.temp_dir / "session_latest" / "logs").glob("ray_client_server*.err")):
        tails.append(f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(tails)


def _grpc_status(port: int, call: str, token: str | None) -> str:
    """A raw gRPC call to the GCS ("gcs") or the raylet ("raylet"), as any local process could make."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc, node_manager_pb2, node_manager_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            if call == "gcs":
                gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetAllNodeInfo(
                    gcs_service_pb2.GetAllNodeInfoRequest(), metadata=metadata, timeout=10)
            else:
                node_manager_pb2_grpc.NodeManagerServiceStub(channel).GetNodeStats(
                    node_manager_pb2.GetNodeStatsRequest(), metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name
    return "OK"


async def test_the_cluster_refuses_callers_without_its_token(manager: RayServeManager, tmp_path: Path) -> None:
    """Token authentication (Ray 2.60): the private cluster's token is in environments only,
    and Ray's gRPC servers, drivers, Ray Client and the agents' HTTP APIs refuse anyone
    without it. What stays open: read-only metrics ports, and Serve's HTTP proxy, which
    cannot run a Modelium model (its replicas have no ``__call__``)."""
    cluster = manager.cluster
    assert cluster is not None
    token = cluster.auth_token
    assert len(token) == 64
    processes = [psutil.Process(cluster.pid), *cluster.descendants()]
    assert not [p.pid for p in processes if token in " ".join(p.cmdline())]  # never on a command line
    env = psutil.Process(cluster.pid).environ()
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == token
    assert os.environ["RAY_AUTH_TOKEN"] == token  # the driver's, while it is connected
    token_file = Path.home() / ".ray" / "auth_token"
    assert not token_file.exists() or token not in token_file.read_text()  # never written to disk

    for port, call in ((manager.gcs_port, "gcs"), (cluster.ports["node_manager"], "raylet")):
        assert await asyncio.to_thread(_grpc_status, port, call, None) == "UNAUTHENTICATED"
        assert await asyncio.to_thread(_grpc_status, port, call, "0" * 64) == "UNAUTHENTICATED"
        assert await asyncio.to_thread(_grpc_status, port, call, token) == "OK"

    # A local user's driver and Ray Client, without the token (and no ~/.ray/auth_token): refused.
    stranger = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    stranger["HOME"] = str(tmp_path)
    client = f"ray://127.0.0.1:{cluster.ports['ray_client_server']}"
    started = time.monotonic()
    answers = await asyncio.gather(
        asyncio.to_thread(_stranger, manager.gcs_address, stranger),
        asyncio.to_thread(_stranger, client, stranger),
    )
    _timed("strangers refused (driver, Ray Client)", started)
    assert answers[0].startswith("REFUSED"), answers[0]
    assert answers[1].startswith("REFUSED"), answers[1]
    assert "Authentication required" in _client_server_logs(cluster)  # the proxier's reason

    # The same Ray Client call with the token works. Ray's client proxier forks a server
    # process per client; about one start in three here dies at once (the proxier forks
    # while its gRPC threads run: "skipping fork() handlers", an empty server log) and the
    # proxier then waits 30 s for a channel. That is Ray's start-up failing, not
    # authentication, so that failure alone is tried again (twice at most).
    started = time.monotonic()
    with_token = {**stranger, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    answer = await asyncio.to_thread(_stranger, client, with_token)
    for _ in range(2):
        if not (answer.startswith("REFUSED") and _RAY_CLIENT_START_FAILED in answer):
            break
        print(f"[ray client] Ray's per-client server did not start, trying again: {answer[-200:]}")
        answer = await asyncio.to_thread(_stranger, client, with_token)
    _timed("Ray Client with the token", started)
    assert answer.startswith("CONNECTED"), f"{answer}\n{_client_server_logs(cluster)}"

    import httpx

    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        for name in ("dashboard_agent_listen", "runtime_env_agent"):  # agents' HTTP APIs (the job agent...)
            answer = await http.post(f"http://127.0.0.1:{cluster.ports[name]}/api/job_agent/jobs/", json={})
            assert answer.status_code == 401 and "authentication token" in answer.text, name
        assert (await http.get(f"http://127.0.0.1:{cluster.ports['metrics_export']}/metrics")).status_code == 200
        # Serve's HTTP proxy has no authentication, but there is nothing behind it to call.
        assert not callable(object.__new__(ModelReplica))
        answer = await http.post(f"http://127.0.0.1:{manager.http_port}/llama", json={"inputs": "hi"})
        assert answer.status_code == 500
    # No dashboard, hence no Jobs API: nothing of the cluster listens on Ray's dashboard port.
    listening = {c.laddr.port for p in processes if p.is_running()
                 for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert 8265 not in listening


async def test_predict_text_generation_and_classification(manager: RayServeManager) -> None:
    assert await manager.loaded_models() == {"llama", "bert"}
    started = time.monotonic()
    out = await manager.infer("llama", "hello world", {"max_new_tokens": 4})
    _timed("first llama request", started)
    assert set(out) == {"generated_text", "num_generated_tokens", "finish_reason"}
    assert out["num_generated_tokens"] == 4 and out["finish_reason"] == "length"
    assert isinstance(out["generated_text"], str)

    batch = await manager.infer("bert", ["a great movie", "terrible plot"], {"top_k": 2})
    assert len(batch) == 2
    for ranking in batch:
        assert len(ranking) == 2
        assert {r["label"] for r in ranking} <= {"NEGATIVE", "NEUTRAL", "POSITIVE"}
        assert ranking[0]["score"] >= ranking[1]["score"]
    single = await manager.infer("bert", "hello", {})
    assert len(single) == 1 and 0.0 <= single[0]["score"] <= 1.0

    # Concurrent requests through the cached handles.
    results = await asyncio.gather(*(manager.infer("llama", f"q {i}", {"max_new_tokens": 2}) for i in range(8)))
    assert all(r["num_generated_tokens"] == 2 for r in results)


async def test_the_gateway_s_request_id_reaches_the_replica_s_log(manager: RayServeManager) -> None:
    from modelium.logs import request_id_var

    request_id = f"ray-e2e-{uuid.uuid4().hex[:12]}"
    token = request_id_var.set(request_id)
    try:
        await manager.infer("bert", "hello", {})
    finally:
        request_id_var.reset(token)
    assert manager.temp_dir is not None
    pattern = "session_*/logs/serve/replica_*"

    def tagged() -> list[Path]:
        return [p for p in manager.temp_dir.glob(pattern) if request_id in p.read_text(errors="replace")]

    deadline = time.monotonic() + 15  # Serve writes its log lines asynchronously
    while not tagged() and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert tagged(), f"{request_id} in none of {sorted(p.name for p in manager.temp_dir.glob(pattern))}"


async def test_bad_parameter_is_a_bad_request(manager: RayServeManager) -> None:
    with pytest.raises(BadRequestError) as caught:
        await manager.infer("llama", "hi", {"max_new_tokens": -1})
    assert type(caught.value) is BadRequestError  # re-raised, not Ray's wrapper class
    assert "max_new_tokens" in caught.value.message and "Traceback" not in caught.value.message
    with pytest.raises(BadRequestError, match="unknown parameter"):
        await manager.infer("bert", "hi", {"temperature": 0.5})
    with pytest.raises(BadRequestError, match="inputs must be"):
        await manager.infer("bert", 42, {})
    assert (await manager.infer("llama", "still alive", {"max_new_tokens": 1}))["num_generated_tokens"] == 1


async def test_corrupt_weights_fail_the_load_with_a_reason(manager: RayServeManager, model_dirs: dict[str, Path],
                                                           tmp_path: Path) -> None:
    broken = shutil.copytree(model_dirs["llama"], tmp_path / "broken")
    request = _request("broken", broken)  # analysed while intact: the replica must catch it
    with open(broken / "model.safetensors", "r+b") as weights:
        weights.truncate(1000)
    started = time.monotonic()
    with pytest.raises(RuntimeLoadError) as caught:
        await manager.load(request)
    _timed("failed load (corrupt safetensors)", started)
    message = str(caught.value)
    print(f"[corrupt] {message}")
    assert "broken" in message and "safetensors" in message.lower()
    assert len(message) < 500  # the reason, not a traceback
    assert await manager.loaded_models() == {"llama", "bert"}
    status = await asyncio.to_thread(manager._serve.status)
    assert "broken" not in status.applications  # cleaned up
    assert (await manager.infer("bert", "other models keep serving", {}))[0]["label"]


async def test_unload(manager: RayServeManager) -> None:
    started = time.monotonic()
    await manager.unload("bert")
    _timed("unload (serve.delete)", started)
    assert await manager.loaded_models() == {"llama"}
    with pytest.raises(ModelNotLoadedError):
        await manager.infer("bert", "hello", {})
    with pytest.raises(ModelNotLoadedError):
        await manager.infer("never-loaded", "hello", {})
    await manager.unload("bert")  # unknown now: no-op
    await manager.unload("never-loaded")


async def test_instance_key_with_two_replicas_and_their_pids(manager: RayServeManager,
                                                           model_dirs: dict[str, Path]) -> None:
    """A re-dropped version's instance key (NAME.REVn) is an app name and route prefix like
    any other; process_ids finds every replica's own process, and only that."""
    started = time.monotonic()
    await manager.load(_request("bert.REV2", model_dirs["bert-classifier"], num_replicas=2))
    _timed("load bert.REV2 (2 replicas)", started)
    assert await manager.loaded_models() == {"llama", "bert.REV2"}
    assert (await manager.infer("bert.REV2", "hello", {}))[0]["label"]
    status = await asyncio.to_thread(manager._serve.status)
    assert status.applications["bert.REV2"].deployments["modelium-bert.REV2"].replica_states == {"RUNNING": 2}
    started = time.monotonic()
    pids = await manager.process_ids("bert.REV2")
    _timed("process_ids (2 replicas)", started)
    llama_pids = await manager.process_ids("llama")
    assert len(pids) == 2 and len(llama_pids) == 1 and not set(pids) & set(llama_pids)
    assert manager.cluster is not None
    under_cluster = {p.pid for p in manager.cluster.descendants()}
    for pid in pids + llama_pids:
        assert pid in under_cluster and "ServeReplica" in psutil.Process(pid).name()
    await manager.unload("bert.REV2")
    assert await manager.loaded_models() == {"llama"}
    assert await manager.process_ids("bert.REV2") == []


_JOINER = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from modelium.runtimes.ray_serve import RayServeManager

    async def main(address, known):
        mgr = RayServeManager(address=address)
        await mgr.start()
        report = await mgr.adopt({k: Path(v) for k, v in known.items()})
        out = await mgr.infer("llama", "adopted", {"max_new_tokens": 3})
        result = {"adopted": report.adopted, "removed": report.removed, "output": out,
                  "loaded": sorted(await mgr.loaded_models()),
                  "health": (await mgr.health()).detail}
        await mgr.stop()  # joined: deletes what it adopted, leaves the cluster running
        print("RESULT " + json.dumps(result))

    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
    """
)


def _deploy_leftovers(serve: Any, stale_dir: Path) -> None:
    """Apps a crashed earlier run (or someone else) left on the cluster. Defined inside a
    function so Ray pickles the classes by value (no torch import in these replicas)."""

    class Ghost:  # looks like ours: deployment "modelium-ghost", fingerprint of an old folder state
        def fingerprint(self) -> dict[str, Any]:
            return {"version": 1, "model_dir": str(stale_dir.resolve()), "signature": "stale"}

    class Foreign:  # not ours: must be left alone
        def __call__(self) -> str:
            return "foreign"

    opts = {"ray_actor_options": {"num_cpus": 0}, "graceful_shutdown_wait_loop_s": 0.3}
    serve.run(serve.deployment(Ghost).options(name="modelium-ghost", **opts).bind(),
              name="ghost", route_prefix="/ghost")
    serve.run(serve.deployment(Foreign).options(name="foreign-dep", **opts).bind(),
              name="foreign", route_prefix="/foreign")


async def test_adopt_from_a_second_driver(manager: RayServeManager, model_dirs: dict[str, Path]) -> None:
    """A fresh process (as after a daemon restart) joins the cluster by address: it keeps
    the app matching the repository, removes the stale one of ours, leaves others alone."""
    serve = manager._serve
    await asyncio.to_thread(_deploy_leftovers, serve, model_dirs["bert-classifier"])
    assert await manager.loaded_models() == {"llama", "ghost"}  # ghost looks like ours

    known = {"llama": str(model_dirs["llama"]), "ghost": str(model_dirs["bert-classifier"])}
    started = time.monotonic()
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _JOINER, manager.gcs_address, json.dumps(known)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
    )
    _timed("second driver: join + adopt + infer + stop", started)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"joiner failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["adopted"] == ["llama"]
    assert result["removed"] == ["ghost"]
    assert result["loaded"] == ["llama"]
    assert result["output"]["num_generated_tokens"] == 3
    assert result["health"].startswith(f"Ray cluster at {manager.gcs_address}")

    # The joined manager's stop() deleted the app it adopted, and only that.
    status = await asyncio.to_thread(serve.status)
    assert set(status.applications) == {"foreign"}
    assert status.applications["foreign"].status == "RUNNING"
    assert (await manager.health()).ok  # the private cluster was not touched
    assert await manager.loaded_models() == set()
    with pytest.raises(ModelNotLoadedError):
        await manager.infer("llama", "gone", {})


async def test_adopt_in_process_keeps_matching_and_removes_unknown(manager: RayServeManager,
                                                                    model_dirs: dict[str, Path]) -> None:
    await manager.load(_request("bert", model_dirs["bert-classifier"]))
    report = await manager.adopt({"bert": model_dirs["bert-classifier"]})
    assert report.adopted == ("bert",) and report.removed == ()
    # The folder changes (a re-drop): the running app no longer matches it.
    touched = model_dirs["bert-classifier"] / "config.json"
    before = folder_signature(model_dirs["bert-classifier"])
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    assert folder_signature(model_dirs["bert-classifier"]) != before
    report = await manager.adopt({"bert": model_dirs["bert-classifier"]})
    assert report.adopted == () and report.removed == ("bert",)
    assert await manager.loaded_models() == set()


async def test_stop_leaves_no_process_behind(manager: RayServeManager) -> None:
    cluster = manager.cluster
    assert cluster is not None
    session_id = cluster.pid
    token = cluster.auth_token
    recorded = [cluster.pid, *(p.pid for p in cluster.descendants())]
    names = sorted({psutil.Process(pid).name() for pid in _alive(recorded)})
    print(f"[stop] {len(recorded)} processes under ray start: {names}")
    assert len(recorded) >= 6  # ray start, gcs_server, raylet, agents, Serve controller/proxy...
    started = time.monotonic()
    await manager.stop()
    _timed("stop (delete apps, serve.shutdown, ray.shutdown, cluster)", started)
    deadline = time.monotonic() + 10
    while _alive(recorded) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert _alive(recorded) == [], "processes survived stop()"
    assert _session_members(session_id) == []
    assert _processes_mentioning(str(cluster.temp_dir)) == []
    assert os.environ.get("RAY_AUTH_TOKEN") != token  # the driver forgot the token with the cluster
    assert not (await manager.health()).ok
    await manager.stop()  # idempotent


async def test_cluster_crash_is_reported_and_stop_cleans_up_orphans(manager: RayServeManager) -> None:
    """``ray start`` itself SIGKILLed: its agents survive, re-parented to init; the manager
    reports the runtime down (without the Ray driver taking the daemon with it) and
    stop() still finds and kills every leftover by session."""
    started = time.monotonic()
    await manager.start()  # a fresh private cluster after stop()
    _timed("restart private cluster + serve", started)
    cluster = manager.cluster
    assert cluster is not None and (await manager.health()).ok
    session_id = cluster.pid
    recorded = [cluster.pid, *(p.pid for p in cluster.descendants())]
    os.kill(cluster.pid, signal.SIGKILL)
    await asyncio.sleep(2)
    orphans = [pid for pid in _alive(recorded) if pid != session_id]
    print(f"[crash] alive 2 s after SIGKILL of ray start: "
          f"{[(pid, psutil.Process(pid).name(), psutil.Process(pid).ppid()) for pid in orphans]}")
    health = await manager.health()
    assert not health.ok and "exited" in health.detail
    assert await manager.loaded_models() == set()
    with pytest.raises(RuntimeUnavailableError):
        await manager.infer("llama", "hi", {})
    started = time.monotonic()
    await manager.stop()
    _timed("stop after cluster crash", started)
    assert _alive(recorded) == [] and _session_members(session_id) == []
    print(f"[timings] {json.dumps(TIMINGS)}")


_OWNER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from modelium.runtimes.ray_serve import RayServeManager

    async def main():
        mgr = RayServeManager(gcs_port=int(sys.argv[1]), http_port=int(sys.argv[2]), temp_dir=Path(sys.argv[3]))
        await mgr.start()
        print("READY", mgr.cluster.pid, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


async def test_sigkill_of_the_owner_takes_the_cluster_down(tmp_path: Path) -> None:
    gcs_port, http_port = free_ports(2)
    temp_dir = _short_temp_dir("kill")
    stderr_path = tmp_path / "owner.stderr"
    with stderr_path.open("w") as stderr:
        owner = subprocess.Popen(
            [sys.executable, "-c", _OWNER, str(gcs_port), str(http_port), str(temp_dir)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
    recorded: list[int] = []
    try:
        started = time.monotonic()
        line = await asyncio.wait_for(asyncio.to_thread(owner.stdout.readline), 180)
        assert line.startswith("READY"), f"owner did not start: {line!r}\n{stderr_path.read_text()[-3000:]}"
        _timed("owner subprocess: import + start cluster + serve", started)
        session_id = int(line.split()[1])  # ray start leads its own session
        recorded = [p.pid for p in psutil.Process(owner.pid).children(recursive=True)]
        assert session_id in recorded and len(recorded) >= 6
        assert set(recorded) - {session_id} <= set(_session_members(session_id))
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        started = time.monotonic()
        while _alive(recorded) and time.monotonic() - started < 30:
            await asyncio.sleep(0.2)
        _timed("cluster gone after SIGKILL of its owner", started)
        assert _alive(recorded) == [], "Ray processes outlived their SIGKILLed owner"
        assert _session_members(session_id) == []
        assert _processes_mentioning(str(temp_dir)) == []
    finally:
        if owner.poll() is None:
            owner.kill()
        for pid in _alive(recorded):  # never leave a cluster running after a failure
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)
    print(f"[timings] {json.dumps(TIMINGS)}")
