"""Analyse a drop in a child process with a time budget, so no drop can wedge the daemon.

The analyzer only reads regular files, each with a size bound, but a drop is untrusted
and a thread cannot be interrupted: a file on a hung network mount, or a bug meeting an
input nobody thought of, would hold the thread (and with it the drop pipeline and the
interpreter's exit) forever. So the daemon runs :func:`check_drop` here, in
``python -m modelium.analysis.isolated``, and kills the child when its time is up or when
the caller is cancelled (shutdown). The child also gets the parent-death signal, so it
never outlives a killed daemon.

Protocol: the child prints one JSON object, ``{"profile": {...}}`` or ``{"reason": "..."}``,
and exits 0; anything else is reported as the analysis crashing, with its last line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from modelium.analysis.analyzer import analyze_folder
from modelium.analysis.contents import MAX_FILES_PER_DROP, inspect_contents
from modelium.analysis.profile import InvalidModelError, ModelProfile

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 30.0
_MAX_OUTPUT_BYTES = 4 * 1024 * 1024


def check_drop(path: Path, name: str, *, max_files: int = MAX_FILES_PER_DROP) -> ModelProfile:
    """Everything a drop must pass before it is filed: its entries (count, special files,
    links; see :mod:`.contents`), then the analyzer. ``path`` is a folder, or a single
    ``.onnx`` file (profiled as the folder it becomes)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        inspect_contents(path, max_files=max_files)
    return analyze_folder(path, name)


async def analyze_isolated(
    path: Path,
    name: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    max_files: int = MAX_FILES_PER_DROP,
    python: str = sys.executable,
) -> ModelProfile:
    """:func:`check_drop` in a child process, killed after ``timeout`` seconds or when the
    calling task is cancelled. Raises InvalidModelError with the reason (a timeout and a
    crash are reasons too)."""
    argv = [python, "-m", "modelium.analysis.isolated", str(path), name, str(max_files),
            str(os.getpid())]
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        raise InvalidModelError(
            f"analysis did not finish within {timeout:g} s (a file that cannot be read, "
            "or far too many?); it was stopped"
        ) from None
    finally:
        if process.returncode is None:  # timed out, or the caller was cancelled
            _kill(process)
            await asyncio.shield(process.wait())
    return _answer(stdout, stderr, process.returncode, name)


def _kill(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _answer(stdout: bytes, stderr: bytes, returncode: int | None, name: str) -> ModelProfile:
    last = (stderr.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:300]
    try:
        answer = json.loads(stdout[:_MAX_OUTPUT_BYTES]) if returncode == 0 else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        if stderr:
            log.warning("analysis of %s crashed (exit %s):\n%s", name, returncode,
                        stderr.decode("utf-8", "replace")[-4000:])
        raise InvalidModelError(
            f"analysis crashed (exit status {returncode}){': ' + last if last else ''}"
        )
    if "reason" in answer:
        raise InvalidModelError(str(answer["reason"]))
    return profile_from_dict(answer["profile"])


def profile_from_dict(data: dict[str, Any]) -> ModelProfile:
    data = dict(data)
    data["warnings"] = tuple(data.get("warnings") or ())
    return ModelProfile(**data)


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the daemon goes, even on its SIGKILL (Linux; best effort elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the daemon died before prctl took effect
        sys.exit(1)


def main(argv: list[str]) -> int:
    path, name, max_files, parent = argv
    _die_with_parent(int(parent))
    try:
        answer: dict[str, Any] = {"profile": check_drop(Path(path), name,
                                                        max_files=int(max_files)).to_dict()}
    except InvalidModelError as exc:
        answer = {"reason": str(exc)}
    except OSError as exc:
        answer = {"reason": f"a file in the drop cannot be read ({exc.strerror or exc})"}
    except RecursionError:
        answer = {"reason": "the drop is nested too deeply to analyse"}
    except Exception as exc:  # noqa: BLE001 - a bug must still give the user one line
        traceback.print_exc()
        answer = {"reason": f"analysis failed unexpectedly ({type(exc).__name__}: "
                            f"{str(exc)[:200]})"}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
