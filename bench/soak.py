"""Soak: minutes of mixed traffic against a real daemon, with drops, re-drops and unloads in
between, watching for errors and for anything that grows.

The daemon (Triton only: tiny python models and a tiny BERT classifier, made offline) runs
on a simulated GPU that holds three of the five models, so traffic keeps forcing swaps.
Clients ask for random models (named tensors and text); every 20 s something changes:
a model is re-dropped (a new version), one is unloaded, a broken folder is dropped (it must
be quarantined), a new model is dropped and later removed from traffic. Printed at the end:
requests by status (every one must be 200; a 503 only after its wait budget), and the
daemon's RSS, open files and threads after the warm-up and at the end (they should stay
flat), plus the whole process tree's RSS.

    .venv/bin/python bench/soak.py [--minutes 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from examples.make_tiny_models import make_model  # noqa: E402
from modelium.runtimes.process import free_ports  # noqa: E402
from tests.e2e.fixtures_orchestration import make_sleeper, make_versioned  # noqa: E402

BUDGET = 60.0  # each request's wait budget


def _drop(home: Path, name: str, make) -> None:  # noqa: ANN001
    staging = home / "staging" / f"{name}-{time.monotonic_ns()}"
    make(staging / name)
    shutil.move(str(staging / name), home / "incoming" / name)


def _facts(pid: int) -> dict[str, float]:
    process = psutil.Process(pid)
    tree = [process, *process.children(recursive=True)]
    rss_tree = 0
    for p in tree:
        try:
            rss_tree += p.memory_info().rss
        except psutil.Error:
            pass
    return {"daemon_rss_mib": process.memory_info().rss / 2**20, "open_files": process.num_fds(),
            "threads": process.num_threads(), "tree_rss_mib": rss_tree / 2**20, "processes": len(tree)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mdl-soak-"))
    port = free_ports(1)[0]
    config = {"log_format": "text", "incoming_dir": "incoming", "model_repository": "repository",
              "failed_dir": "failed", "state_dir": "state", "gateway": {"port": port},
              "gpus": [{"id": 0, "memory_gb": 2.5}],  # ~0.71 GiB a model: three fit
              "ray": {"enabled": False}, "vllm": {"enabled": False}, "metrics": {"port": None},
              "orchestration": {"decision_interval_seconds": 1, "auto_unload_after_seconds": 0},
              "discovery": {"settle_seconds": 0.3, "rescan_interval_seconds": 1.0}}
    (home / "modelium.yaml").write_text(yaml.safe_dump(config))
    log = (home / "daemon.log").open("wb")
    daemon = subprocess.Popen([sys.executable, "-m", "modelium", "serve", "--config", str(home / "modelium.yaml")],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    statuses: Counter[int] = Counter()
    early_503 = 0
    lock = threading.Lock()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        bert = make_model("bert-classifier", home / "made" / "bert")
        shutil.copytree(bert, home / "incoming" / "bert")
        for name in ("s1", "s2"):
            _drop(home, name, make_sleeper)
        _drop(home, "ver", lambda d: make_versioned(d, "v1"))
        models = ["bert", "s1", "s2", "ver"]
        def settled() -> set[str]:
            listed = requests.get(f"{url}/models", timeout=5).json()["models"]
            return {m["name"] for m in listed if m["state"] in ("ready", "unloaded")}

        while not set(models) <= settled():
            time.sleep(1)
        stop_at = time.monotonic() + args.minutes * 60
        live = list(models)

        def client(seed: int) -> None:
            nonlocal early_503
            rng = random.Random(seed)
            session = requests.Session()
            while time.monotonic() < stop_at:
                name = rng.choice(live)
                body = {"inputs": ["great", "awful"]} if name == "bert" else {"inputs": {"SECONDS": [0.05]}}
                started = time.monotonic()
                try:
                    answer = session.post(f"{url}/predict/{name}", json=body, timeout=BUDGET + 30,
                                          headers={"X-Max-Wait-Seconds": str(BUDGET)})
                    status = answer.status_code
                except requests.RequestException:
                    status = -1
                with lock:
                    statuses[status] += 1
                    if status == 503 and time.monotonic() - started < BUDGET - 1:
                        early_503 += 1

        with ThreadPoolExecutor(args.clients) as pool:
            futures = [pool.submit(client, i) for i in range(args.clients)]
            time.sleep(20)
            warm = _facts(daemon.pid)
            step = 0
            while time.monotonic() < stop_at - 10:
                step += 1
                action = step % 4
                if action == 0:
                    _drop(home, "ver", lambda d, n=step: make_versioned(d, f"v{n}"))
                elif action == 1:
                    requests.post(f"{url}/models/{random.choice(live)}/unload", timeout=120)
                elif action == 2:
                    _drop(home, f"broken{step}", lambda d: (d.mkdir(parents=True), (d / "config.json").write_text("{")))
                else:
                    name = f"extra{step}"
                    _drop(home, name, make_sleeper)
                    time.sleep(5)
                    if requests.get(f"{url}/models/{name}", timeout=5).status_code == 200:
                        live.append(name)
                    if len(live) > 6:
                        live.remove(live[4])  # keep the mix bounded
                time.sleep(20)
            for future in futures:
                future.result()
        end = _facts(daemon.pid)
        quarantined = sorted(p.name for p in (home / "failed").iterdir()) if (home / "failed").exists() else []
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(120)
        log.close()
    print(f"soak: {args.minutes:.0f} min, {args.clients} clients, {sum(statuses.values())} requests, "
          f"statuses {dict(sorted(statuses.items()))}, 503 before the budget: {early_503}")
    print(f"quarantined: {len(quarantined)} ({', '.join(quarantined[:5])}...)")
    for key in warm:
        print(f"  {key:15s} after warm-up {warm[key]:9.1f}   at the end {end[key]:9.1f}")
    print(f"daemon exit code after SIGTERM: {code}")
    shutil.rmtree(home, ignore_errors=True)
    return 0 if set(statuses) <= {200} and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
