"""Read safetensors checkpoints by their headers only.

A safetensors file is `u64 little-endian header length` + `JSON header` + raw tensor bytes.
The header alone gives every tensor's dtype, shape and byte range, so parameter counts and
weight sizes are exact without touching (or even having room for) the tensor data. We also
use the byte ranges to detect truncated downloads: a tensor whose `data_offsets` end past
the end of the file cannot be loaded, and saying so up front beats a crash at load time.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from modelium.analysis.profile import InvalidModelError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# The reference implementation refuses headers above 100 MB; so do we (it also protects
# us from allocating gigabytes because of a corrupt length prefix).
MAX_HEADER_BYTES = 100 * 1024 * 1024

# Bytes per element; sub-byte types are sized from data_offsets instead.
DTYPE_BYTES: dict[str, int] = {
    "F64": 8, "I64": 8, "U64": 8,
    "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1,
}


class TensorInfo(NamedTuple):
    """One tensor as described by a header: (dtype, shape, nbytes)."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class SafetensorsCheckpoint:
    """All tensors of a (possibly sharded) checkpoint, plus the files they came from."""

    tensors: dict[str, TensorInfo]
    files: tuple[Path, ...]

    @property
    def parameters(self) -> int:
        return count_parameters(self.tensors)

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def majority_dtype(self) -> str | None:
        """The dtype holding most bytes (what the model will be served in by default)."""
        by_dtype: dict[str, int] = {}
        for tensor in self.tensors.values():
            by_dtype[tensor.dtype] = by_dtype.get(tensor.dtype, 0) + tensor.nbytes
        return max(by_dtype, key=lambda d: by_dtype[d]) if by_dtype else None


def count_parameters(tensors: dict[str, TensorInfo]) -> int:
    """Exact element count: sum of prod(shape) (a scalar's empty shape counts as 1)."""
    return sum(math.prod(t.shape) for t in tensors.values())


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse one .safetensors header and check it against the file size.

    Raises InvalidModelError naming the file and what is wrong with it.
    """
    try:
        file_size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise InvalidModelError(
                    f"{path.name}: file is {file_size} bytes, too short to be safetensors "
                    "(truncated download?)"
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > file_size - 8:
                raise InvalidModelError(
                    f"{path.name}: header claims {header_len} bytes but the file has only "
                    f"{file_size - 8} after the length prefix (truncated or not safetensors)"
                )
            if header_len > MAX_HEADER_BYTES:
                raise InvalidModelError(
                    f"{path.name}: header of {header_len} bytes exceeds the 100 MB limit "
                    "(corrupt file)"
                )
            raw = handle.read(header_len)
    except OSError as exc:
        raise InvalidModelError(f"{path.name}: cannot read file ({exc})") from exc

    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"{path.name}: header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise InvalidModelError(f"{path.name}: header is not a JSON object")

    data_size = file_size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _parse_entry(path.name, name, entry, data_size)
    return tensors


def _parse_entry(file_name: str, name: str, entry: Any, data_size: int) -> TensorInfo:
    """Validate one header entry; `data_size` is the byte-buffer size after the header."""
    try:
        dtype = str(entry["dtype"])
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidModelError(
            f"{file_name}: tensor {name!r} has a malformed header entry ({exc!r})"
        ) from exc
    if any(d < 0 for d in shape) or begin < 0 or end < begin:
        raise InvalidModelError(f"{file_name}: tensor {name!r} has negative shape or offsets")
    if end > data_size:
        raise InvalidModelError(
            f"{file_name}: tensor {name!r} ends at byte {end} but the file holds only "
            f"{data_size} data bytes (truncated download?)"
        )
    nbytes = end - begin
    itemsize = DTYPE_BYTES.get(dtype)
    if itemsize is not None and nbytes != math.prod(shape) * itemsize:
        raise InvalidModelError(
            f"{file_name}: tensor {name!r} is {dtype}{list(shape)} but spans {nbytes} bytes "
            f"(expected {math.prod(shape) * itemsize}; corrupt header)"
        )
    return TensorInfo(dtype, shape, nbytes)


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files that make up the model in `folder` (empty if none).

    The index wins when present; otherwise `model.safetensors`; otherwise every top-level
    `*.safetensors` (some exporters use other names). Raises if the index is unusable.
    """
    index = folder / INDEX_FILE
    if index.is_file():
        return _shards_from_index(index)
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def _shards_from_index(index: Path) -> list[Path]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"{index.name}: not readable JSON ({exc})") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidModelError(f"{index.name}: missing or empty 'weight_map'")
    shard_names = sorted({str(v) for v in weight_map.values()})
    missing = [s for s in shard_names if not (index.parent / s).is_file()]
    if missing:
        raise InvalidModelError(
            f"{index.name} lists shard(s) that are not in the folder: {', '.join(missing)} "
            "(incomplete download?)"
        )
    return [index.parent / s for s in shard_names]


def read_checkpoint(folder: Path) -> SafetensorsCheckpoint | None:
    """Headers of all shards in `folder` merged into one view, or None if no safetensors."""
    files = checkpoint_files(folder)
    if not files:
        return None
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        tensors.update(read_header(file))
    return SafetensorsCheckpoint(tensors=tensors, files=tuple(files))
