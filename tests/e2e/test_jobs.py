"""Jobs end to end with a real daemon and a real tritonserver: a job submitted twice with
the same Idempotency-Key is one job and its result arrives; an invalid priority is a 422;
a job accepted (and running) before a kill -9 of the daemon, and one queued behind it,
both complete after a restart on the same state_dir."""

from __future__ import annotations

import os
import shutil
import signal
import time

import psutil
import pytest
import requests

from tests.e2e.daemon_harness import (
    running_daemon,
    still_running,
    triton_only_config,
    wait_for,
)
from tests.e2e.fixtures_orchestration import make_sleeper

pytestmark = pytest.mark.e2e

SLOW_SECONDS = 4.0


def _config() -> dict:
    return triton_only_config(gpus=[{"id": 0, "memory_gb": 4}], orchestration={"decision_interval_seconds": 1})


def _drop_sleeper(daemon) -> None:
    staging = daemon.home / "staging" / "sleeper"
    make_sleeper(staging)
    shutil.move(str(staging), daemon.home / "incoming" / "sleeper")
    daemon.wait_for(lambda: daemon.model("sleeper")["state"] == "ready", 120, "sleeper ready")


def _job(daemon, job_id: str) -> dict:
    return requests.get(f"{daemon.url}/jobs/{job_id}", timeout=5).json()


def _submit(daemon, seconds: float, **headers) -> requests.Response:
    return requests.post(f"{daemon.url}/jobs", json={"model": "sleeper", "inputs": {"SECONDS": [seconds]}},
                         headers=headers, timeout=10)


def test_idempotency_result_priority_and_a_kill_minus_nine(tmp_path_factory):
    home = tmp_path_factory.mktemp("jobs")
    config = _config()
    with running_daemon(home, config) as first:
        _drop_sleeper(first)

        # Same key twice: one job; its result arrives.
        once = _submit(first, 0.5, **{"Idempotency-Key": "e2e-key-1", "X-Request-ID": "e2e-job-1"})
        twice = _submit(first, 0.5, **{"Idempotency-Key": "e2e-key-1"})
        assert once.status_code == 202 and twice.status_code == 200, (once.text, twice.text)
        job_id = once.json()["id"]
        assert twice.json()["id"] == job_id and twice.headers["Idempotent-Replayed"] == "true"
        done = first.wait_for(lambda: _job(first, job_id)["state"] == "succeeded" and _job(first, job_id),
                              60, "the job done")
        assert done["attempts"] == 1 and done["run_seconds"] >= 0.5
        result = requests.get(f"{first.url}/jobs/{job_id}/result", timeout=5)
        assert result.status_code == 200 and result.json()["result"]["outputs"]["SLEPT"] == [0.5], result.text
        assert result.json()["result"]["runtime"] == "triton"
        assert any(line.endswith("[request_id=e2e-job-1]") and "/v2/models/sleeper/infer" in line
                   for line in first.log.read_text().splitlines())  # the run logs under the submitter's id

        # An invalid priority: 422 naming the allowed values.
        bad = requests.post(f"{first.url}/jobs", json={"model": "sleeper", "inputs": {"SECONDS": [0.0]},
                                                       "priority": "urgent"}, timeout=5)
        assert bad.status_code == 422 and "'high'" in bad.json()["error"]["message"], bad.text

        # A slow job running and one queued behind it (one job per model at a time), then kill -9.
        slow = _submit(first, SLOW_SECONDS, **{"Idempotency-Key": "e2e-slow"}).json()
        behind = _submit(first, 0.0).json()
        first.wait_for(lambda: _job(first, slow["id"])["state"] == "running", 30, "the slow job running")
        assert _job(first, behind["id"])["state"] == "queued"
        assert _job(first, behind["id"])["position"] == 1
        descendants = psutil.Process(first.process.pid).children(recursive=True)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        assert not still_running(descendants, within=15)

    started = time.monotonic()
    with running_daemon(home, config) as second:
        def finished(job_id: str):
            job = _job(second, job_id)
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        again = wait_for(lambda: finished(slow["id"]), 120, "the slow job after the restart", second.log)
        assert again["state"] == "succeeded" and again["attempts"] == 2, again
        assert again["error"] is None
        result = requests.get(f"{second.url}/jobs/{slow['id']}/result", timeout=5).json()
        assert result["result"]["outputs"]["SLEPT"] == [SLOW_SECONDS]
        queued = wait_for(lambda: finished(behind["id"]), 60, "the queued job after the restart", second.log)
        assert queued["state"] == "succeeded" and queued["attempts"] == 1, queued
        # Keys survive the restart too: the same key is still the same job.
        replay = _submit(second, SLOW_SECONDS, **{"Idempotency-Key": "e2e-slow"})
        assert replay.status_code == 200 and replay.json()["id"] == slow["id"]
        assert requests.get(f"{second.url}/jobs/{job_id}", timeout=5).json()["state"] == "succeeded"
        metrics = requests.get(f"{second.url}/metrics", timeout=5).text
        assert 'modelium_job_seconds_count{outcome="succeeded",priority="normal"} 2.0' in metrics
        assert 'modelium_jobs{priority="normal",state="queued"} 0.0' in metrics
    assert time.monotonic() - started < 240
