"""The vLLM server's command line and environment (pure), and where vLLM comes from
(resolve_python, probe and its cache: with fake interpreters, no vLLM needed)."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from modelium.config.settings import VllmModelSettings
from modelium.runtimes.process import pdeathsig_command
from modelium.runtimes.vllm.auth import GUARD_DIR
from modelium.runtimes.vllm.command import build_command, build_env, served_dtype
from modelium.runtimes.vllm.install import VllmInstall, probe, probe_with_reason, resolve_python

PY = Path("/venvs/vllm/bin/python")
SETTINGS = VllmModelSettings(max_model_len=256, max_num_seqs=4)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# ---------------------------------------------------------------------- command line


def test_cpu_command() -> None:
    argv = build_command(PY, Path("/repo/llama"), "llama", 8123, SETTINGS, device_kind="cpu",
                         gpu_memory_utilization=None, kv_cache_bytes=64 * 2**20)
    assert argv[:3] == [str(PY), "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(argv, "--model") == "/repo/llama"
    assert _flag(argv, "--served-model-name") == "llama"
    assert _flag(argv, "--host") == "127.0.0.1"
    assert _flag(argv, "--port") == "8123"
    assert _flag(argv, "--max-model-len") == "256"
    assert _flag(argv, "--max-num-seqs") == "4"
    assert _flag(argv, "--max-num-batched-tokens") == "2048"
    assert _flag(argv, "--kv-cache-memory-bytes") == str(64 * 2**20)
    assert _flag(argv, "--dtype") == "float32"
    assert "--enforce-eager" in argv  # always on CPU
    assert "--disable-uvicorn-access-log" in argv
    assert "--gpu-memory-utilization" not in argv
    assert "--enable-sleep-mode" not in argv
    assert "--disable-log-requests" not in argv  # gone in vLLM 0.32 (requests are not logged)
    assert _flag(argv, "--middleware") == "modelium_vllm_guard.KeyGuard"  # the key on every path
    assert "--api-key" not in argv  # the key travels in the environment only


def test_cpu_needs_a_kv_size() -> None:
    with pytest.raises(ValueError, match="KV"):
        build_command(PY, "/m", "m", 1, SETTINGS, device_kind="cpu", gpu_memory_utilization=None, kv_cache_bytes=None)


def test_gpu_command_share_with_4_decimals_no_eager_no_kv_flag_by_default() -> None:
    argv = build_command(PY, "/m", "m", 8100, VllmModelSettings(max_model_len=4096), device_kind="gpu",
                         gpu_memory_utilization=0.123456, kv_cache_bytes=4 * 2**30)
    assert _flag(argv, "--gpu-memory-utilization") == "0.1235"
    assert "--enforce-eager" not in argv
    assert "--enable-sleep-mode" not in argv
    # the share decides the KV cache unless the model sets an explicit budget
    assert "--kv-cache-memory-bytes" not in argv
    assert _flag(argv, "--dtype") == "auto"
    assert _flag(argv, "--max-num-batched-tokens") == "4096"
    assert "--tensor-parallel-size" not in argv


def test_gpu_command_eager_sleep_mode_explicit_kv_and_tensor_parallel() -> None:
    settings = VllmModelSettings(enforce_eager=True, park=True, kv_cache_bytes=2**30, dtype="bfloat16")
    argv = build_command(PY, "/m", "m", 8100, settings, device_kind="gpu", gpu_memory_utilization=0.45,
                         kv_cache_bytes=2**30, tensor_parallel_size=2)
    assert "--enforce-eager" in argv and "--enable-sleep-mode" in argv
    assert _flag(argv, "--kv-cache-memory-bytes") == str(2**30)
    assert _flag(argv, "--tensor-parallel-size") == "2"
    assert _flag(argv, "--dtype") == "bfloat16"
    assert _flag(argv, "--gpu-memory-utilization") == "0.4500"


def test_gpu_needs_a_valid_share() -> None:
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        build_command(PY, "/m", "m", 1, SETTINGS, device_kind="gpu", gpu_memory_utilization=None, kv_cache_bytes=1)
    with pytest.raises(ValueError):
        build_command(PY, "/m", "m", 1, SETTINGS, device_kind="gpu", gpu_memory_utilization=1.2, kv_cache_bytes=1)
    with pytest.raises(ValueError):
        build_command(PY, "/m", "m", 1, SETTINGS, device_kind="cuda", gpu_memory_utilization=0.5, kv_cache_bytes=1)


def test_extra_args_come_last() -> None:
    argv = build_command(PY, "/m", "m", 1, SETTINGS, device_kind="cpu", gpu_memory_utilization=None,
                         kv_cache_bytes=1, extra_args=["--seed", "7", "--max-num-seqs", "2"])
    assert argv[-4:] == ["--seed", "7", "--max-num-seqs", "2"]  # argparse keeps the last value


@pytest.mark.parametrize("extra", [["--api-key", "mine"], ["--api-key=mine"]])
def test_extra_args_cannot_set_the_key(extra: list[str]) -> None:
    with pytest.raises(ValueError, match="--api-key"):
        build_command(PY, "/m", "m", 1, SETTINGS, device_kind="cpu", gpu_memory_utilization=None,
                      kv_cache_bytes=1, extra_args=extra)


def test_unset_max_model_len_is_left_to_vllm() -> None:
    argv = build_command(PY, "/m", "m", 1, VllmModelSettings(max_model_len=None), device_kind="cpu",
                         gpu_memory_utilization=None, kv_cache_bytes=1)
    assert "--max-model-len" not in argv and "--max-num-batched-tokens" not in argv


@pytest.mark.parametrize(("setting", "model", "expected"), [
    ("auto", "float32", "float32"),  # vLLM's own auto would downcast to bf16 on CPU
    ("auto", "bfloat16", "bfloat16"),
    ("auto", "float16", "float32"),
    ("auto", None, "float32"),
    ("float16", "bfloat16", "float32"),
    ("half", "float32", "float32"),
    ("bfloat16", "float32", "bfloat16"),
    ("float32", "bfloat16", "float32"),
])
def test_cpu_dtype(setting: str, model: str | None, expected: str) -> None:
    assert served_dtype(setting, model, device_kind="cpu") == expected


def test_gpu_dtype_is_passed_through() -> None:
    assert served_dtype("auto", "float32", device_kind="gpu") == "auto"
    assert served_dtype("float16", "bfloat16", device_kind="gpu") == "float16"


def test_pdeathsig_wrapper_execs_the_command() -> None:
    argv = pdeathsig_command(["/venv/bin/python", "-m", "x"], python="/venv/bin/python")
    assert argv[0] == "/venv/bin/python" and argv[1] == "-c"
    assert argv[3:] == [str(os.getpid()), "/venv/bin/python", "-m", "x"]


# ---------------------------------------------------------------------- environment


def test_env_on_cpu(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "MODELIUM_GATEWAY__PORT": "1", "MODELIUM_STATE_DIR": "/x",
            "CUDA_VISIBLE_DEVICES": "0,1", "VLLM_SERVER_DEV_MODE": "1", "HOME": "/root",
            "VLLM_API_KEY": "inherited", "RAY_AUTH_TOKEN": "ray-secret", "PYTHONPATH": "/a:/b"}
    env = build_env(base, gpu_indices=[], cache_dir=tmp_path, enable_sleep_mode=False, api_key="k3y")
    assert env["VLLM_API_KEY"] == "k3y" and "RAY_AUTH_TOKEN" not in env  # its own key, nobody else's secret
    assert env["PYTHONPATH"].split(os.pathsep) == [str(GUARD_DIR), "/a", "/b"]
    assert sorted(p.name for p in GUARD_DIR.glob("*.py")) == ["modelium_vllm_guard.py"]  # nothing else leaks in
    assert not [k for k in env if k.startswith("MODELIUM_")]
    assert env["PATH"] == "/bin" and env["HOME"] == "/root"
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # a CPU server must not take a GPU
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "VLLM_SERVER_DEV_MODE" not in env  # no /sleep without park
    for key in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "HF_HOME", "XDG_CACHE_HOME"):
        assert Path(env[key]).is_relative_to(tmp_path), key
    assert env["HF_HUB_OFFLINE"] == "1"
    assert base["MODELIUM_STATE_DIR"] == "/x"  # the caller's mapping is untouched


def test_env_on_gpus_with_sleep_mode(tmp_path: Path) -> None:
    env = build_env({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, gpu_indices=[2, 3], cache_dir=tmp_path,
                    enable_sleep_mode=True, api_key="k3y")
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["VLLM_SERVER_DEV_MODE"] == "1"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in env
    with pytest.raises(ValueError, match="key"):
        build_env({}, gpu_indices=[], cache_dir=tmp_path, enable_sleep_mode=False, api_key="")


# ---------------------------------------------------------------------- resolve_python / probe


def _fake_python(path: Path, body: str) -> Path:
    """An executable that answers the probe like a vLLM interpreter would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


_ANSWER = r"""
import json, os, sys
venv = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # not bin/: its mtime is in the key
count = os.path.join(venv, "probe-count")
with open(count, "a") as f:
    f.write("x")
os.makedirs(os.path.join(venv, "pkg"), exist_ok=True)
print("noise before the answer")
print("MODELIUM_PROBE " + json.dumps({"version": "0.32.0", "architectures": ["LlamaForCausalLM", "GPT2LMHeadModel"],
      "device": "cpu", "package_dir": os.path.join(venv, "pkg")}))
"""


def test_resolve_python_auto_and_explicit(tmp_path: Path) -> None:
    assert resolve_python("auto", tmp_path) is None
    venv_python = _fake_python(tmp_path / ".venvs/vllm/bin/python", "")
    assert resolve_python("auto", tmp_path) == venv_python
    assert resolve_python(str(venv_python), Path("/elsewhere")) == venv_python
    assert resolve_python(".venvs/vllm/bin/python", tmp_path) == venv_python  # relative to the project
    not_executable = tmp_path / "python-file"
    not_executable.write_text("")
    assert resolve_python(str(not_executable), tmp_path) is None
    assert resolve_python(str(tmp_path / "missing"), tmp_path) is None


def test_probe_reads_version_architectures_device_and_caches_them(tmp_path: Path) -> None:
    python = _fake_python(tmp_path / "venv/bin/python", _ANSWER)
    state = tmp_path / "state"
    install = probe(python, state_dir=state)
    assert install == VllmInstall(python=python, version="0.32.0",
                                  architectures=frozenset({"LlamaForCausalLM", "GPT2LMHeadModel"}), device="cpu")
    assert install.serves("LlamaForCausalLM") and not install.serves("BertModel") and not install.serves(None)
    assert probe(python, state_dir=state) == install
    assert (tmp_path / "venv/probe-count").read_text() == "x"  # the second answer came from the cache
    cache = json.loads((state / "vllm/probe-cache.json").read_text())
    assert len(cache) == 1


def test_probe_cache_is_dropped_when_vllm_is_reinstalled(tmp_path: Path) -> None:
    python = _fake_python(tmp_path / "venv/bin/python", _ANSWER)
    state = tmp_path / "state"
    probe(python, state_dir=state)
    time.sleep(0.01)
    (tmp_path / "venv/pkg/new_file.py").write_text("")  # the package folder changed
    probe(python, state_dir=state)
    assert (tmp_path / "venv/probe-count").read_text() == "xx"
    assert probe(python) is not None  # no state_dir: no cache, still works
    assert (tmp_path / "venv/probe-count").read_text() == "xxx"


def test_probe_failure_gives_a_reason(tmp_path: Path) -> None:
    broken = _fake_python(tmp_path / "bin/python", "import sys; sys.exit('No module named vllm')")
    install, reason = probe_with_reason(broken, state_dir=tmp_path)
    assert install is None and "No module named vllm" in reason and "exit 1" in reason
    assert probe(tmp_path / "missing") is None
    slow = _fake_python(tmp_path / "slow/python", "import time; time.sleep(30)")
    install, reason = probe_with_reason(slow, timeout=0.5)
    assert install is None and "took more than" in reason
