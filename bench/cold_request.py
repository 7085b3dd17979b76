"""A request for an unloaded model, through the whole daemon, against the runtime alone.

Starts ``modelium serve`` (vLLM CPU and Triton, no Ray) on a temporary folder, drops a
tiny Llama (offline, examples/make_tiny_models.py) and a tiny Triton python model, and
then, alternating, N times each:

* **daemon**: ``POST /models/NAME/unload``, then time one request for it
  (``/v1/completions`` for the Llama, ``/predict`` for the Triton model): admission queue,
  the scheduler's decision, the manager's load, readiness, the request itself;
* **by hand**: the same vLLM command started with ``Popen`` and polled every 10 ms, then
  one completion (bench/runtime_start.py); for Triton, the same model folder put into the
  daemon's own tritonserver repository and loaded + asked with two HTTP calls.

Prints medians and the difference (what Modelium adds). Nothing is asserted; the numbers
go to docs/benchmarks.md.

    .venv/bin/python bench/cold_request.py [--runs 3] [--only vllm|triton]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from examples.make_tiny_models import make_model  # noqa: E402
from modelium.runtimes.process import free_ports  # noqa: E402
from runtime_start import SETTINGS, TRITON_CONFIG, TRITON_MODEL, _vllm_by_hand  # noqa: E402

BODY = {"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1.0]}]}


def _triton_folder(root: Path, name: str) -> Path:
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(TRITON_CONFIG.replace("NAME", name))
    (folder / "1" / "model.py").write_text(TRITON_MODEL)
    return folder


async def _wait(client: httpx.AsyncClient, name: str, state: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get(f"/models/{name}")
        if response.status_code == 200 and response.json()["state"] == state:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{name} not {state} after {timeout}s")


async def _daemon_request(client: httpx.AsyncClient, name: str, vllm: bool) -> float:
    (await client.post(f"/models/{name}/unload", timeout=120)).raise_for_status()
    started = time.perf_counter()
    if vllm:
        response = await client.post("/v1/completions", json={
            "model": name, "prompt": "the model server", "max_tokens": 8, "temperature": 0.0}, timeout=600)
    else:
        response = await client.post(f"/predict/{name}", json={"inputs": {"X": [1.0]}}, timeout=600)
    response.raise_for_status()
    return time.perf_counter() - started


async def _triton_by_hand(triton_url: str, repository: Path, name: str) -> float:
    _triton_folder(repository, name)
    async with httpx.AsyncClient(base_url=triton_url, trust_env=False, timeout=120) as client:
        started = time.perf_counter()
        (await client.post(f"/v2/repository/models/{name}/load", json={})).raise_for_status()
        (await client.post(f"/v2/models/{name}/infer", json=BODY)).raise_for_status()
        seconds = time.perf_counter() - started
        await client.post(f"/v2/repository/models/{name}/unload", json={})
    return seconds


async def run(runs: int, only: str | None, work: Path) -> None:
    gateway, vllm_port = free_ports(2)
    config = {
        "log_format": "text", "incoming_dir": "incoming", "model_repository": "repository",
        "failed_dir": "failed", "state_dir": "state", "gateway": {"port": gateway},
        "ray": {"enabled": False}, "metrics": {"port": None},
        "vllm": {"base_port": vllm_port, "default_settings": SETTINGS.model_dump()},
        "orchestration": {"auto_unload_after_seconds": 0},
        "discovery": {"settle_seconds": 0.2, "rescan_interval_seconds": 0.5},
    }
    (work / "modelium.yaml").write_text(yaml.safe_dump(config))
    log = (work / "daemon.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "modelium", "serve", "--config", str(work / "modelium.yaml")],
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    results: dict[str, dict[str, list[float]]] = {"vllm": {"daemon": [], "by hand": []},
                                                  "triton": {"daemon": [], "by hand": []}}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway}", trust_env=False, timeout=30) as client:
            while True:
                try:
                    health = await client.get("/health")
                    if health.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
            triton_url = health.json()["runtimes"]["triton"]["detail"].split(" at ")[-1].split(";")[0]
            kinds = [k for k in ("triton", "vllm") if only in (None, k)]
            if "vllm" in kinds:
                llama = make_model("llama", work / "made" / "llm")
                shutil.copytree(llama, work / "incoming" / "llm")
            if "triton" in kinds:
                shutil.move(str(_triton_folder(work / "made", "tri")), work / "incoming" / "tri")
            for name, kind in (("llm", "vllm"), ("tri", "triton")):
                if kind in kinds:
                    await _wait(client, name, "ready")
            for index in range(-1, runs):  # run -1: a warm-up of both sides, not counted
                for kind in kinds:
                    async def hand() -> float:
                        if kind == "vllm":
                            return (await _vllm_by_hand(Path(ROOT / ".venvs/vllm/bin/python"),
                                                        work / "made" / "llm", work))["start -> first completion"]
                        return await _triton_by_hand(triton_url, work / "state/triton/models", f"hand{index + 1}")

                    async def through_daemon() -> float:
                        return await _daemon_request(client, "llm" if kind == "vllm" else "tri", kind == "vllm")

                    order = (hand, through_daemon) if index % 2 == 0 else (through_daemon, hand)
                    for step in order:
                        seconds = await step()
                        label = "by hand" if step is hand else "daemon"
                        if index >= 0:
                            results[kind][label].append(seconds)
                        print(f"{kind} run {index + 1 if index >= 0 else 'warm-up'} {label}: {seconds:.3f}s",
                              flush=True)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        log.close()
    for kind, sides in results.items():
        if not sides["daemon"]:
            continue
        d, h = statistics.median(sides["daemon"]), statistics.median(sides["by hand"])
        print(f"\n{kind}: request for an unloaded model through the daemon {d:.3f}s, the runtime "
              f"alone {h:.3f}s (medians of {runs}): Modelium adds {d - h:+.3f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=("vllm", "triton"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mdl-cold-"))
    try:
        asyncio.run(run(args.runs, args.only, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
