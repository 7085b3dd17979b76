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

With a ``tritonserver`` from ``PATH`` (e.g. NVIDIA's container), the backend folder next
to it (``../backends`` or ``/opt/tritonserver/backends``) is used as it is.
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
        backends = next((d for d in (exe.parent.parent / "backends", Path("/opt/tritonserver/backends"))
                         if (d / "python" / "libtriton_python.so").exists()), None)
        pytriton = _pytriton_dir(venv)
        stub = _stub(pytriton, info) if pytriton is not None and backends is not None and (exe.parent.parent == pytriton) else None
        return TritonInstall(
            executable=exe,
            python_backend_dir=(backends / "python") if backends is not None else None,
            stub=stub,
            python=venv_python if info else None,
            python_version=info["version"] if info else None,
            python_libdir=Path(info["libdir"]) if info and info.get("libdir") else None,
            bundled=False,
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
