"""Latency of the same encoder request over the gateway's routes: /predict (the codec
builds Triton's JSON), /v2 infer with JSON tensors and with binary tensors (both passed to
Triton byte for byte), and /v1/embeddings (adapted, with usage).

Starts `modelium serve` (Triton only, from .venvs/triton) in a temp directory, drops the
tiny random BERT encoder (feature-extraction, Triton's python backend), then sends
``--requests`` sequential requests per route and prints p50 / p99 in milliseconds.
Nothing is asserted: numbers go to docs/benchmarks.md.

    .venv/bin/python bench/kserve_latency.py [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from examples.make_tiny_models import make_model  # noqa: E402
from modelium.gateway.kserve_tensors import encode_bytes_tensor  # noqa: E402
from tests.e2e.daemon_harness import running_daemon, triton_only_config  # noqa: E402

TEXT = "the model server is fast and the queue is short"


def _routes(url: str) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    raw = encode_bytes_tensor([TEXT.encode()])
    head = json.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1],
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "OUTPUT", "parameters": {"binary_data": True}}]}).encode()
    plain = {"content-type": "application/json"}
    return {
        "/predict": (f"{url}/predict/encoder", json.dumps({"inputs": TEXT}).encode(), plain),
        "/v2 infer, JSON tensors": (f"{url}/v2/models/encoder/infer", json.dumps({"inputs": [
            {"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": [TEXT]}]}).encode(), plain),
        "/v2 infer, binary tensors": (f"{url}/v2/models/encoder/infer", head + raw,
                                      {"content-type": "application/octet-stream",
                                       "Inference-Header-Content-Length": str(len(head))}),
        "/v1/embeddings": (f"{url}/v1/embeddings", json.dumps({"model": "encoder", "input": TEXT}).encode(), plain),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kserve-bench-"))
    try:
        with running_daemon(home, triton_only_config()) as daemon:
            make_model("bert-embedder", home / "made" / "encoder")
            shutil.copytree(home / "made" / "encoder", home / "incoming" / "encoder")
            daemon.wait_for(lambda: daemon.model("encoder")["state"] == "ready", 240, "encoder ready")
            session = requests.Session()
            print(f"{'route':28} {'p50 ms':>8} {'p99 ms':>8}  ({args.requests} sequential requests)")
            for label, (url, body, headers) in _routes(daemon.url).items():
                for _ in range(10):  # warm-up
                    session.post(url, data=body, headers=headers, timeout=60).raise_for_status()
                times = []
                for _ in range(args.requests):
                    started = time.perf_counter()
                    session.post(url, data=body, headers=headers, timeout=60).raise_for_status()
                    times.append((time.perf_counter() - started) * 1000)
                times.sort()
                p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
                print(f"{label:28} {statistics.median(times):8.2f} {p99:8.2f}")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
