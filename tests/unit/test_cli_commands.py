"""Every daemon-facing CLI command against a fake gateway client: tables for people,
`--json` that parses with the promised fields, and one line + exit 1 when the daemon is
gone or says no."""

from __future__ import annotations

import json
import threading

import pytest
from typer.testing import CliRunner

from modelium.cli.client import GatewayError
from modelium.cli.main import app
from tests.unit.cli_fakes import (
    FakeClient,
    gone,
    install,
    model,
    sample_health,
    sample_models,
    sample_status,
)

runner = CliRunner()


def _daemon(monkeypatch, **routes) -> FakeClient:
    base = {("GET", "/models"): {"models": sample_models()}, ("GET", "/status"): sample_status(),
            ("GET", "/health"): sample_health()}
    base.update({tuple(k.split(" ", 1)): v for k, v in routes.items()})
    return install(monkeypatch, FakeClient(base))


def _lines(n: int, start: int = 1) -> list[dict]:
    return [{"seq": s, "time": 1700000000.0 + s, "level": "INFO", "logger": "modelium.test",
             "message": f"line {s}"} for s in range(start, start + n)]


def test_models_table_and_json(monkeypatch):
    _daemon(monkeypatch)
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "NAME" in result.stdout and "ModuleNotFoundError: nope" in result.stdout
    assert "\x1b[" not in result.stdout  # not a terminal: no colour codes
    rows = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    assert [r["name"] for r in rows][:2] == ["tiny-bert", "big-llama"]
    assert rows[0]["footprint"]["reserved_bytes"] > 0


def test_ps_table_and_json(monkeypatch):
    _daemon(monkeypatch)
    result = runner.invoke(app, ["ps"])
    assert result.exit_code == 0, result.output
    assert "UNTIL" in result.stdout and "never (pinned)" in result.stdout
    assert "broken" not in result.stdout and "sleepy" not in result.stdout
    rows = json.loads(runner.invoke(app, ["ps", "--json"]).stdout)
    assert {r["name"] for r in rows} == {"tiny-bert", "big-llama", "keeper"}
    for key in ("runtime", "device", "state", "pinned", "reserved_bytes", "measured_bytes",
                "idle_seconds", "idle_unload_after_seconds", "idle_unload_in_seconds"):
        assert all(key in r for r in rows), key


def test_status_table_shows_a_degraded_health_and_json_is_the_raw_status(monkeypatch):
    _daemon(monkeypatch, **{"GET /health": sample_health(ok=False)})
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    for text in ("health degraded", "Devices", "Reservations", "Runtimes", "ray head exited with 1",
                 "Scheduler", "Quarantined drops"):
        assert text in result.stdout, text
    answer = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert answer["devices"][0]["id"] == "gpu:0" and answer["reserved_bytes"]["cpu"] > 0


def test_decisions_table_and_json(monkeypatch):
    client = _daemon(monkeypatch, **{"GET /decisions": {"decisions": [
        {"time": 1700000000.0, "action": "evict", "model": "a", "reason": "room for b"}]}})
    result = runner.invoke(app, ["decisions", "a", "-n", "5"])
    assert result.exit_code == 0 and "room for b" in result.stdout
    assert client.calls[-1][1] == "/decisions?limit=5&model=a"
    assert json.loads(runner.invoke(app, ["decisions", "--json"]).stdout)[0]["action"] == "evict"


def test_logs_pages_through_everything_kept(monkeypatch):
    pages = {0: (_lines(1000), 1000), 1000: (_lines(3, 1001), 1003), 1003: ([], 1003)}

    def answer(method, path, body):
        after = int(path.split("after=")[1].split("&")[0])
        lines, following = pages[after]
        return {"model": "m", "lines": lines, "next": following}

    _daemon(monkeypatch, **{"GET /models/m/logs": answer})
    result = runner.invoke(app, ["logs", "m"])
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert len(out) == 1003 and out[0].endswith("modelium.test: line 1") and out[-1].endswith("line 1003")
    tail = runner.invoke(app, ["logs", "m", "-n", "2", "--json"]).stdout.splitlines()
    assert [json.loads(line)["seq"] for line in tail] == [1002, 1003]
    assert set(json.loads(tail[0])) == {"seq", "time", "level", "logger", "message"}


def test_logs_unknown_model_is_one_line(monkeypatch):
    _daemon(monkeypatch, **{"GET /models/nope/logs": GatewayError("HTTP 404: unknown model 'nope'", 404)})
    result = runner.invoke(app, ["logs", "nope"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == "HTTP 404: unknown model 'nope'"


def _follow_daemon(monkeypatch, end: BaseException) -> FakeClient:
    """First call: 2 kept lines; then an empty page; then 1 new line; then ``end``."""
    answers = iter([(_lines(2), 2), ([], 2), ([], 2), (_lines(1, 3), 3)])

    def answer(method, path, body):
        try:
            lines, following = next(answers)
        except StopIteration:
            raise end from None
        return {"model": "m", "lines": lines, "next": following}

    return _daemon(monkeypatch, **{"GET /models/m/logs": answer})


def test_logs_follow_until_ctrl_c_exits_0(monkeypatch):
    client = _follow_daemon(monkeypatch, KeyboardInterrupt())
    result = runner.invoke(app, ["logs", "m", "-f", "--interval", "0.1"])
    assert result.exit_code == 0, result.output
    assert [line.rsplit(" ", 1)[-1] for line in result.stdout.splitlines()] == ["1", "2", "3"]
    assert "after=2&" in client.calls[2][1] and "after=3&" in client.calls[-1][1]
    assert "Traceback" not in result.output and "Aborted" not in result.output


def test_logs_follow_daemon_gone_exits_1_with_one_line(monkeypatch):
    _follow_daemon(monkeypatch, gone())
    result = runner.invoke(app, ["logs", "m", "--follow", "--interval", "0.1", "--json"])
    assert result.exit_code == 1
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [1, 2, 3]
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot reach modelium" in result.stderr


def _loading_daemon(monkeypatch, post_answer, final: dict) -> FakeClient:
    """POST /models/m/load blocks until GET /models/m has been polled twice (it says
    'loading' until then, ``final`` once the POST has answered)."""
    polled, answered = threading.Event(), threading.Event()
    polls = []

    def get(method, path, body):
        polls.append(1)
        if len(polls) >= 2:
            polled.set()
        return final if answered.is_set() else model("m", "loading")

    def post(method, path, body):
        assert polled.wait(10), "the CLI never polled the model's state"
        answered.set()
        if isinstance(post_answer, BaseException):
            raise post_answer
        return post_answer

    return _daemon(monkeypatch, **{"GET /models/m": get, "POST /models/m/load": post})


def test_load_shows_progress_then_ready(monkeypatch):
    ready = model("m", "ready", runtime="triton", device="cpu")
    _loading_daemon(monkeypatch, ready, ready)
    result = runner.invoke(app, ["load", "m"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("m: loading (") and lines[-1].startswith("m: ready in ")
    assert lines[-1].endswith("(triton, cpu)")


def test_load_json_prints_the_record_only(monkeypatch):
    ready = model("m", "ready", runtime="triton", device="cpu")
    _loading_daemon(monkeypatch, ready, ready)
    result = runner.invoke(app, ["load", "m", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["state"] == "ready" and record["runtime"] == "triton"


def test_load_failure_exits_1_with_the_reason(monkeypatch):
    _loading_daemon(monkeypatch, GatewayError("HTTP 409: model 'm' failed", 409),
                    model("m", "failed", reason="triton: ModuleNotFoundError: nope"))
    result = runner.invoke(app, ["load", "m"])
    assert result.exit_code == 1
    assert result.stdout.startswith("m: loading (")  # the progress went to stdout
    assert result.stderr.strip().startswith("m: triton: ModuleNotFoundError: nope (after ")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("action,expected", [("unload", "m: unloaded, now unloaded"),
                                             ("pin", "m: pinned, now ready (pinned)"),
                                             ("unpin", "m: unpinned, now ready")])
def test_unload_pin_unpin(monkeypatch, action, expected):
    state = "unloaded" if action == "unload" else "ready"
    client = _daemon(monkeypatch, **{f"POST /models/m/{action}": model("m", state, pinned=action == "pin")})
    result = runner.invoke(app, [action, "m"])
    assert result.exit_code == 0 and result.stdout.strip() == expected
    assert client.calls[-1][:2] == ("POST", f"/models/m/{action}")
    assert json.loads(runner.invoke(app, [action, "m", "--json"]).stdout)["state"] == state


def test_predict_json(monkeypatch):
    client = _daemon(monkeypatch, **{"POST /predict/m": {"model": "m", "outputs": [1], "request_id": "r"}})
    result = runner.invoke(app, ["predict", "m", "hi", "-p", "max_new_tokens=8", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["outputs"] == [1]
    assert client.calls[-1][2] == {"inputs": "hi", "parameters": {"max_new_tokens": 8}}


@pytest.mark.parametrize("argv", [["models"], ["ps"], ["status"], ["status", "--json"], ["decisions"],
                                  ["logs", "m"], ["load", "m"], ["unload", "m"], ["pin", "m"],
                                  ["unpin", "m"], ["predict", "m", "x"], ["ps", "--json"]])
def test_every_command_without_a_daemon_is_one_line_and_exit_1(monkeypatch, argv):
    install(monkeypatch, FakeClient({}))
    monkeypatch.setattr(FakeClient, "request", lambda self, *a, **k: (_ for _ in ()).throw(gone()))
    result = runner.invoke(app, argv)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "cannot reach modelium" in result.stderr
