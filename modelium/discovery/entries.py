"""What an entry directly under ``incoming/`` is, and what a user gets for it.

A model is a folder. People also drop other things, and every one of them gets an answer
(a model, or a quarantine with a reason), never silence:

* a **folder**: a drop, analysed as usual;
* a **loose ``.onnx`` file**: a model of its own, named after the file (``resnet.onnx`` is
  served as ``resnet``), filed as a folder holding it;
* a **symbolic link** (to a folder or anything else): quarantined, not followed. Following
  it would read, copy or move whatever it names from outside ``incoming/`` (``/etc``,
  another user's models, ``/dev/zero``), of any size; ``cp -rL`` does what the user meant
  in one command, and the reason says so;
* a **special file** (FIFO, socket, device): quarantined unread;
* any **other loose file**: quarantined; a model is a folder.

Only ``lstat`` is used here: nothing is opened and no link is followed.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from modelium.analysis.files import kind_of

FOLDER = "folder"
ONNX_FILE = "onnx-file"
REJECT = "reject"


@dataclass(frozen=True)
class Entry:
    """``kind`` is FOLDER, ONNX_FILE or REJECT; a rejection has a reason and a code."""

    kind: str
    model_name_source: str  # what the model name is derived from
    reason: str = ""
    reason_code: str = ""


def classify_entry(path: Path) -> Entry:
    """Classify ``incoming/NAME`` from ``lstat`` alone."""
    name = path.name
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        return Entry(REJECT, name, f"incoming/{name} cannot be examined ({exc.strerror or exc})",
                     "unreadable")
    if stat.S_ISDIR(mode):
        return Entry(FOLDER, name)
    if stat.S_ISLNK(mode):
        return Entry(REJECT, name, _link_reason(path), "symlink")
    if not stat.S_ISREG(mode):
        return Entry(REJECT, name, (
            f"incoming/{name} is {kind_of(mode)}, not a model folder or file; it was moved "
            "here without being read"), "special-file")
    if name.lower().endswith(".onnx") and len(name) > len(".onnx"):
        return Entry(ONNX_FILE, name[: -len(".onnx")])
    return Entry(REJECT, name, (
        f"incoming/{name} is a loose file; a model is a folder (config.json with its "
        "weights, or a Triton config.pbtxt with version folders) or a single .onnx file: "
        "put this file in a folder with the rest of the model"), "loose-file")


def _link_reason(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    if not os.path.exists(path):  # stat only: a link to a FIFO or a device is not opened
        return (f"incoming/{path.name} is a symbolic link to {target}, which does not exist; "
                "Modelium does not follow links in incoming/")
    return (
        f"incoming/{path.name} is a symbolic link to {target}; Modelium does not follow links "
        "in incoming/ (it would read from outside it), so copy the model in instead: "
        f"cp -rL {os.path.realpath(path)} {path}"
    )
