"""Header-only safetensors reading and its corruption checks."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from modelium.analysis.profile import InvalidModelError
from modelium.analysis.safetensors_header import read_checkpoint, read_header


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]],
                      itemsize: int = 4, metadata: bool = True) -> None:
    """Minimal safetensors writer (zeros), so corruption can be crafted byte by byte."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = itemsize
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_reads_dtype_shape_bytes_and_ignores_metadata(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    write_safetensors(file, {"a.weight": ("F32", [3, 4]), "b.bias": ("F32", [4])})
    tensors = read_header(file)
    assert tensors == {"a.weight": ("F32", (3, 4), 48), "b.bias": ("F32", (4,), 16)}
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint is not None
    assert (checkpoint.parameters, checkpoint.weight_bytes) == (16, 64)
    assert checkpoint.majority_dtype() == "F32"


def test_header_length_beyond_file(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    write_safetensors(file, {"w": ("F32", [2, 2])})
    file.write_bytes(struct.pack("<Q", 10_000) + file.read_bytes()[8:])
    with pytest.raises(InvalidModelError, match="header claims 10000 bytes"):
        read_header(file)


def test_truncated_inside_header(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    write_safetensors(file, {"w": ("F32", [2, 2])})
    file.write_bytes(file.read_bytes()[:20])
    with pytest.raises(InvalidModelError, match="truncated"):
        read_header(file)


def test_tiny_file(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"\x01\x02")
    with pytest.raises(InvalidModelError, match="too short"):
        read_header(file)


def test_truncated_data(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    write_safetensors(file, {"a": ("F32", [8, 8]), "b": ("F32", [8, 8])})
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(InvalidModelError, match="tensor 'b' ends at byte 512.*truncated"):
        read_header(file)


def test_bad_header_json(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    raw = b"{not json"
    file.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(InvalidModelError, match="not valid JSON"):
        read_header(file)


def test_offsets_disagreeing_with_shape(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    file.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(InvalidModelError, match="corrupt header"):
        read_header(file)


def test_sharded_index(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": ("BF16", [10, 10])},
                      itemsize=2)
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": ("BF16", [5])},
                      itemsize=2)
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint is not None
    assert (checkpoint.parameters, checkpoint.weight_bytes) == (105, 210)
    assert len(checkpoint.files) == 2

    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InvalidModelError, match="model-00002-of-00002.safetensors"):
        read_checkpoint(tmp_path)


def test_no_safetensors_returns_none(tmp_path: Path) -> None:
    assert read_checkpoint(tmp_path) is None


def _sharded(tmp_path: Path, weight_map: dict[str, str]) -> None:
    write_safetensors(tmp_path / "model-00001-of-00001.safetensors", {"a": ("F32", [2])})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_an_unlisted_file_that_is_not_a_shard_is_only_a_warning(tmp_path: Path) -> None:
    # Mistral repositories ship consolidated.safetensors beside the shards: runtimes ignore it.
    _sharded(tmp_path, {"a": "model-00001-of-00001.safetensors"})
    write_safetensors(tmp_path / "consolidated.safetensors", {"a": ("F32", [2])})
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint is not None and len(checkpoint.files) == 1
    assert checkpoint.warnings == ("consolidated.safetensors is not in model.safetensors.index.json and is ignored",)


def test_an_index_naming_a_tensor_its_shard_lacks_is_refused(tmp_path: Path) -> None:
    _sharded(tmp_path, {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"})
    with pytest.raises(InvalidModelError, match="says tensor 'b' is in model-00001-of-00001.safetensors"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("offsets, data, expected", [
    ([[0, 8], [12, 20]], 20, "bytes 8..12 belong to no tensor"),
    ([[0, 8], [8, 16]], 20, "the last 4 bytes belong to no tensor"),
    ([[0, 8], [4, 12]], 12, "overlapping offsets"),
])
def test_offsets_must_tile_the_data(tmp_path: Path, offsets, data: int, expected: str) -> None:
    file = tmp_path / "model.safetensors"
    header = {f"t{i}": {"dtype": "F32", "shape": [2], "data_offsets": o} for i, o in enumerate(offsets)}
    raw = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data)
    with pytest.raises(InvalidModelError, match=expected):
        read_header(file)


def test_unknown_dtypes_are_refused_not_sized_as_float32(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    write_safetensors(file, {"w": ("Q4_K", [4])}, itemsize=4)
    with pytest.raises(InvalidModelError, match="dtype 'Q4_K', which safetensors does not define"):
        read_header(file)


def test_sub_byte_dtypes_are_sized_by_bits(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    raw = json.dumps({"w": {"dtype": "F4", "shape": [4, 2], "data_offsets": [0, 4]}}).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    assert read_header(file)["w"].nbytes == 4
