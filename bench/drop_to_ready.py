"""Benchmark the whole path: daemon start, drop -> ready, request latency, unload, reload.

Starts `modelium serve` (real private Ray cluster) in a temp directory on free ports,
drops the tiny random-weight models made by examples/make_tiny_models.py, and prints
timings. Nothing here is asserted: numbers go to docs/benchmarks.md.

    .venv/bin/python bench/drop_to_ready.py [--requests 50] [--kind llama --kind bert-classifier]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.make_tiny_models import make_model  # noqa: E402

INPUTS = {"llama": ("hello world", {"max_new_tokens": 8}),
          "gpt2": ("hello world", {"max_new_tokens": 8}),
          "bert-classifier": ("a fine film", {}),
          "bert-embedder": ("a fine film", {}),
          "bert-mlm": ("a [MASK] film", {})}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(predicate, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            if predicate():
                return time.perf_counter() - start
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError


def state(url: str, name: str) -> str | None:
    response = requests.get(f"{url}/models/{name}", timeout=5)
    return response.json()["state"] if response.ok else None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--kind", action="append")
    args = parser.parse_args()
    kinds = args.kind or ["llama", "bert-classifier"]
    home = Path(tempfile.mkdtemp(prefix="modelium-bench-"))
    made = {kind: make_model(kind, home / "made" / kind) for kind in kinds}
    port = free_port()
    (home / "modelium.yaml").write_text(yaml.safe_dump({
        "log_format": "text",
        "gateway": {"port": port},
        "ray": {"http_port": free_port(), "gcs_port": free_port()},
        "metrics": {"port": None},
        "discovery": {"settle_seconds": 0.5, "rescan_interval_seconds": 1.0},
    }))
    url = f"http://127.0.0.1:{port}"
    log = (home / "daemon.log").open("wb")
    started = time.perf_counter()
    daemon = subprocess.Popen([sys.executable, "-m", "modelium", "serve", "--config",
                               str(home / "modelium.yaml")], stdout=log, stderr=subprocess.STDOUT)
    rows: list[tuple[str, str]] = []
    try:
        wait(lambda: requests.get(f"{url}/health", timeout=2).ok, 300)
        rows.append(("daemon start -> /health 200", f"{time.perf_counter() - started:.2f} s"))
        for kind in kinds:
            name = f"bench-{kind}"
            dropped = time.perf_counter()
            shutil.copytree(made[kind], home / "models/incoming" / name)
            wait(lambda: state(url, name) == "ready", 300)
            rows.append((f"{kind}: drop -> ready (incl. 0.5 s settle)", f"{time.perf_counter() - dropped:.2f} s"))
            inputs, parameters = INPUTS[kind]
            latencies = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                response = requests.post(f"{url}/predict/{name}",
                                         json={"inputs": inputs, "parameters": parameters}, timeout=120)
                response.raise_for_status()
                latencies.append((time.perf_counter() - t0) * 1000)
            latencies.sort()
            rows.append((f"{kind}: request latency p50 / p95 (n={len(latencies)})",
                         f"{statistics.median(latencies):.1f} / {latencies[int(0.95 * (len(latencies) - 1))]:.1f} ms"))
            t0 = time.perf_counter()
            requests.post(f"{url}/models/{name}/unload", timeout=120).raise_for_status()
            rows.append((f"{kind}: unload", f"{time.perf_counter() - t0:.2f} s"))
            t0 = time.perf_counter()
            requests.post(f"{url}/predict/{name}", json={"inputs": inputs, "parameters": parameters},
                          timeout=300).raise_for_status()
            rows.append((f"{kind}: first request after unload (on-demand load)", f"{time.perf_counter() - t0:.2f} s"))
    finally:
        t0 = time.perf_counter()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(180)
        rows.append(("SIGTERM -> exit", f"{time.perf_counter() - t0:.2f} s (exit {code})"))
        log.close()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
