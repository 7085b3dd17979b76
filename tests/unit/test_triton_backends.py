"""Triton as Triton: a full install's backends folder is the server's, Modelium knows which
backends exist, a config.pbtxt whose backend is absent fails naming it, and ONNX uses the
native onnxruntime backend when there is one.

The "full install" is a fake tree in NVIDIA's release layout (``opt/tritonserver/bin/
tritonserver`` + ``backends/NAME/libtriton_NAME.so``); its ``tritonserver`` is a shell
script that records its argv, so the real ``TritonServer.start`` path is exercised.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from modelium.analysis import analyze_folder
from modelium.analysis.profile import MemoryEstimate
from modelium.brain import (
    RUNTIME_RAY_SERVE,
    RUNTIME_TRITON,
    RUNTIME_VLLM,
    choose_runtime,
)
from modelium.hardware.devices import Device
from modelium.runtimes.base import LoadRequest
from modelium.runtimes.triton import install as install_module
from modelium.runtimes.triton.install import available_backends, locate_tritonserver
from modelium.runtimes.triton.manager import TritonManager
from modelium.runtimes.triton.server import (
    STUB_NAME,
    TritonPorts,
    TritonServer,
    backend_directory,
    build_command,
)
from tests.e2e.fixtures_triton import make_onnx_model
from tests.unit.test_brain import profile
from tests.unit.test_triton_model_repo import _write, one, parse_pbtxt, tensors

ALL = (RUNTIME_RAY_SERVE, RUNTIME_VLLM, RUNTIME_TRITON)
RECORDER = '#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/argv.txt"\nexec sleep 30\n'


def fake_full_install(root: Path, backends: tuple[str, ...] = ("onnxruntime", "python", "pytorch", "tensorrt")) -> Path:
    """``root/opt/tritonserver`` with bin/tritonserver and the named backends; returns the exe."""
    home = root / "opt" / "tritonserver"
    exe = home / "bin" / "tritonserver"
    exe.parent.mkdir(parents=True)
    exe.write_text(RECORDER)
    exe.chmod(0o755)
    for name in backends:
        folder = home / "backends" / name
        folder.mkdir(parents=True)
        (folder / f"libtriton_{name}.so").write_text("")
        if name == "python":
            (folder / "triton_python_backend_utils.py").write_text("")
            (folder / STUB_NAME).write_text("")
    (home / "backends" / "vllm").mkdir()
    (home / "backends" / "vllm" / "model.py").write_text("")  # a Python-based backend
    (home / "backends" / "notes").mkdir()  # a folder without a backend library is none
    return exe


@pytest.fixture(autouse=True)
def no_system_backends(monkeypatch):
    """This machine's /opt/tritonserver (if any) must not leak into the fake installs."""
    monkeypatch.setattr(install_module, "SYSTEM_BACKEND_DIRS", ())


def test_full_install_backends_dir_is_the_servers_own(tmp_path):
    exe = fake_full_install(tmp_path)
    found = locate_tritonserver(str(exe), tmp_path)
    backends = exe.parent.parent / "backends"
    assert found is not None and found.backends_dir == backends
    assert found.backends == {"onnxruntime", "python", "pytorch", "tensorrt", "vllm"}
    assert found.python_backend_dir == backends / "python" and found.stub is None
    private = tmp_path / "state" / "backends"
    assert backend_directory(found, private) == backends and not private.exists()
    argv = build_command(found, tmp_path / "models", backend_directory(found, private),
                         TritonPorts(1, 2, 3), api_key="k")
    assert f"--backend-directory={backends}" in argv


def test_full_install_found_on_path(tmp_path, monkeypatch):
    exe = fake_full_install(tmp_path)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    found = locate_tritonserver("tritonserver", tmp_path)
    assert found is not None and found.executable == exe.resolve()
    assert found.backends_dir == exe.parent.parent / "backends" and "onnxruntime" in found.backends


def test_started_server_runs_with_the_install_backends(tmp_path):
    exe = fake_full_install(tmp_path)
    found = locate_tritonserver(str(exe), tmp_path)
    server = TritonServer(found, tmp_path / "work", repository=tmp_path / "work" / "models")
    server.start()
    try:
        argv_file = exe.parent / "argv.txt"
        deadline = time.monotonic() + 10
        while not argv_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        argv = argv_file.read_text().splitlines()
    finally:
        server.stop(timeout=5)
    assert f"--backend-directory={exe.parent.parent / 'backends'}" in argv
    assert server.backend_dir == exe.parent.parent / "backends"
    assert not (tmp_path / "work" / "backends").exists()  # no private python-only folder


def test_without_a_full_install_only_python_is_known(tmp_path):
    bare = tmp_path / "bin" / "tritonserver"  # no backends folder next to it
    bare.parent.mkdir()
    bare.write_text("#!/bin/sh\n")
    bare.chmod(0o755)
    found = locate_tritonserver(str(bare), tmp_path)
    assert found is not None and found.backends_dir is None and found.backends == {"python"}
    assert available_backends(tmp_path / "nowhere") == frozenset()


def test_missing_backend_fails_with_its_name_and_how_to_get_it(tmp_path):
    python_only = frozenset({"python"})
    for asked, needed in (("onnxruntime_onnx", "onnxruntime"), ("tensorrt_plan", "tensorrt"),
                          ("pytorch_libtorch", "pytorch"), ("openvino", "openvino")):
        folder = profile(fmt="triton", arch=None, task="triton")
        folder = dataclasses.replace(folder, model_type=asked)
        choice = choose_runtime(folder, enabled=ALL, implemented=ALL, triton_backends=python_only)
        assert (choice.runtime, choice.reason_code) == (None, "no-runtime")
        assert f"'{needed}'" in choice.reason and "it has: python" in choice.reason
        assert "triton.executable" in choice.reason and f"backends/{needed}" in choice.reason
        # The same folder loads where the backend exists, and on a server of unknown backends.
        assert choose_runtime(folder, enabled=ALL, implemented=ALL,
                              triton_backends={"python", needed}).runtime == RUNTIME_TRITON
        assert choose_runtime(folder, enabled=ALL, implemented=ALL).runtime == RUNTIME_TRITON
        # An explicit runtime override does not get around it.
        forced = choose_runtime(folder, enabled=ALL, implemented=ALL, override=RUNTIME_TRITON,
                                triton_backends=python_only)
        assert forced.runtime is None and needed in forced.reason
    ensemble = profile(fmt="triton", arch=None, task="triton")
    ensemble = dataclasses.replace(ensemble, model_type="ensemble")
    assert choose_runtime(ensemble, enabled=ALL, implemented=ALL,
                          triton_backends=python_only).runtime == RUNTIME_TRITON


def test_onnx_reason_says_what_runs_the_graph():
    onnx = profile("resnet", fmt="onnx", arch=None, task="onnx")
    native = choose_runtime(onnx, enabled=ALL, implemented=ALL, triton_backends={"python", "onnxruntime"})
    stub = choose_runtime(onnx, enabled=ALL, implemented=ALL, triton_backends={"python"})
    external = choose_runtime(onnx, enabled=ALL, implemented=ALL)
    assert native.runtime == stub.runtime == external.runtime == RUNTIME_TRITON
    assert "onnxruntime backend" in native.reason and "onnxruntime_onnx" in native.reason
    assert "python backend" in stub.reason and "no onnxruntime backend" in stub.reason
    assert "python backend" in external.reason
    assert not any("natively" in c.reason for c in (native, stub, external))


def test_native_onnx_entry_uses_the_onnxruntime_platform(tmp_path):
    src = make_onnx_model(tmp_path / "linear")
    python_entry = _write(tmp_path / "repo-a", "lin", src)
    native_entry = _write(tmp_path / "repo-b", "lin", src, native_onnx=True)
    python_cfg = parse_pbtxt((python_entry / "config.pbtxt").read_text())
    native_cfg = parse_pbtxt((native_entry / "config.pbtxt").read_text())
    assert one(native_cfg, "platform") == "onnxruntime_onnx" and "backend" not in native_cfg
    assert one(native_cfg, "default_model_filename") == "model.onnx"
    assert "parameters" not in native_cfg and not (native_entry / "1" / "model.py").exists()
    assert (native_entry / "1" / "model.onnx").is_file()
    assert one(python_cfg, "backend") == "python" and (python_entry / "1" / "model.py").exists()
    # Same tensors and batching either way (read from the graph).
    for field in ("input", "output"):
        assert tensors(native_cfg, field) == tensors(python_cfg, field)
    assert one(native_cfg, "max_batch_size") == one(python_cfg, "max_batch_size")
    assert ("dynamic_batching" in native_cfg) == ("dynamic_batching" in python_cfg)


def test_manager_writes_native_onnx_only_with_the_backend(tmp_path):
    src = make_onnx_model(tmp_path / "linear")
    cpu = Device(id="cpu", kind="cpu", index=None, total_bytes=16 << 30, name="host RAM")
    request = LoadRequest(name="lin", model_dir=src, profile=analyze_folder(src, "lin"), device=cpu,
                          memory=MemoryEstimate(0, 0, 0, 0, 1, 1, "cpu"))
    full = locate_tritonserver(str(fake_full_install(tmp_path / "full")), tmp_path)
    bare_exe = fake_full_install(tmp_path / "bare", backends=("python",))
    bare = locate_tritonserver(str(bare_exe), tmp_path)
    platforms = {}
    for label, found in (("full", full), ("bare", bare)):
        manager = TritonManager(install=found, state_dir=tmp_path / label, endpoint=None,
                                startup_timeout_seconds=1)
        cfg = parse_pbtxt((manager._write_entry(request) / "config.pbtxt").read_text())
        platforms[label] = cfg.get("platform", cfg.get("backend"))[0]
    assert platforms == {"full": "onnxruntime_onnx", "bare": "python"}
