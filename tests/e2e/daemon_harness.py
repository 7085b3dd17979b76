"""Running `modelium serve` as a real subprocess for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
HEALTH_TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningDaemon:
    url: str
    home: Path
    process: subprocess.Popen
    log: Path

    def model(self, name: str) -> dict[str, Any]:
        """GET /models/NAME, or {"state": None} when it is not known (yet)."""
        response = requests.get(f"{self.url}/models/{name}", timeout=5)
        return response.json() if response.status_code == 200 else {"state": None}

    def wait_for(self, predicate, timeout: float, what: str) -> Any:
        return wait_for(predicate, timeout, what, self.log)


def wait_for(predicate, timeout: float, what: str, log: Path) -> Any:
    """Poll ``predicate`` until it returns something true; fail with the daemon's log tail."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-6000:] if log.exists() else ""
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n--- daemon log ---\n{tail}")


@contextlib.contextmanager
def running_daemon(home: Path, config: dict[str, Any]) -> Iterator[RunningDaemon]:
    """Start `modelium serve` with ``config`` (paths relative to ``home``), wait for
    /health, and make sure it and everything under it is gone afterwards."""
    config_path = home / "modelium.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = home / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELIUM_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelium", "serve", "--config", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=REPO,
        )
    daemon = RunningDaemon(f"http://127.0.0.1:{config['gateway']['port']}", home, process, log_path)
    try:
        daemon.wait_for(lambda: requests.get(f"{daemon.url}/health", timeout=2).status_code == 200,
                        HEALTH_TIMEOUT, "daemon health")
        yield daemon
    finally:
        if process.poll() is None:  # a failed test must not leave the daemon running
            leftovers = psutil.Process(process.pid).children(recursive=True)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()
            for child in leftovers:
                if child.is_running():
                    child.kill()


def assert_sigterm_leaves_nothing(daemon: RunningDaemon) -> list[psutil.Process]:
    """SIGTERM the daemon: it must exit 0 and every process under it must be gone.
    Returns the processes that were there (so callers can check what they were)."""
    descendants = psutil.Process(daemon.process.pid).children(recursive=True)
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(120) == 0, daemon.log.read_text()[-4000:]
    alive = still_running(descendants, within=30)
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"
    return descendants


def still_running(processes: list[psutil.Process], *, within: float) -> list[psutil.Process]:
    """The ``processes`` still alive (zombies count as gone) after waiting up to ``within``."""
    deadline = time.monotonic() + within
    alive = processes
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if alive:
            time.sleep(0.25)
    return alive


def triton_only_config(**sections: Any) -> dict[str, Any]:
    """A daemon config for the Triton-only e2e modules (folders relative to its home, a
    free gateway port, fast discovery); ``sections`` are added or replace whole keys."""
    return {
        "log_format": "text",
        "incoming_dir": "incoming", "model_repository": "repository",
        "failed_dir": "failed", "state_dir": "state",
        "gateway": {"port": free_port()},
        "ray": {"enabled": False},
        "vllm": {"enabled": False},
        "metrics": {"port": None},
        "discovery": {"settle_seconds": 0.5, "rescan_interval_seconds": 1.0},
        **sections,
    }
