"""The documented load run (docs/load-testing.md): a real daemon in a temp home with models
that do not fit together, then bench/load.py against it, then SIGTERM.

The daemon plans on one simulated GPU (``--gpu-gib``; run on the CPU) that holds the tiny
vLLM Llama (streaming chat, pinned) and one of the tiny BERT classifiers (Triton, /predict)
but not both classifiers, so traffic to the two classifiers keeps forcing swaps. ``--no-vllm``
leaves the Llama out (three classifiers, two fit). Everything after ``--`` goes to
bench/load.py unchanged; --url and the model flags are filled in here.

Hold the shared lock: other engineers' e2e suites wait on it too.

    flock /tmp/modelium-heavy.lock .venv/bin/python bench/load_run.py --out /tmp/load1000 -- \\
        --users 1000 --ramp 60 --duration 120 --plot docs/img/load-1000-users.png
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from examples.make_tiny_models import make_model
from tests.e2e.daemon_harness import free_port

VLLM_PYTHON = REPO / ".venvs/vllm/bin/python"


def config_for(args: argparse.Namespace) -> dict:
    """The config docs/load-testing.md prints. Queue bounds are the defaults' order of
    magnitude per model so that a 1,000-user run shows 429s once queues are full."""
    vllm = ({"base_port": free_port(), "startup_timeout_seconds": 400,
             "default_settings": {"max_model_len": 256, "max_num_seqs": 8, "kv_cache_bytes": 64 * 2**20}}
            if args.vllm else {"enabled": False})
    return {
        "log_format": "text", "log_level": "WARNING",
        "incoming_dir": "incoming", "model_repository": "repository", "failed_dir": "failed",
        "state_dir": "state",
        "gateway": {"host": "127.0.0.1", "port": free_port()},
        "gpus": [{"id": 0, "memory_gb": args.gpu_gib}],
        "ray": {"enabled": False}, "vllm": vllm, "metrics": {"port": None},
        "orchestration": {"decision_interval_seconds": 1, "auto_unload_after_seconds": 0,
                          "max_concurrent_requests": 8, "max_queued_requests": args.queue,
                          "load_wait_timeout_seconds": 30,
                          "scheduler": {"min_residency_seconds": args.residency}},
        "discovery": {"settle_seconds": 0.5, "rescan_interval_seconds": 1.0},
        # the chat model is pinned: a vLLM CPU restart takes 40-80 s, so the classifiers swap
        "models": {"llama": {"pinned": True}} if args.vllm else {},
    }


def wait(predicate, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise SystemExit(f"timed out waiting for {what}; log tail:\n{log.read_text(errors='replace')[-3000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gpu-gib", type=float, default=None, help="simulated GPU size (default fits per mode)")
    parser.add_argument("--queue", type=int, default=128, help="max_queued_requests per model")
    parser.add_argument("--residency", type=float, default=5.0, help="scheduler.min_residency_seconds")
    parser.add_argument("--no-vllm", dest="vllm", action="store_false")
    parser.add_argument("--keep-home", action="store_true")
    args, load_args = parser.parse_known_args()
    # SIGTERM/SIGINT to this script must still stop the daemon: turn them into SystemExit so
    # the finally below runs (a background job may even have SIGINT ignored).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    load_args = [a for a in load_args if a != "--"]
    if args.vllm and not VLLM_PYTHON.exists():
        raise SystemExit(f"{VLLM_PYTHON} is missing (make test creates it); or pass --no-vllm")
    if args.gpu_gib is None:
        args.gpu_gib = 3.0 if args.vllm else 2.4
    home = Path(tempfile.mkdtemp(prefix="mdl-load-"))
    config = config_for(args)
    (home / "modelium.yaml").write_text(yaml.safe_dump(config))
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy(home / "modelium.yaml", args.out / "modelium.yaml")
    log_path = home / "daemon.log"
    log = log_path.open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "modelium", "serve", "--config", str(home / "modelium.yaml")],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{config['gateway']['port']}"
    code = 1
    try:
        wait(lambda: requests.get(f"{url}/health", timeout=2).status_code == 200, 300, "health", log_path)
        classifiers = ["bert-a", "bert-b"] if args.vllm else ["bert-a", "bert-b", "bert-c"]
        made = home / "made"
        names = [*classifiers, *(["llama"] if args.vllm else [])]
        for name in names:
            kind = "llama" if name == "llama" else "bert-classifier"
            shutil.copytree(make_model(kind, made / name), home / "incoming" / name)

        def settled() -> bool:
            states = {m["name"]: m["state"] for m in requests.get(f"{url}/models", timeout=5).json()["models"]}
            print("  states:", states, flush=True)
            return all(states.get(n) in ("ready", "unloaded", "analyzed", "failed") for n in names)

        wait(settled, 420, "models ready", log_path)
        for name in names:  # one request each, so every model has a measured load before the run
            body = {"inputs": "warm up"}
            print(f"  warm {name}:", requests.post(f"{url}/predict/{name}", json=body, timeout=300).status_code,
                  flush=True)
        command = [sys.executable, str(REPO / "bench/load.py"), "--url", url, "--out", str(args.out),
                   "--predict", ",".join(classifiers), *(["--chat", "llama"] if args.vllm else []), *load_args]
        print("+", " ".join(command), flush=True)
        code = subprocess.call(command, cwd=REPO)
        tree = psutil.Process(daemon.pid)
        print(f"daemon after the run: rss {tree.memory_info().rss / 2**20:.0f} MiB, fds {tree.num_fds()}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            print("daemon exit after SIGTERM:", daemon.wait(120))
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        shutil.copy(log_path, args.out / "daemon.log")
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
