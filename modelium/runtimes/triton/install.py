"""Where tritonserver comes from: ``PATH`` (or a path in ``triton.executable``), else the
binary bundled in the ``nvidia-pytriton`` wheel of the project's ``.venvs/triton``
(``make triton``), which also ships the python backend and its stubs.

The python backend needs three things next to the server, all found here:

* the backend folder (``libtriton_python.so`` + ``triton_python_backend_utils.py``);
* the stub binary built for the Python that runs the models
  (``python_backend_stubs/3.X/triton_python_backend_stub``): it embeds libpython 3.X;
* that Python: a venv with torch / transformers / onnxruntime (the models' imports). Its
  ``bin`` goes first on ``PATH`` and its libpython's folder first on ``LD_LIBRARY_PATH``
  (see ``server.build_env``).

A **full install** is a ``tritonserver`` from ``PATH`` or ``triton.executable`` laid out as
NVIDIA's release is (``/opt/tritonserver/bin/tritonserver`` next to
``/opt/tritonserver/backends/{onnxruntime,tensorrt,pytorch,python,...}``, as in the NGC
container or the release tarball). Its own backends folder is then the server's
``--backend-directory`` as it is (:attr:`TritonInstall.backends_dir`), so a dropped
``config.pbtxt`` of any platform that install has can load, and :attr:`TritonInstall.backends`
says which ones exist (the brain fails a model whose backend is absent, naming it, and ONNX
folders get the native onnxruntime backend when it is there). Without a full install (the
pytriton wheel) only the python backend exists and Modelium links it, with the stub for the
models' Python, into a private backend folder (``server.build_backend_dir``).

A backend ``X`` exists when ``backends/X/libtriton_X.so`` does, or ``backends/X/model.py``
(a Python-based backend such as vLLM's, run by the python backend).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_VENV = Path(".venvs/triton")
#: Where NVIDIA's release keeps its backends when the binary's own ``../backends`` is absent
#: (a ``tritonserver`` linked into ``/usr/local/bin``, say).
SYSTEM_BACKEND_DIRS: tuple[Path, ...] = (Path("/opt/tritonserver/backends"),)
PYTHON_BACKEND = "python"

_PY_INFO = (
    "import json, sys, sysconfig; print(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
    "'libdir': sysconfig.get_config_var('LIBDIR') or '', 'prefix': sys.prefix}))"
)


@dataclass(frozen=True)
class TritonInstall:
    """A runnable tritonserver and what its python backend needs."""

    executable: Path
    #: Folder holding ``libtriton_python.so`` and ``triton_python_backend_utils.py``
    #: (None: use the server's own ``--backend-directory`` default).
    python_backend_dir: Path | None
    #: ``triton_python_backend_stub`` for :attr:`python_version` (None: the one in
    #: :attr:`python_backend_dir` is used as it is).
    stub: Path | None
    #: Interpreter of the venv the python-backend models run in (None: whatever is on PATH).
    python: Path | None
    python_version: str | None = None
    #: Folder of that interpreter's libpython (first on LD_LIBRARY_PATH).
    python_libdir: Path | None = None
    #: Extra shared-library folder of the wheel (``nvidia_pytriton.libs``), if any.
    libs_dir: Path | None = None
    bundled: bool = False
    #: A full install's own backends folder, given to the server as it is (None: Modelium
    #: builds a private one holding only the python backend).
    backends_dir: Path | None = None
    #: The backends this server can load (folder names under its backend directory).
    backends: frozenset[str] = frozenset({PYTHON_BACKEND})


def available_backends(folder: Path) -> frozenset[str]:
    """Backend names under ``folder``: subfolders holding ``libtriton_NAME.so`` or a
    Python-based backend's ``model.py``."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return frozenset()
    return frozenset(d.name for d in entries if d.is_dir()
                     and ((d / f"libtriton_{d.name}.so").exists() or (d / "model.py").is_file()))


def _own_backends_dir(exe: Path) -> Path | None:
    """The release layout's backends folder for ``exe``: ``../backends``, else a system one."""
    for candidate in (exe.parent.parent / "backends", *SYSTEM_BACKEND_DIRS):
        if available_backends(candidate):
            return candidate
    return None


def _python_info(python: Path) -> dict[str, str] | None:
    try:
        out = subprocess.run([str(python), "-c", _PY_INFO], capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        log.warning("cannot ask %s for its version: %s", python, exc)
        return None


def _site_packages(venv: Path) -> list[Path]:
    return sorted((venv / "lib").glob("python3*/site-packages"))


def _pytriton_dir(venv: Path) -> Path | None:
    for site in _site_packages(venv):
        candidate = site / "pytriton" / "tritonserver"
        if (candidate / "bin" / "tritonserver").exists():
            return candidate
    return None


def locate_tritonserver(executable_setting: str, project_root: Path) -> TritonInstall | None:
    """The server named by ``executable_setting`` (a path, or a name on PATH), else the one
    bundled in ``project_root/.venvs/triton``; None when neither exists."""
    venv = Path(project_root).resolve() / DEFAULT_VENV
    venv_python = venv / "bin" / "python"
    info = _python_info(venv_python) if venv_python.exists() else None

    named = Path(executable_setting).expanduser()
    found = str(named) if named.is_absolute() or os.sep in executable_setting else shutil.which(executable_setting)
    if found and Path(found).is_file() and os.access(found, os.X_OK):
        exe = Path(found).resolve()
        backends = _own_backends_dir(exe)
        names = available_backends(backends) if backends is not None else frozenset()
        pytriton = _pytriton_dir(venv)
        wheel = pytriton is not None and exe.parent.parent == pytriton.resolve()
        # The wheel's binary (named by path) keeps the private route: its python backend
        # needs the stub of the venv's Python linked next to it.
        full = backends is not None and not wheel
        stub = _stub(pytriton, info) if wheel and pytriton is not None else None
        python_dir = backends / PYTHON_BACKEND if backends is not None and PYTHON_BACKEND in names else None
        if full:
            log.info("tritonserver %s is a full install; backends from %s: %s",
                     exe, backends, ", ".join(sorted(names)))
        return TritonInstall(
            executable=exe,
            python_backend_dir=python_dir,
            stub=stub,
            python=venv_python if info else None,
            python_version=info["version"] if info else None,
            python_libdir=Path(info["libdir"]) if info and info.get("libdir") else None,
            bundled=False,
            backends_dir=backends if full else None,
            backends=names if full else frozenset({PYTHON_BACKEND}),
        )

    pytriton = _pytriton_dir(venv)
    if pytriton is None:
        return None
    libs = next((d for site in _site_packages(venv) for d in [site / "nvidia_pytriton.libs"] if d.is_dir()), None)
    return TritonInstall(
        executable=pytriton / "bin" / "tritonserver",
        python_backend_dir=pytriton / "backends" / "python",
        stub=_stub(pytriton, info),
        python=venv_python if info else None,
        python_version=info["version"] if info else None,
        python_libdir=Path(info["libdir"]) if info and info.get("libdir") else None,
        libs_dir=libs,
        bundled=True,
    )


def _stub(pytriton: Path, info: dict[str, str] | None) -> Path | None:
    if info is None:
        return None
    stub = pytriton / "python_backend_stubs" / info["version"] / "triton_python_backend_stub"
    return stub if stub.exists() else None
