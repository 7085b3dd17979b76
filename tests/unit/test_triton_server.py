"""Triton: command, env and backend-dir building; locating the install (no server run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    command = build_command(install, tmp_path / "models", tmp_path / "backends", TritonPorts(8100, 8101, 8102))
    assert command[0] == str(install.executable)
    for flag in (f"--model-repository={tmp_path / 'models'}", "--model-control-mode=explicit",
                 f"--backend-directory={tmp_path / 'backends'}", "--http-address=127.0.0.1",
                 "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1", "--http-port=8100",
                 "--grpc-port=8101", "--metrics-port=8102", "--allow-gpu-metrics=false",
                 "--disable-auto-complete-config", "--exit-on-error=false"):
        assert flag in command
    assert not any("0.0.0.0" in part for part in command)


def test_env_puts_libpython_venv_and_project_first(tmp_path: Path) -> None:
    install = _fake_install(tmp_path)
    base = {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/usr/lib", "PYTHONPATH": "/elsewhere",
            "PYTHONHOME": "/bad"}
    env = build_env(base, install, project_root=Path("/proj"), cache_dir=tmp_path / "cache")
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
