"""Broken drops, as nasty as we could make them, each with the words its reason must contain.

Shared by the unit tests (the analysis and the drop handler, ``small`` cases) and the e2e
test (everything, into a running daemon). Each case builds one entry at a given path
(usually in a staging folder, then renamed into ``incoming/`` so it appears at once).
``outcome``: "quarantined" (``failed/NAME/REASON.txt``), "failed" (registered, then failed
by the scheduler with the numbers) or "served" (a loose .onnx).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3
BERT = {"architectures": ["BertForSequenceClassification"], "model_type": "bert",
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64}
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
         "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
         "num_hidden_layers": 2, "vocab_size": 1000, "max_position_embeddings": 256,
         "torch_dtype": "float32"}
TRITON_CONFIG = 'name: "m"\nbackend: "python"\nmax_batch_size: 0\n'


@dataclass(frozen=True)
class Case:
    entry: str  # name under incoming/
    expect: str  # words the reason must contain
    build: Callable[[Path], Any]
    outcome: str = "quarantined"
    model: str | None = None  # the model / quarantine name, when it is not the entry's
    small: bool = True  # cheap enough for unit tests (no huge files, no writers)

    @property
    def name(self) -> str:
        return self.model or self.entry


def folder(path: Path, files: dict[str, bytes | str]) -> Path:
    for rel, content in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def safetensors(header: dict[str, Any], data: bytes, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def tensor(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def unix_socket(path: Path) -> Path:
    """A socket file at ``path`` (bound in a short temp dir: AF_UNIX paths are short)."""
    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp")) / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(short))
    os.rename(short, path)
    short.parent.rmdir()
    return path


def slow_writer(path: Path) -> subprocess.Popen:
    """A FIFO at ``path`` with a writer that would send a byte a second forever (it
    blocks in open() until someone reads, which nobody must). Kill it afterwards."""
    fifo(path)
    code = ("import sys, time\nf = open(sys.argv[1], 'wb', buffering=0)\n"
            "while True:\n    f.write(b'{')\n    time.sleep(1)\n")
    return subprocess.Popen([sys.executable, "-c", code, str(path)])


def many_files(path: Path, count: int) -> Path:
    path.mkdir(parents=True)
    for i in range(count):
        (path / f"f{i:05d}.txt").write_bytes(b"x")
    return path


def deep_folders(path: Path, depth: int) -> Path:
    leaf = path.joinpath(*["d"] * depth)
    leaf.mkdir(parents=True)
    (leaf / "config.json").write_text("{}")
    return path


def char_device(path: Path) -> Path:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # what /dev/zero is
    return path


def can_mknod() -> bool:
    probe = Path(tempfile.mkdtemp()) / "dev"
    try:
        char_device(probe)
        return True
    except (PermissionError, OSError):
        return False
    finally:
        if os.path.lexists(probe):
            probe.unlink()
        probe.parent.rmdir()


def _config(path: Path, raw: bytes | str) -> Path:
    return folder(path, {"config.json": raw})


def _with_weights(config: dict[str, Any], weights: bytes, extra: dict[str, bytes | str] | None = None):
    return lambda p: folder(p, {"config.json": json.dumps(config), "model.safetensors": weights,
                                **(extra or {})})


def _bad_index(path: Path, listed: list[str], present: list[str]) -> Path:
    emb = safetensors({"a": tensor("F32", [2], 0, 8)}, b"\0" * 8)
    files: dict[str, bytes | str] = {"config.json": json.dumps(LLAMA)}
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {}, "weight_map": {f"t{i}": name for i, name in enumerate(listed)}})
    for name in present:
        files[name] = emb
    return folder(path, files)


def _devzero_link(path: Path) -> Path:
    folder(path, {"model.safetensors": safetensors({}, b"")})
    (path / "config.json").symlink_to("/dev/zero")
    return path


def _link_inside(target: str) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        _config(path, json.dumps(LLAMA))
        (path / "extra").symlink_to(target)
        return path
    return build


def _reason_link(victim: Path) -> Callable[[Path], Path]:
    """A bad drop whose own REASON.txt links to ``victim``: quarantine must not write it."""
    def build(path: Path) -> Path:
        _config(path, "{broken")
        (path / "REASON.txt").symlink_to(victim)
        return path
    return build


def _fifo_config(path: Path) -> Path:
    path.mkdir()
    fifo(path / "config.json")
    return path


def _loose(content: bytes) -> Callable[[Path], Path]:
    return lambda p: p.write_bytes(content) and p


HUGE = {**BERT, "hidden_size": 4_000_000, "intermediate_size": 16_000_000,
        "num_hidden_layers": 90_000, "vocab_size": 1000}  # ~1.7e19 parameters


def cases(victim: Path, *, with_devices: bool | None = None) -> list[Case]:
    """Every case; ``victim`` is a file the REASON.txt-link case points at (it must stay
    unchanged). Device files need root: ``with_devices`` None probes for it."""
    dtype_lie = safetensors({"w": tensor("Q4", [2], 0, 2)}, b"\0\0")
    outside = safetensors({"w": tensor("F32", [4], 0, 16)}, b"\0" * 8)
    overlap = safetensors({"a": tensor("F32", [2], 0, 8), "b": tensor("F32", [2], 4, 12)}, b"\0" * 12)
    long_header = safetensors({}, b"", length=10**12)
    embedding = safetensors({"model.embed_tokens.weight": tensor("F32", [999, 64], 0, 999 * 64 * 4)},
                            b"\0" * (999 * 64 * 4))
    out = [
        Case("deep-json", "nests JSON more deeply", lambda p: _config(p, "[" * 200_000 + "]" * 200_000)),
        Case("deep-object", "nests JSON more deeply", lambda p: _config(p, '{"a":' * 500 + "1" + "}" * 500)),
        Case("not-utf8", "not UTF-8", lambda p: _config(p, b'{"model_type": "\xff\xfe\xfd"}')),
        Case("bom", "byte-order mark", lambda p: _config(p, b"\xef\xbb\xbf" + json.dumps(LLAMA).encode())),
        Case("utf16", "UTF-16", lambda p: _config(p, json.dumps(LLAMA).encode("utf-16"))),
        Case("not-an-object", "must contain a JSON object", lambda p: _config(p, "[1, 2, 3]")),
        Case("nan-sizes", "hidden_size must be an integer",
             lambda p: _config(p, json.dumps({**LLAMA, "hidden_size": float("nan")}))),
        Case("infinite-sizes", "must be an integer",
             lambda p: _config(p, json.dumps({**LLAMA, "num_hidden_layers": float("inf")}))),
        Case("huge-integer", "not usable JSON", lambda p: _config(p, '{"hidden_size": ' + "9" * 5000 + "}")),
        Case("absurd-dimension", "beyond any real model",
             lambda p: _config(p, json.dumps({**LLAMA, "hidden_size": 10**30}))),
        Case("truncated-json", "not valid JSON", lambda p: _config(p, json.dumps(LLAMA)[:-7])),
        Case("empty-config", "not valid JSON", lambda p: _config(p, b"")),
        Case("binary-config", "not UTF-8", lambda p: _config(p, bytes(range(256)) * 4)),
        Case("huge-config", "more than the 8.0 MiB",
             lambda p: (p.mkdir(), sparse(p / "config.json", GIB)), small=False),
        Case("fifo-config", "FIFO", _fifo_config),
        Case("slow-fifo-config", "FIFO",
             lambda p: (p.mkdir(), slow_writer(p / "config.json"))[1], small=False),
        Case("devzero-config", "outside the drop", _devzero_link),
        Case("link-to-etc", "outside the drop", _link_inside("/etc")),
        Case("dangling-inside", "dangling", _link_inside("nowhere")),
        Case("link-loop", "dangling or a loop",
             lambda p: (_config(p, "{}"), (p / "a").symlink_to("b"), (p / "b").symlink_to("a"))),
        Case("reason-link", "outside the drop", _reason_link(victim)),
        Case("config-is-a-folder", "config.json is a directory",
             lambda p: folder(p, {"config.json/x": "{}", "model.safetensors": safetensors({}, b"")})),
        Case("unknown-dtype", "which safetensors does not define", _with_weights(LLAMA, dtype_lie)),
        Case("offsets-outside", "truncated", _with_weights(LLAMA, outside)),
        Case("overlapping", "overlapping offsets", _with_weights(LLAMA, overlap)),
        Case("header-too-long", "header claims", _with_weights(LLAMA, long_header)),
        Case("embedding-lies", "do not belong together", _with_weights(LLAMA, embedding)),
        Case("sparse-weights", "header is not a JSON object",
             lambda p: (_config(p, json.dumps(LLAMA)), sparse(p / "model.safetensors", GIB)), small=False),
        Case("missing-shard", "not in the folder",
             lambda p: _bad_index(p, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
                                  ["model-00001-of-00002.safetensors"])),
        Case("unlisted-shard", "does not list them",
             lambda p: _bad_index(p, ["model-00001-of-00002.safetensors"],
                                  ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])),
        Case("index-escapes", "not a .safetensors file name",
             lambda p: _bad_index(p, ["../../../etc/passwd"], [])),
        Case("pbtxt-unclosed", "config.pbtxt cannot be parsed",
             lambda p: folder(p, {"config.pbtxt": TRITON_CONFIG + 'input [ { name: "x" ', "1/model.py": ""})),
        Case("pbtxt-garbage", "config.pbtxt cannot be parsed",
             lambda p: folder(p, {"config.pbtxt": "name: @@@ {{{", "1/model.py": ""})),
        Case("pbtxt-count", "count must be",
             lambda p: folder(p, {"config.pbtxt": TRITON_CONFIG + "instance_group [{count: -3}]",
                                  "1/model.py": ""})),
        Case("pbtxt-no-version", "no numeric version folder",
             lambda p: folder(p, {"config.pbtxt": TRITON_CONFIG})),
        Case("pbtxt-binary", "not UTF-8", lambda p: folder(p, {"config.pbtxt": b"\xff" * 64, "1/x": ""})),
        Case("not-a-model", "no config.json", lambda p: folder(p, {"notes.txt": "hello"})),
        Case("deep-folders", "nested more than 32 levels", lambda p: deep_folders(p, 40)),
        Case("many-files", "more than 20000 files", lambda p: many_files(p, 30_000), small=False),
        Case("socket-inside", "socket", lambda p: (_config(p, "{}"), unix_socket(p / "weights.bin"))),
        Case("huge-model", "more than any device can hold",
             lambda p: _config(p, json.dumps(HUGE)), outcome="failed"),
        # Entries that are not folders.
        Case("etc-link", "symbolic link to /etc", lambda p: p.symlink_to("/etc")),
        Case("zero-link", "symbolic link to /dev/zero", lambda p: p.symlink_to("/dev/zero")),
        Case("dangling-link", "does not exist", lambda p: p.symlink_to("/nonexistent/model")),
        Case("loose-fifo", "FIFO", fifo),
        Case("loose-socket", "socket", unix_socket),
        Case("notes.txt", "loose file", _loose(b"this is not a model\n")),
        Case("weights.safetensors", "loose file", _loose(safetensors({}, b""))),
        Case("\N{SKULL}\N{SKULL}", "cannot derive a model name",
             lambda p: folder(p, {"config.json": json.dumps(LLAMA)}),
             model="unnamed-" + __import__("hashlib").sha1("\N{SKULL}\N{SKULL}".encode()).hexdigest()[:8]),
        Case(os.fsdecode(b"\xff\xfe-weird"), "not valid JSON", lambda p: _config(p, "{"), model="weird"),
        Case(os.fsdecode(b"loose-\xff.bin"), "loose file", _loose(b"x"), model="loose-.bin"),
    ]
    if with_devices if with_devices is not None else can_mknod():
        out += [
            Case("device-weights", "character device",
                 lambda p: (_config(p, "{}"), char_device(p / "model.safetensors"))),
            Case("loose-device", "character device", char_device),
        ]
    return out
