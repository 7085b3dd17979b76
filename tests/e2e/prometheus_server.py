"""A real `prometheus` (Debian's package, `make prometheus`) for end-to-end tests: its own
port, config and data dir under the test's home, stopped by PID."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.e2e.daemon_harness import free_port, wait_for

PROMETHEUS = shutil.which("prometheus")
#: Scrape and evaluate every second, so a test sees a request within a few seconds.
FAST_GLOBAL = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"}


class PrometheusServer:
    def __init__(self, home: Path, config: dict[str, Any]) -> None:
        if PROMETHEUS is None:
            pytest.fail("no `prometheus` binary on PATH: run `make prometheus` (Debian's package)")
        (home / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={home / 'prometheus.yml'}",
                 f"--storage.tsdb.path={home / 'prometheus-data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_ready(self) -> None:
        wait_for(lambda: requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200,
                 60, "prometheus ready", self.log)

    def answer(self, promql: str) -> dict:
        """The raw `/api/v1/query` answer (a bad query's `status` is "error")."""
        return requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10).json()

    def query(self, promql: str) -> list[dict]:
        answer = self.answer(promql)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
