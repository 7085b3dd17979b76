"""The `modelium` command against a real daemon (Triton only, a tiny BERT classifier):
models / ps / status as tables and as --json, unload, load with progress until ready,
logs (text, --json, -f until Ctrl-C and until the daemon goes away), and one line + exit 1
when no daemon listens. Runs the installed console script, as a person would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from examples.make_tiny_models import make_model
from tests.e2e.daemon_harness import (
    assert_sigterm_leaves_nothing,
    free_port,
    running_daemon,
    triton_only_config,
)

pytestmark = pytest.mark.e2e

MODELIUM = Path(sys.executable).parent / "modelium"
IDLE_LIMIT = 900.0
ENV = {k: v for k, v in os.environ.items() if not k.startswith("MODELIUM_") and k != "COLUMNS"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    config = triton_only_config(orchestration={"decision_interval_seconds": 1,
                                               "auto_unload_after_seconds": IDLE_LIMIT})
    with running_daemon(tmp_path_factory.mktemp("cli-daemon"), config) as running:
        made = tmp_path_factory.mktemp("made")
        make_model("bert-classifier", made / "tiny-bert")
        shutil.copytree(made / "tiny-bert", running.home / "incoming" / "tiny-bert")
        running.wait_for(lambda: running.model("tiny-bert")["state"] in ("ready", "failed"), 240,
                         "tiny-bert settled")
        assert running.model("tiny-bert")["state"] == "ready", running.model("tiny-bert")
        yield running


def cli(daemon_or_url, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    url = daemon_or_url if isinstance(daemon_or_url, str) else daemon_or_url.url
    return subprocess.run([str(MODELIUM), *args, "--url", url], check=False, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def row(stdout: str, name: str) -> list[str]:
    rows = [line.split() for line in stdout.splitlines() if line.split()[:1] == [name]]
    assert len(rows) == 1, stdout
    return rows[0]


def test_models_table_and_json(daemon):
    table = cli(daemon, "models")
    assert table.returncode == 0, table.stderr
    assert table.stdout.split()[:3] == ["NAME", "STATE", "RUNTIME"]
    assert row(table.stdout, "tiny-bert")[:4] == ["tiny-bert", "ready", "triton", "cpu"]
    assert "\x1b[" not in table.stdout  # piped: no colour codes
    rows = json.loads(cli(daemon, "models", "--json").stdout)
    assert [r["name"] for r in rows] == ["tiny-bert"] and rows[0]["runtime"] == "triton"


def test_ps_table_and_json(daemon):
    table = cli(daemon, "ps")
    assert table.returncode == 0, table.stderr
    cells = row(table.stdout, "tiny-bert")
    assert cells[:3] == ["tiny-bert", "triton", "cpu"] and "ready" in cells and "in" in cells
    rows = json.loads(cli(daemon, "ps", "--json").stdout)
    assert len(rows) == 1 and rows[0]["name"] == "tiny-bert"
    assert rows[0]["idle_unload_after_seconds"] == IDLE_LIMIT and rows[0]["reserved_bytes"] > 0
    assert 0 <= rows[0]["idle_seconds"] < IDLE_LIMIT and rows[0]["idle_unload_in_seconds"] > 0


def test_status_table_and_json(daemon):
    table = cli(daemon, "status")
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("modelium ") and "health ok" in table.stdout.splitlines()[0]
    devices = table.stdout.split("Reservations")[0]
    assert row(devices, "cpu")[:3] == ["cpu", "host", "RAM"] and "█" in row(devices, "cpu")[3]
    reservations = table.stdout.split("Reservations")[1].split("Runtimes")[0]
    assert row(reservations, "cpu")[:3] == ["cpu", "tiny-bert", "ready"]
    assert row(table.stdout.split("Runtimes")[1], "triton")[1] == "ok"
    answer = json.loads(cli(daemon, "status", "--json").stdout)
    assert answer["ready"] is True and answer["models"] == {"tiny-bert": "ready"}
    assert answer["reserved_bytes"]["cpu"] > 0


def test_unload_then_load_shows_progress_until_ready(daemon):
    unloaded = cli(daemon, "unload", "tiny-bert")
    assert unloaded.returncode == 0, unloaded.stderr
    assert unloaded.stdout.strip() == "tiny-bert: unloaded, now unloaded"
    assert "no model is loaded" in cli(daemon, "ps").stdout
    started = time.monotonic()
    loaded = cli(daemon, "load", "tiny-bert", timeout=300)
    took = time.monotonic() - started
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    lines = loaded.stdout.splitlines()
    assert lines[-1].startswith("tiny-bert: ready in ") and lines[-1].endswith("(triton, cpu)")
    if took > 2:  # polled every 0.5 s: a load this long was seen while loading
        assert lines[0].startswith("tiny-bert: loading ("), loaded.stdout
    assert daemon.model("tiny-bert")["state"] == "ready"
    again = json.loads(cli(daemon, "load", "tiny-bert", "--json").stdout)  # already ready: at once
    assert again["state"] == "ready" and again["name"] == "tiny-bert"


def test_logs_text_json_and_follow_until_ctrl_c(daemon):
    direct = requests.get(f"{daemon.url}/models/tiny-bert/logs?after=0&limit=1000", timeout=5).json()
    assert direct["lines"], direct
    text = cli(daemon, "logs", "tiny-bert")
    assert text.returncode == 0, text.stderr
    assert len(text.stdout.splitlines()) >= len(direct["lines"])
    assert any("unloaded on request" in line for line in text.stdout.splitlines())
    last = [json.loads(line) for line in cli(daemon, "logs", "tiny-bert", "-n", "2", "--json").stdout.splitlines()]
    assert len(last) == 2 and last[0]["seq"] < last[1]["seq"] and set(last[0]) >= {"seq", "level", "message"}
    follower = subprocess.Popen([str(MODELIUM), "logs", "tiny-bert", "-f", "-n", "0", "--url", daemon.url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        time.sleep(3)  # following: nothing new yet
        assert cli(daemon, "pin", "tiny-bert").returncode == 0  # a decision: a new log line
        time.sleep(3)
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert "Traceback" not in err and "pinned on request" in out, (out, err)
    assert cli(daemon, "unpin", "tiny-bert").stdout.strip() == "tiny-bert: unpinned, now ready"


def test_unknown_model_and_no_daemon_are_one_line(daemon):
    unknown = cli(daemon, "logs", "no-such-model")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.count("\n") == 1 and unknown.stderr.startswith("HTTP 404")
    nobody = cli(f"http://127.0.0.1:{free_port()}", "models")
    assert nobody.returncode == 1 and nobody.stdout == ""
    assert nobody.stderr.count("\n") == 1 and "cannot reach modelium" in nobody.stderr


def test_follow_ends_with_one_line_when_the_daemon_goes(daemon):
    """Last in the module: it stops the daemon."""
    follower = subprocess.Popen([str(MODELIUM), "logs", "tiny-bert", "-f", "--url", daemon.url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        time.sleep(3)
        assert follower.poll() is None, follower.communicate()
        assert_sigterm_leaves_nothing(daemon)
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 1, (out, err)
    assert err.count("\n") == 1 and "cannot reach modelium" in err, err
    assert "tiny-bert" in out  # what it printed before the daemon went
