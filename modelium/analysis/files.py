"""Reading a dropped file without trusting it.

A drop is whatever someone put in ``incoming/``: ``config.json`` may be a FIFO (``open()``
blocks until someone writes), a link to ``/dev/zero`` (never ends), a 10 GB file, or JSON
nested a million levels deep. Every read of a drop goes through here, so each one is

* **stat'ed before it is read**: only regular files are read; anything else is a reason.
  Files are opened with ``O_NONBLOCK`` and checked again with ``fstat`` on the open
  descriptor, so a FIFO swapped in between the two looks cannot block us either;
* **bounded**: at most ``limit`` bytes are ever read, and a larger file is a reason;
* **decoded strictly**, with a message that names the file and the problem.

Every failure is an `InvalidModelError` with one sentence a person can act on.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from modelium.analysis.profile import InvalidModelError

KIB = 1024
MIB = 1024 * KIB
# Real config.json files are a few KiB (the largest on the Hub are well under 1 MiB).
MAX_CONFIG_BYTES = 8 * MIB
# A sharded index lists every tensor once: ~100 bytes each, so 32 MiB is ~300 000 tensors.
MAX_INDEX_BYTES = 32 * MIB
# Triton configs are hand-written text; even large ensembles are a few KiB.
MAX_PBTXT_BYTES = 1 * MIB
# Deeper JSON than this is not a model config (HF configs nest 3-4 levels).
MAX_JSON_DEPTH = 64

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO (named pipe)", "a socket", ...)."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def open_regular(path: Path, label: str | None = None) -> int:
    """An fd open for reading on ``path``, which must be a regular file.

    ``stat`` first (never open a FIFO or a device), then open non-blocking and check the
    descriptor itself (the path could have been swapped between the two).
    """
    label = label or path.name
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InvalidModelError(f"{label} cannot be read ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(mode):
        raise InvalidModelError(f"{label} is {kind_of(mode)}, not a regular file")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise InvalidModelError(f"{label} cannot be opened ({exc.strerror or exc})") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InvalidModelError(f"{label} is {kind_of(mode)}, not a regular file")
    return fd


def read_bounded(path: Path, limit: int, label: str | None = None) -> bytes:
    """All of ``path`` (a regular file of at most ``limit`` bytes), or InvalidModelError."""
    label = label or path.name
    fd = open_regular(path, label)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise InvalidModelError(
                f"{label} is {_human(size)}, more than the {_human(limit)} such a file can be"
            )
        chunks, total = [], 0
        while total <= limit:  # the file may grow while we read: never read past limit + 1
            chunk = os.read(fd, min(MIB, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise InvalidModelError(f"{label} cannot be read ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    if total > limit:
        raise InvalidModelError(f"{label} grew past {_human(limit)} while being read")
    return b"".join(chunks)


def decode_utf8(raw: bytes, label: str) -> str:
    """``raw`` as UTF-8 text. A byte-order mark is refused: transformers and vLLM read
    configs with ``encoding="utf-8"`` and ``json.loads`` then fails on the BOM, so a drop
    with one would fail at load time instead of here."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise InvalidModelError(
            f"{label} starts with a UTF-8 byte-order mark; save it as UTF-8 without BOM"
        )
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InvalidModelError(f"{label} is UTF-16 text; save it as UTF-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidModelError(
            f"{label} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from exc


def parse_json(raw: bytes, label: str, *, allow_nan: bool = True) -> Any:
    """Strict UTF-8 JSON of bounded depth; every failure is one sentence naming ``label``.

    NaN and Infinity are accepted (unless ``allow_nan`` is false) as Python's json, and so
    transformers, accepts them in a config; the fields Modelium reads reject them as "not
    an integer". Readers in other languages (the safetensors header parser) refuse them.
    """
    text = decode_utf8(raw, label)
    try:
        data = json.loads(text) if allow_nan else json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InvalidModelError(
            f"{label} is not valid JSON ({exc.msg.lower()}, line {exc.lineno} column {exc.colno})"
        ) from exc
    except RecursionError as exc:
        raise InvalidModelError(
            f"{label} nests JSON more deeply than any config (over {MAX_JSON_DEPTH} levels)"
        ) from exc
    except (ValueError, MemoryError) as exc:
        if "digits" in str(exc):  # Python refuses integers of more than 4300 digits
            raise InvalidModelError(
                f"{label} is not usable JSON (it holds an integer thousands of digits long)"
            ) from exc
        raise InvalidModelError(f"{label} is not usable JSON ({_first_line(exc)})") from exc
    if _too_deep(data):
        raise InvalidModelError(
            f"{label} nests JSON more deeply than any config (over {MAX_JSON_DEPTH} levels)"
        )
    return data


def load_json_object(path: Path, limit: int, label: str | None = None) -> dict[str, Any]:
    """``path`` read with :func:`read_bounded` and parsed by :func:`parse_json`; it must
    hold a JSON object."""
    label = label or path.name
    data = parse_json(read_bounded(path, limit, label), label)
    if not isinstance(data, dict):
        raise InvalidModelError(f"{label} must contain a JSON object, not {_json_type(data)}")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _too_deep(value: Any) -> bool:
    """Whether ``value`` nests deeper than MAX_JSON_DEPTH, found without recursion:
    ``json.loads`` accepts ~1000 levels, and code that walks a config (ours, or a
    runtime's) must never meet a RecursionError."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_JSON_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _human(size: int) -> str:
    if size >= MIB:
        return f"{size / MIB:.1f} MiB"
    if size >= KIB:
        return f"{size / KIB:.1f} KiB"
    return f"{size} bytes"
