"""Gateway overhead against calling the vLLM server directly.

Starts `modelium serve` (Ray off, vLLM on, from .venvs/vllm) in a temp directory, drops a
tiny random-weight Llama, then sends the same streaming completions to the vLLM server's
own port and to the gateway, at concurrency 1 and 16, and prints latency p50/p99, time to
first token p50/p99 and throughput for both. Nothing is asserted: numbers go to
docs/benchmarks.md.

    .venv/bin/python bench/gateway_overhead.py [--requests 64] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from examples.make_tiny_models import make_model  # noqa: E402

MODEL = "bench-llama"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def one_request(client: httpx.AsyncClient, base: str, max_tokens: int) -> tuple[float, float]:
    """Latency and time to first token (seconds) of one streaming completion."""
    body = {"model": MODEL, "prompt": "the quick brown fox", "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "ignore_eos": True}
    start = time.perf_counter()
    first = None
    async with client.stream("POST", f"{base}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: ") and line != "data: [DONE]":
                if json.loads(line[6:])["choices"]:
                    first = time.perf_counter() - start
    return time.perf_counter() - start, first or float("nan")


async def run_level(base: str, concurrency: int, total: int, max_tokens: int) -> dict[str, float]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    results: list[tuple[float, float]] = []
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
        await one_request(client, base, max_tokens)  # warm-up

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                results.append(await one_request(client, base, max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    ttfts = sorted(r[1] for r in results)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    return {"lat_p50": pct(latencies, 0.5), "lat_p99": pct(latencies, 0.99),
            "ttft_p50": pct(ttfts, 0.5), "ttft_p99": pct(ttfts, 0.99),
            "req_s": len(results) / elapsed, "tok_s": len(results) * max_tokens / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="modelium-bench-"))
    port = free_port()
    (home / "modelium.yaml").write_text(yaml.safe_dump({
        "log_format": "text", "gateway": {"port": port}, "ray": {"enabled": False},
        "metrics": {"port": None}, "discovery": {"settle_seconds": 0.5},
        "vllm": {"base_port": free_port(), "default_settings": {
            "max_model_len": 256, "max_num_seqs": 16, "kv_cache_bytes": 256 * 2**20}},
    }))
    url = f"http://127.0.0.1:{port}"
    log = (home / "daemon.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "modelium", "serve", "--config",
                               str(home / "modelium.yaml")], stdout=log, stderr=subprocess.STDOUT,
                              cwd=REPO)
    try:
        deadline = time.monotonic() + 600
        make_model("llama", home / "made")
        shutil.copytree(home / "made", home / "models/incoming" / MODEL)
        while time.monotonic() < deadline:
            try:
                detail = requests.get(f"{url}/models/{MODEL}", timeout=2).json()
                if detail.get("state") == "ready":
                    break
                if detail.get("state") == "failed":
                    raise SystemExit(f"model failed: {detail['reason']}")
            except requests.RequestException:
                pass
            time.sleep(1)
        endpoint = detail["endpoint"]
        print(f"{'target':<8} {'conc':>4} {'lat p50':>9} {'lat p99':>9} {'ttft p50':>9} "
              f"{'ttft p99':>9} {'req/s':>7} {'tok/s':>7}   (ms unless noted, {args.max_tokens} tokens)")
        for concurrency in (1, 16):
            for target, base in (("direct", endpoint), ("gateway", url)):
                r = asyncio.run(run_level(base, concurrency, args.requests, args.max_tokens))
                print(f"{target:<8} {concurrency:>4} {r['lat_p50']:>9.1f} {r['lat_p99']:>9.1f} "
                      f"{r['ttft_p50']:>9.1f} {r['ttft_p99']:>9.1f} {r['req_s']:>7.1f} {r['tok_s']:>7.0f}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        log.close()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
