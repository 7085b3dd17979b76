"""Where vLLM comes from: an interpreter of its own virtual environment, probed once.

vLLM pins torch and transformers versions that clash with the project's, so it never
lives in the project venv: ``vllm.python`` names an interpreter that has it (``auto`` =
the project's ``.venvs/vllm``, which ``make test`` / ``make serve`` create). The daemon
never imports vLLM itself; it runs that interpreter.

:func:`probe` asks the interpreter once for vLLM's version, the architectures it serves
(the brain sends only those causal LMs to vLLM) and whether it is a CUDA or CPU build.
Importing vLLM takes ~8 s on the project's machine, so the answer is cached as JSON under
``state_dir`` and reused while the interpreter and the installed vLLM package are
unchanged (keyed by the interpreter path, its mtime, its ``bin`` folder's mtime and the
mtime of vLLM's package folder: a ``pip install``/``uninstall`` changes the latter two).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from modelium.runtimes.process import child_env

log = logging.getLogger(__name__)

#: Where ``auto`` looks, relative to the project root.
DEFAULT_VENV = Path(".venvs/vllm")
PROBE_CACHE_NAME = "probe-cache.json"

# Printed as one JSON line by the interpreter under probe. Only reads; does not start
# an engine, so it needs no GPU memory.
_PROBE_SCRIPT = r"""
import json, os, sys
import vllm
from vllm.model_executor.models import ModelRegistry
archs = sorted(ModelRegistry.get_supported_archs())
try:
    from vllm.platforms import current_platform
    device = current_platform.device_type or "cpu"
except Exception:
    device = "cpu"
print("MODELIUM_PROBE " + json.dumps({
    "version": vllm.__version__,
    "architectures": archs,
    "device": device,
    "package_dir": os.path.dirname(os.path.abspath(vllm.__file__)),
}))
"""
_PROBE_MARKER = "MODELIUM_PROBE "


@dataclass(frozen=True)
class VllmInstall:
    """An interpreter that can run ``python -m vllm.entrypoints.openai.api_server``."""

    python: Path
    version: str
    architectures: frozenset[str]
    device: Literal["cpu", "cuda"]

    def serves(self, architecture: str | None) -> bool:
        return architecture is not None and architecture in self.architectures


def resolve_python(setting: str, project_root: Path) -> Path | None:
    """The interpreter ``vllm.python`` names, or None when there is none to use.

    ``auto`` -> ``project_root/.venvs/vllm/bin/python`` if it exists; any other value is a
    path (relative ones are taken from ``project_root``) used only if it is executable.
    The path is returned un-resolved: a venv's ``bin/python`` is a symlink, and following
    it would lose the venv (and its site-packages).
    """
    if setting == "auto":
        candidate = project_root / DEFAULT_VENV / "bin" / "python"
        return candidate.absolute() if candidate.exists() and os.access(candidate, os.X_OK) else None
    candidate = Path(setting).expanduser()
    if not candidate.is_absolute():
        candidate = project_root / candidate
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate.absolute()
    return None


def probe(python: Path, timeout: float = 120, *, state_dir: Path | None = None) -> VllmInstall | None:
    """What the vLLM under ``python`` is, or None if it cannot be used (reason logged).

    With ``state_dir`` the answer is cached in ``state_dir/vllm/probe-cache.json``.
    """
    install, reason = probe_with_reason(python, timeout, state_dir=state_dir)
    if install is None:
        log.warning("vLLM not usable: %s", reason)
    return install


def probe_with_reason(
    python: Path, timeout: float = 120, *, state_dir: Path | None = None
) -> tuple[VllmInstall | None, str]:
    """Like :func:`probe`, also returning a one-line reason (for the brain's decisions)."""
    python = Path(python)
    cache_path = state_dir / "vllm" / PROBE_CACHE_NAME if state_dir is not None else None
    key = _cache_key(python)
    if key is None:
        return None, f"{python} does not exist"
    if cache_path is not None:
        cached = _read_cache(cache_path, key, python)
        if cached is not None:
            return cached, f"vLLM {cached.version} ({cached.device}) at {python} (cached probe)"

    env = child_env(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                "PYTHONUNBUFFERED": "1"})
    if state_dir is not None:  # importing vLLM may create its cache dirs: keep them ours
        cache_root = state_dir / "vllm" / "cache"
        env.update({"VLLM_CACHE_ROOT": str(cache_root / "vllm"), "XDG_CACHE_HOME": str(cache_root)})
    try:
        with tempfile.TemporaryDirectory(prefix="modelium-vllm-probe-") as cwd:
            done = subprocess.run(
                [str(python), "-c", _PROBE_SCRIPT], cwd=cwd, env=env, capture_output=True,
                text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            )
    except subprocess.TimeoutExpired:
        return None, f"probing vLLM with {python} took more than {timeout:.0f}s"
    except OSError as exc:
        return None, f"cannot run {python}: {exc}"
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(_PROBE_MARKER)), None)
    if done.returncode != 0 or line is None:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        return None, f"{python} cannot import vLLM (exit {done.returncode}): {tail}"
    data = json.loads(line[len(_PROBE_MARKER):])
    install = _install_from(python, data)
    if cache_path is not None:
        _write_cache(cache_path, key, data)
    return install, f"vLLM {install.version} ({install.device}) at {python}"


def _install_from(python: Path, data: dict) -> VllmInstall:
    device = "cuda" if data.get("device") == "cuda" else "cpu"
    return VllmInstall(python=python, version=str(data["version"]),
                       architectures=frozenset(data["architectures"]), device=device)


def _mtime(path: Path, *, follow: bool = True) -> int | None:
    try:
        return (path.stat() if follow else path.lstat()).st_mtime_ns
    except OSError:
        return None


def _cache_key(python: Path) -> str | None:
    own = _mtime(python, follow=False)
    if own is None or _mtime(python) is None:
        return None
    return f"{python.absolute()}|{own}|{_mtime(python.parent)}"


def _read_cache(path: Path, key: str, python: Path) -> VllmInstall | None:
    try:
        entries = json.loads(path.read_text())
        data = entries[key]
        # vLLM reinstalled in place (same bin dir): its package folder was rewritten.
        if _mtime(Path(data["package_dir"])) != data["package_mtime"]:
            return None
        return _install_from(python, data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path, key: str, data: dict) -> None:
    entry = dict(data, package_mtime=_mtime(Path(data["package_dir"])))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            entries = json.loads(path.read_text())
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        # Only the current answer per interpreter: drop stale keys for the same path.
        prefix = key.split("|", 1)[0] + "|"
        entries = {k: v for k, v in entries.items() if not k.startswith(prefix)}
        entries[key] = entry
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        tmp.replace(path)
    except OSError as exc:  # a cache we cannot write only costs time
        log.warning("cannot write the vLLM probe cache %s: %s", path, exc)


#: The source checkout: where `make` creates .venvs/vllm.
PROJECT_ROOT = Path(__file__).resolve().parents[3]


def locate(python_setting: str, *, state_dir: Path | None = None) -> tuple[VllmInstall | None, str]:
    """The vLLM that ``vllm.python`` names, or None with a sentence saying why not
    (used as the brain's reason when LLMs fall back to Ray Serve)."""
    python = resolve_python(python_setting, PROJECT_ROOT)
    if python is None:
        where = PROJECT_ROOT / DEFAULT_VENV / "bin/python" if python_setting == "auto" else python_setting
        return None, (f"vllm is enabled but not installed (no interpreter at {where}; "
                      "`make serve` creates .venvs/vllm)")
    install, detail = probe_with_reason(python, state_dir=state_dir)
    if install is None:
        return None, f"vllm is enabled but not usable: {detail}"
    return install, detail
