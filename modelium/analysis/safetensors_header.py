"""Read safetensors checkpoints by their headers only, and believe none of it.

A safetensors file is `u64 little-endian header length` + `JSON header` + raw tensor bytes.
The header alone gives every tensor's dtype, shape and byte range, so parameter counts and
weight sizes are exact without touching (or even having room for) the tensor data. A
header can lie, and a runtime finding out at load time is the worst moment, so every
claim is checked against the file here, as the reference reader checks them: the length
prefix against the file size (capped), dtypes against the format's list (an unknown one
is refused, never sized as float32), each tensor's bytes against dtype x shape, and the
byte ranges must tile the data exactly (no overlap, no gap, nothing past the end). Then
the `safetensors` library itself opens the file (it reads only the header), so whatever
it would refuse at load time is refused now, with its words. A sharded index must list
files that exist, in the folder, whose headers hold the tensors it maps to them.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from modelium.analysis.files import MAX_INDEX_BYTES, MIB, load_json_object, open_regular, parse_json
from modelium.analysis.profile import InvalidModelError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# The reference reader allows 100 MB; a header is ~150 bytes per tensor, so 32 MiB is
# ~200 000 tensors in one file, far beyond any real checkpoint, and parsing 100 MB of JSON
# would cost a gigabyte of memory per drop.
MAX_HEADER_BYTES = 32 * MIB

# Bits per element of every dtype the format defines (safetensors 0.6+; F4/F6 pack
# several elements per byte).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
# Shards as transformers names them: model-00001-of-00003.safetensors.
_SHARD_NAME = re.compile(r"-\d{5}-of-\d{5}\.safetensors$")


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
    warnings: tuple[str, ...] = field(default=())

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
    """Parse one .safetensors header and check it against the file (see the module doc).

    Raises InvalidModelError naming the file and what is wrong with it.
    """
    fd = open_regular(path)
    try:
        file_size = os.fstat(fd).st_size
        if file_size < 8:
            raise InvalidModelError(
                f"{path.name}: file is {file_size} bytes, too short to be safetensors "
                "(truncated download?)"
            )
        (header_len,) = struct.unpack("<Q", _read_exactly(fd, 8))
        if header_len > file_size - 8:
            raise InvalidModelError(
                f"{path.name}: header claims {header_len} bytes but the file has only "
                f"{file_size - 8} after the length prefix (truncated or not safetensors)"
            )
        if header_len > MAX_HEADER_BYTES:
            raise InvalidModelError(
                f"{path.name}: header of {header_len} bytes exceeds the "
                f"{MAX_HEADER_BYTES // MIB} MiB limit (corrupt file)"
            )
        raw = _read_exactly(fd, header_len)
    except OSError as exc:
        raise InvalidModelError(f"{path.name}: cannot read file ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    tensors = parse_header(raw, file_size - 8 - header_len, path.name)
    _reference_check(path)
    return tensors


def parse_header(raw: bytes, data_size: int, file_name: str) -> dict[str, TensorInfo]:
    """The tensors described by header bytes ``raw`` followed by ``data_size`` data bytes."""
    if not raw.strip():
        raise InvalidModelError(f"{file_name}: header is not a JSON object (it is empty; not safetensors?)")
    header = parse_json(raw, f"{file_name}: header", allow_nan=False)
    if not isinstance(header, dict):
        raise InvalidModelError(f"{file_name}: header is not a JSON object")
    metadata = header.get("__metadata__")
    metadata = {} if metadata is None else metadata  # null is allowed, as the reference allows it
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise InvalidModelError(f"{file_name}: __metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        info, begin, end = _parse_entry(file_name, name, entry, data_size)
        tensors[name] = info
        ranges.append((begin, end, name))
    _check_tiling(file_name, ranges, data_size)
    return tensors


def _parse_entry(file_name: str, name: str, entry: Any,
                 data_size: int) -> tuple[TensorInfo, int, int]:
    """Validate one header entry; `data_size` is the byte-buffer size after the header."""
    label = f"{file_name}: tensor {name[:80]!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise InvalidModelError(
            f"{label} has a malformed header entry (it needs dtype, shape and data_offsets)"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise InvalidModelError(
            f"{label} has dtype {str(dtype)[:40]!r}, which safetensors does not define "
            "(corrupt header, or a format this reader does not know)"
        )
    if not (_int_list(shape) and _int_list(offsets) and len(offsets) == 2):
        raise InvalidModelError(
            f"{label} has a malformed header entry (shape and data_offsets must be lists "
            "of non-negative integers, data_offsets two of them)"
        )
    begin, end = offsets
    if end < begin:
        raise InvalidModelError(f"{label} has data_offsets that end before they begin")
    if end > data_size:
        raise InvalidModelError(
            f"{label} ends at byte {end} but the file holds only "
            f"{data_size} data bytes (truncated download?)"
        )
    nbytes = end - begin
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits != nbytes * 8:
        expected = f"{bits // 8}" if bits % 8 == 0 else f"{bits / 8} (not whole bytes)"
        raise InvalidModelError(
            f"{label} is {dtype}{list(shape)[:8]} but spans {nbytes} bytes "
            f"(expected {expected}; corrupt header)"
        )
    return TensorInfo(dtype, tuple(shape), nbytes), begin, end


def _int_list(value: Any) -> bool:
    """A list of integers the reference reader can hold (u64)."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64 for v in value
    )


def _check_tiling(file_name: str, ranges: list[tuple[int, int, str]], data_size: int) -> None:
    """The tensors' byte ranges must cover the data exactly once, as the reference reader
    requires: an overlap means two tensors share bytes, a gap or a tail means bytes no
    tensor owns (both are corrupt, and refused at load time)."""
    position = 0
    for begin, end, name in sorted(ranges):
        if begin < position:
            raise InvalidModelError(
                f"{file_name}: tensor {name[:80]!r} starts at byte {begin}, inside the "
                f"previous tensor (which ends at {position}): overlapping offsets"
            )
        if begin > position:
            raise InvalidModelError(
                f"{file_name}: bytes {position}..{begin} belong to no tensor (a gap before "
                f"{name[:80]!r}; corrupt header)"
            )
        position = end
    if position != data_size:
        raise InvalidModelError(
            f"{file_name}: the last {data_size - position} bytes belong to no tensor "
            "(corrupt header, or data appended to the file)"
        )


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = os.read(fd, min(left, 4 * MIB))
        if not chunk:
            raise InvalidModelError("the file ended while its header was read (truncated?)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _reference_check(path: Path) -> None:
    """Let the safetensors library open the file (header only; the data is mmapped, not
    read): anything it refuses, a runtime would refuse at load time."""
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - a project dependency
        return
    try:
        with safe_open(str(path), framework="numpy") as handle:
            handle.keys()
    except ImportError:  # pragma: no cover - numpy missing: nothing to compare with
        return
    except Exception as exc:  # noqa: BLE001 - SafetensorError and whatever else it raises
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"{path.name}: the safetensors library refuses it ({detail})") from exc


def checkpoint_files(folder: Path) -> tuple[list[Path], list[str], dict[str, str] | None]:
    """The safetensors files that make up the model in `folder` (empty if none), warnings
    about files left out, and the index's weight map (None without an index).

    The index wins when present; otherwise `model.safetensors`; otherwise every top-level
    `*.safetensors` (some exporters use other names). Raises if the index is unusable.
    """
    index = folder / INDEX_FILE
    if os.path.lexists(index):
        return _shards_from_index(index)
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE], [], None
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file()), [], None


def _shards_from_index(index: Path) -> tuple[list[Path], list[str], dict[str, str]]:
    data = load_json_object(index, MAX_INDEX_BYTES, index.name)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidModelError(f"{index.name}: missing or empty 'weight_map'")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise InvalidModelError(f"{index.name}: every 'weight_map' value must be a file name")
    shard_names = sorted(set(weight_map.values()))
    for shard in shard_names:
        if "/" in shard or "\\" in shard or shard.startswith(".") or not shard.endswith(".safetensors"):
            raise InvalidModelError(
                f"{index.name} maps tensors to {shard[:80]!r}, which is not a .safetensors "
                "file name in the folder"
            )
    missing = [s for s in shard_names if not os.path.lexists(index.parent / s)]
    if missing:
        raise InvalidModelError(
            f"{index.name} lists shard(s) that are not in the folder: {', '.join(missing[:5])} "
            "(incomplete download?)"
        )
    listed = set(shard_names)
    unlisted = sorted(p.name for p in index.parent.glob("*.safetensors") if p.name not in listed)
    stray = [n for n in unlisted if _SHARD_NAME.search(n)]
    if stray:
        raise InvalidModelError(
            f"{', '.join(stray[:5])} look like shards but {index.name} does not list them "
            "(files of two downloads mixed?)"
        )
    warnings = [f"{n} is not in {index.name} and is ignored" for n in unlisted[:5]]
    return [index.parent / s for s in shard_names], warnings, weight_map


def read_checkpoint(folder: Path) -> SafetensorsCheckpoint | None:
    """Headers of all shards in `folder` merged into one view, or None if no safetensors.

    With an index, each tensor it maps must be in the header of the shard it names."""
    files, warnings, weight_map = checkpoint_files(folder)
    if not files:
        return None
    tensors: dict[str, TensorInfo] = {}
    per_file: dict[str, dict[str, TensorInfo]] = {}
    for file in files:
        per_file[file.name] = read_header(file)
        tensors.update(per_file[file.name])
    for tensor, shard in (weight_map or {}).items():
        if tensor not in per_file[shard]:
            raise InvalidModelError(
                f"{INDEX_FILE} says tensor {tensor[:80]!r} is in {shard}, but that "
                "file's header has no such tensor"
            )
    return SafetensorsCheckpoint(tensors=tensors, files=tuple(files), warnings=tuple(warnings))
