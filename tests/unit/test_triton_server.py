"""Triton: command, env and backend-dir building; locating the install (no server run)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelium.runtimes.triton import access
from modelium.runtimes.triton.install import TritonInstall, locate_tritonserver
from modelium.runtimes.triton.server import (
    STUB_NAME,
    TritonPorts,
    build_backend_dir,
    build_command,
    build_env,
)
from modelium.runtimes.process import free_ports


def _fake_install(tmp_path: Path) -> TritonInstall:
    root = tmp_path / "pytriton" / "tritonserver"
    backend = root / "backends" / "python"
    backend.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (backend / name).write_text("x")
    stub = root / "python_backend_stubs" / "3.11" / STUB_NAME
    stub.parent.mkdir(parents=True)
    stub.write_text("stub")
    (root / "bin").mkdir()
    (root / "bin" / "tritonserver").write_text("")
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    return TritonInstall(
        executable=root / "bin" / "tritonserver", python_backend_dir=backend, stub=stub,
        python=venv_bin / "python", python_version="3.11", python_libdir=Path("/opt/py/lib"),
        libs_dir=tmp_path / "nvidia_pytriton.libs", bundled=True,
    )


def test_command_is_explicit_loopback_and_strict(tmp_path: Path) -> None:
    install = _fake_install(tmp_path)
    command = build_command(install, tmp_path / "models", tmp_path / "backends", TritonPorts(8100, 8101, 8102),
                            api_key="k3y")
    assert command[0] == str(install.executable)
    for flag in (f"--model-repository={tmp_path / 'models'}", "--model-control-mode=explicit",
                 f"--backend-directory={tmp_path / 'backends'}", "--http-address=127.0.0.1",
                 "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1", "--http-port=8100",
                 "--grpc-port=8101", "--metrics-port=8102", "--allow-gpu-metrics=false",
                 "--disable-auto-complete-config", "--exit-on-error=false"):
        assert flag in command
    assert not any("0.0.0.0" in part for part in command)


def test_command_restricts_every_api_but_health_and_turns_grpc_off(tmp_path: Path) -> None:
    install = _fake_install(tmp_path)
    command = build_command(install, tmp_path / "m", tmp_path / "b", TritonPorts(1, 2, 3), api_key="k3y",
                            extra_args=["--log-info=true"])
    groups = "inference,model-repository,metadata,model-config,statistics,shared-memory,trace,logging"
    assert f"--http-restricted-api={groups}:x-modelium-key=k3y" in command
    assert f"--grpc-restricted-protocol={groups}:x-modelium-key=k3y" in command  # should extra_args enable it
    assert "--allow-grpc=false" in command and command[-1] == "--log-info=true"
    assert "health" not in groups.split(",")
    with pytest.raises(ValueError, match="key"):
        build_command(install, tmp_path / "m", tmp_path / "b", TritonPorts(1, 2, 3), api_key="")
    assert access.headers("k3y") == {"x-modelium-key": "k3y"} and access.headers("") == {}
    assert access.new_key() != access.new_key() and len(access.new_key()) >= 40


def test_scrub_argv_hides_the_key_from_ps(tmp_path: Path) -> None:
    secret = access.new_key()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", f"--x=h:{secret}"])
    try:
        deadline = time.monotonic() + 10
        while secret not in Path(f"/proc/{child.pid}/cmdline").read_text() and time.monotonic() < deadline:
            time.sleep(0.01)  # until the exec happened
        assert access.scrub_argv(child.pid, secret)
        cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[-2] == b"--x=h:" + b"*" * len(secret)  # same length, nothing else moved
        assert child.poll() is None  # the process is unharmed
    finally:
        child.kill()
        child.wait()
    assert not access.scrub_argv(child.pid, secret)  # gone: says so (and logs), never raises


def test_env_puts_libpython_venv_and_project_first(tmp_path: Path) -> None:
    install = _fake_install(tmp_path)
    base = {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/usr/lib", "PYTHONPATH": "/elsewhere",
            "PYTHONHOME": "/bad"}
    env = build_env({**base, "RAY_AUTH_TOKEN": "t", "VLLM_API_KEY": "k"}, install, project_root=Path("/proj"),
                    cache_dir=tmp_path / "cache")
    assert "RAY_AUTH_TOKEN" not in env and "VLLM_API_KEY" not in env  # other runtimes' secrets
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == ["/opt/py/lib", str(install.libs_dir), "/usr/lib"]
    assert env["PATH"].split(os.pathsep) == [str(install.python.parent), "/usr/bin"]
    assert env["PYTHONPATH"].split(os.pathsep) == ["/proj", "/elsewhere"]
    assert env["VIRTUAL_ENV"] == str(install.python.parent.parent)
    assert "PYTHONHOME" not in env and env["HF_HUB_OFFLINE"] == "1"
    assert base["PATH"] == "/usr/bin"  # the caller's env is untouched


def test_backend_dir_links_backend_files_and_the_right_stub(tmp_path: Path) -> None:
    install = _fake_install(tmp_path)
    dest = build_backend_dir(install, tmp_path / "state" / "backends")
    python_dir = dest / "python"
    assert sorted(p.name for p in python_dir.iterdir()) == sorted(
        ["libtriton_python.so", "triton_python_backend_utils.py", STUB_NAME])
    assert (python_dir / STUB_NAME).resolve() == install.stub.resolve()
    assert all((python_dir / n).is_symlink() for n in ("libtriton_python.so", STUB_NAME))
    build_backend_dir(install, dest)  # rebuilt in place without error


def test_backend_dir_missing_file_is_an_error(tmp_path: Path) -> None:
    install = _fake_install(tmp_path)
    (install.python_backend_dir / "libtriton_python.so").unlink()
    with pytest.raises(FileNotFoundError, match="libtriton_python.so"):
        build_backend_dir(install, tmp_path / "b")


def test_free_ports_are_distinct() -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(p > 0 for p in ports)


def test_locate_finds_nothing_without_venv_or_path(tmp_path: Path) -> None:
    assert locate_tritonserver("modelium-no-such-tritonserver", tmp_path) is None


def test_locate_prefers_an_explicit_executable(tmp_path: Path) -> None:
    exe = tmp_path / "bin" / "tritonserver"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    found = locate_tritonserver(str(exe), tmp_path)
    assert found is not None and found.executable == exe.resolve() and not found.bundled
