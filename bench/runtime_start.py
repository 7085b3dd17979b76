"""Cold-start overhead of Modelium's runtime managers against the same runtime driven by hand.

vLLM: the same CPU server command (``build_command``/``build_env``, the tiny Llama from
examples/make_tiny_models.py, offline) started by hand (``Popen``, the port polled every
10 ms with a bare connect, then ``/health``, then one ``/v1/completions``) and through ``VllmManager.load`` + first ``infer``.
Triton: on one running tritonserver, a tiny python model loaded by hand (``POST
/v2/repository/models/X/load`` + first infer, the entry already in the repository) and
through ``TritonManager.load`` (which writes the entry) + first ``infer``. Runs alternate
(hand then manager, manager then hand, ...) after one discarded warm-up of each, so cache
warm-up and machine noise fall on both sides; medians and their difference are printed. Nothing is
asserted: numbers go to docs/benchmarks.md.

    .venv/bin/python bench/runtime_start.py [--runs 3] [--only vllm|triton]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from examples.make_tiny_models import make_model  # noqa: E402
from modelium.analysis import analyze_folder  # noqa: E402
from modelium.analysis.profile import MemoryEstimate  # noqa: E402
from modelium.config.settings import VllmModelSettings  # noqa: E402
from modelium.hardware.devices import Device  # noqa: E402
from modelium.runtimes.base import LoadRequest  # noqa: E402
from modelium.runtimes.process import free_ports, port_accepts  # noqa: E402

CPU = Device(id="cpu", kind="cpu", index=None, total_bytes=16 << 30, name="host RAM")
SETTINGS = VllmModelSettings(max_model_len=256, max_num_seqs=4, kv_cache_bytes=64 * 2**20)
HAND_POLL = 0.01
PROMPT = "the model server"

TRITON_CONFIG = '''name: "NAME"
backend: "python"
max_batch_size: 0
input [ { name: "X", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
'''
TRITON_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() + 1)]) for r in requests]
'''


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _report(title: str, steps: tuple[str, ...], hand: list[dict[str, float]], manager: list[dict[str, float]]) -> None:
    print(f"\n{title} ({len(hand)} runs each, medians)")
    print(f"  {'step':34s} {'by hand':>10s} {'manager':>10s} {'difference':>11s}")
    for step in steps:
        h, m = _median([r[step] for r in hand]), _median([r[step] for r in manager])
        print(f"  {step:34s} {h:9.3f}s {m:9.3f}s {m - h:+10.3f}s")
    for label, runs in (("by hand", hand), ("manager", manager)):
        print(f"  all {label}: " + "; ".join(", ".join(f"{k} {v:.3f}" for k, v in r.items()) for r in runs))


# ---------------------------------------------------------------------- vLLM


async def _vllm_by_hand(python: Path, model: Path, work: Path) -> dict[str, float]:
    from modelium.runtimes.vllm import build_command, build_env, vllm_memory

    profile = analyze_folder(model, "bench")
    _, _, kv_bytes = vllm_memory(profile, SETTINGS, device_kind="cpu", gpu_total_bytes=None)
    port = free_ports(1)[0]
    command = build_command(python, model, "bench", port, SETTINGS, device_kind="cpu",
                            gpu_memory_utilization=None, kv_cache_bytes=kv_bytes, model_dtype=profile.dtype)
    env = build_env(os.environ, gpu_indices=[], cache_dir=work / "cache", enable_sleep_mode=False)
    url = f"http://127.0.0.1:{port}"
    with (work / "by-hand.log").open("ab") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=work)  # the manager runs its servers outside the repo too
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=300) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"vLLM exited with {process.returncode}; see {work / 'by-hand.log'}")
                try:  # a bare connect first: an HTTP client's failed try costs ~1.3 ms of CPU
                    if await port_accepts(port) and (await client.get(f"{url}/health", timeout=2)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(HAND_POLL)
            health = time.perf_counter() - started
            response = await client.post(f"{url}/v1/completions", json={
                "model": "bench", "prompt": PROMPT, "max_tokens": 8, "temperature": 0.0})
            response.raise_for_status()
            first = time.perf_counter() - started
    finally:
        _stop_group(process)
    return {"start -> /health 200": health, "start -> first completion": first}


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's group and wait until the whole group is gone (its engine core
    too), as VllmManager.unload does, so no run starts beside a dying server."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    process.wait()


async def _vllm_manager(manager, model: Path, run: int) -> dict[str, float]:  # noqa: ANN001
    from modelium.runtimes.vllm import vllm_memory

    profile = analyze_folder(model, "bench")
    memory, _, kv_bytes = vllm_memory(profile, SETTINGS, device_kind="cpu", gpu_total_bytes=None)
    request = LoadRequest(name=f"bench.REV{run}", served_name="bench", model_dir=model, profile=profile, device=CPU,
                          memory=memory, options={"vllm": SETTINGS, "kv_cache_bytes": kv_bytes, "gpu_indices": []})
    started = time.perf_counter()
    await manager.load(request)
    health = time.perf_counter() - started
    spawn_to_ready = manager._servers[request.name].ready_seconds or 0.0
    await manager.infer(request.name, PROMPT, {"max_new_tokens": 8})
    first = time.perf_counter() - started
    await manager.unload(request.name)
    # the manager's own share of load(): everything but the server's spawn -> ready
    return {"start -> /health 200": health, "start -> first completion": first,
            "load outside spawn -> ready": health - spawn_to_ready}


async def bench_vllm(runs: int, work: Path) -> None:
    from modelium.runtimes.ray_serve.cluster import free_port_range
    from modelium.runtimes.vllm import VllmManager, probe, resolve_python

    python = resolve_python("auto", ROOT)
    if python is None:
        print("vLLM: .venvs/vllm is missing (make vllm); skipped")
        return
    model = make_model("llama", work / "models" / "llama")
    install = probe(python, state_dir=work / "state")
    assert install is not None, "the vLLM venv does not import"
    manager = VllmManager(python=python, install=install, base_port=free_port_range(10, low=42000, high=60000),
                          state_dir=work / "state", default_settings=SETTINGS, extra_args=[],
                          startup_timeout_seconds=300)
    await manager.start()
    hand: list[dict[str, float]] = []
    managed: list[dict[str, float]] = []
    try:
        print("vLLM warm-up:", await _vllm_by_hand(python, model, work), await _vllm_manager(manager, model, 0))
        for run in range(1, runs + 1):  # who goes first alternates too
            if run % 2:
                hand.append(await _vllm_by_hand(python, model, work))
                managed.append(await _vllm_manager(manager, model, run))
            else:
                managed.append(await _vllm_manager(manager, model, run))
                hand.append(await _vllm_by_hand(python, model, work))
            print(f"vLLM run {run}: by hand {hand[-1]}, manager {managed[-1]}", flush=True)
    finally:
        await manager.stop()
    _report("vLLM CPU server, tiny Llama", ("start -> /health 200", "start -> first completion"), hand, managed)
    print(f"  manager's own share of load() (all but spawn -> ready), median: "
          f"{_median([r['load outside spawn -> ready'] for r in managed]) * 1000:.1f} ms")


# ---------------------------------------------------------------------- Triton


def _triton_folder(root: Path, name: str) -> Path:
    folder = root / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(TRITON_CONFIG.replace("NAME", name))
    (folder / "1" / "model.py").write_text(TRITON_MODEL)
    return folder


async def bench_triton(runs: int, work: Path) -> None:
    from modelium.runtimes.triton import TritonManager, locate_tritonserver

    install = locate_tritonserver("modelium-no-such-tritonserver", ROOT)
    if install is None:
        print("Triton: .venvs/triton is missing (make triton); skipped")
        return
    manager = TritonManager(install=install, state_dir=work / "triton-state", endpoint=None,
                            startup_timeout_seconds=60)
    await manager.start()
    body = {"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    hand: list[dict[str, float]] = []
    managed: list[dict[str, float]] = []
    try:
        async with httpx.AsyncClient(base_url=manager.base_url, trust_env=False, timeout=120) as client:
            async def by_hand(name: str) -> dict[str, float]:
                _triton_folder(manager.repository, name)  # the entry is in place beforehand
                started = time.perf_counter()
                (await client.post(f"/v2/repository/models/{name}/load", json={})).raise_for_status()
                loaded = time.perf_counter() - started
                (await client.post(f"/v2/models/{name}/infer", json=body)).raise_for_status()
                first = time.perf_counter() - started
                await client.post(f"/v2/repository/models/{name}/unload", json={})
                await manager._require_client().wait_unavailable(name, 30)
                return {"load": loaded, "load + first infer": first}

            async def managed_run(name: str) -> dict[str, float]:
                folder = _triton_folder(work / "triton-drops", name)
                request = LoadRequest(name=name, model_dir=folder, profile=analyze_folder(folder, name), device=CPU,
                                      memory=MemoryEstimate(0, 0, 0, 0, 1, 1, "cpu"))
                started = time.perf_counter()
                await manager.load(request)
                loaded = time.perf_counter() - started
                await manager.infer(name, {"X": [1.0]}, {})
                first = time.perf_counter() - started
                await manager.unload(name)
                return {"load": loaded, "load + first infer": first}

            print("Triton warm-up:", await by_hand("hand-0"), await managed_run("mgr-0"))
            for run in range(1, runs + 1):  # who goes first alternates too
                if run % 2:
                    hand.append(await by_hand(f"hand-{run}"))
                    managed.append(await managed_run(f"mgr-{run}"))
                else:
                    managed.append(await managed_run(f"mgr-{run}"))
                    hand.append(await by_hand(f"hand-{run}"))
                print(f"Triton run {run}: by hand {hand[-1]}, manager {managed[-1]}", flush=True)
    finally:
        await manager.stop()
    _report("Triton python model on a running tritonserver", ("load", "load + first infer"), hand, managed)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=("vllm", "triton"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mdl-bench-start-"))
    try:
        if args.only in (None, "triton"):
            await bench_triton(args.runs, work)
        if args.only in (None, "vllm"):
            await bench_vllm(args.runs, work)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
