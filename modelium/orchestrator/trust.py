"""What in a model folder is code Modelium would run: the trust boundary of ``incoming/``.

Whoever can write to ``incoming/`` can make this daemon run code as its user through:

* a Triton python-backend model (``backend: "python"`` in ``config.pbtxt``): its
  ``model.py`` runs inside a stub process;
* pickled weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ``*.ckpt``): unpickling can
  run arbitrary code (transformers and vLLM may load them).

Not on the list, because nothing runs them: ``*.py`` files of a Hugging Face folder
(``trust_remote_code`` is never set), ONNX graphs, safetensors. ``GET /models/NAME`` lists
what a model runs (``runs_dropped_code``); ``discovery.allow_code: false`` quarantines drops
that have any of it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_FILES_LOOKED_AT = 20000


def dropped_code(folder: Path) -> list[str]:
    """Human-readable entries, one per file that would run as code ([] when none)."""
    folder = Path(folder)
    found: list[str] = []
    python_backend = _python_backend(folder / "config.pbtxt")
    seen = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for filename in sorted(filenames):
            seen += 1
            if seen > MAX_FILES_LOOKED_AT:
                return found + [f"more than {MAX_FILES_LOOKED_AT} files: not all were checked"]
            relative = Path(dirpath, filename).relative_to(folder).as_posix()
            if python_backend and filename.endswith(".py"):
                found.append(f"{relative} (Triton python backend: runs in a stub process)")
            elif filename.lower().endswith(PICKLE_SUFFIXES):
                found.append(f"{relative} (pickled weights: unpickling can run code)")
    return found


def _python_backend(config: Path) -> bool:
    try:
        with config.open("rb") as handle:
            text = handle.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return False
    return re.search(r'^\s*backend\s*:\s*"python"', text, re.MULTILINE) is not None
