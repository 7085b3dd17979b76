"""Ray token authentication for the private cluster: where the token goes (environments
only), and that the driver's environment is put back afterwards. The real cluster refusing
callers without it: tests/e2e/test_ray_serve_manager.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelium.runtimes.process import child_env
from modelium.runtimes.ray_serve import auth
from modelium.runtimes.ray_serve.cluster import LOOPBACK_ENV, PrivateRayCluster


@pytest.fixture(autouse=True)
def _no_ray_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "_refresh_ray_caches", lambda: None)
    for name in (auth.MODE_ENV, auth.TOKEN_ENV, auth.TOKEN_PATH_ENV):
        monkeypatch.delenv(name, raising=False)


def _cluster(**kwargs: object) -> PrivateRayCluster:
    cluster = PrivateRayCluster(gcs_port=6390, num_cpus=2, num_gpus=0, temp_dir=Path("/tmp/x"), **kwargs)
    cluster.ports = {name: 20000 + i for i, name in enumerate(
        ("node_manager", "object_manager", "ray_client_server", "dashboard_agent_listen", "dashboard_agent_grpc",
         "runtime_env_agent", "metrics_export", "min_worker"))}
    return cluster


def test_each_cluster_has_its_own_token_in_its_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(auth.TOKEN_PATH_ENV, "/home/someone/.ray/auth_token")
    first, second = _cluster(), _cluster()
    assert first.auth_token != second.auth_token and len(first.auth_token) == 64
    env = first.environment()
    assert env[auth.MODE_ENV] == "token" and env[auth.TOKEN_ENV] == first.auth_token
    assert auth.TOKEN_PATH_ENV not in env  # the token given, not a file of someone else's
    assert first.auth_token not in " ".join(first.command())
    assert "--include-dashboard" in first.command()  # ... false: no dashboard, no Jobs API
    assert first.command()[first.command().index("--include-dashboard") + 1] == "false"
    assert _cluster(auth_token="given").environment()[auth.TOKEN_ENV] == "given"
    assert auth.MODE_ENV not in LOOPBACK_ENV  # a joined cluster keeps the daemon's own settings


def test_the_driver_uses_the_token_then_puts_its_environment_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(auth.MODE_ENV, "disabled")
    monkeypatch.setenv(auth.TOKEN_PATH_ENV, "/elsewhere")
    auth.use_in_driver("t1")
    assert (os.environ[auth.MODE_ENV], os.environ[auth.TOKEN_ENV]) == ("token", "t1")
    assert auth.TOKEN_PATH_ENV not in os.environ
    auth.use_in_driver("t2")  # a restarted cluster: a new token, the original environment still remembered
    assert os.environ[auth.TOKEN_ENV] == "t2"
    auth.forget_in_driver("t1")  # not the token in use: nothing changes
    assert os.environ[auth.TOKEN_ENV] == "t2"
    auth.forget_in_driver("t2")
    assert os.environ[auth.MODE_ENV] == "disabled" and os.environ[auth.TOKEN_PATH_ENV] == "/elsewhere"
    assert auth.TOKEN_ENV not in os.environ
    auth.forget_in_driver("t2")  # twice: no-op


def test_other_children_never_inherit_a_runtime_secret_or_the_gateway_s_keys() -> None:
    env = child_env({"PATH": "/bin", "RAY_AUTH_TOKEN": "t", "RAY_AUTH_TOKEN_PATH": "/p", "VLLM_API_KEY": "k",
                     "RAY_AUTH_MODE": "token", "MODELIUM_GATEWAY__API_KEYS": '["secret"]'})
    assert env == {"PATH": "/bin", "RAY_AUTH_MODE": "token"}
