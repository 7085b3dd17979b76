"""The tensors of an ONNX graph as Triton declares them: which file is the graph, its
inputs and outputs (Triton types, dims with -1 for dynamic), and whether it can batch.

Used by :mod:`.model_repo` for both ONNX routes (native onnxruntime backend or the
python-backend stub): ``--disable-auto-complete-config`` means every config.pbtxt must
declare inputs and outputs, so they are read from the graph, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# ONNX TensorProto.DataType -> Triton data type.
_ONNX_TO_TRITON = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
    6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
    11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16",
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton sees it (dims include the batch dim here)."""

    name: str
    data_type: str  # "TYPE_FP32", ...
    dims: tuple[int, ...]  # -1 for dynamic


def find_onnx_file(folder: Path) -> Path:
    """The graph to serve: the only *.onnx file, or model.onnx among several."""
    files = sorted(p for p in folder.rglob("*.onnx") if p.is_file())
    if not files:
        raise ValueError(f"{folder.name}: no *.onnx file")
    if len(files) == 1:
        return files[0]
    preferred = [p for p in files if p.name == "model.onnx"]
    if len(preferred) == 1:
        return preferred[0]
    names = ", ".join(p.relative_to(folder).as_posix() for p in files)
    raise ValueError(f"{folder.name}: several ONNX graphs ({names}); keep one, or name it model.onnx")


def read_onnx_io(onnx_file: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs (initializers excluded) and outputs, with Triton types and dims."""
    import onnx  # only needed here; a project dependency

    try:
        model = onnx.load(str(onnx_file), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf errors have no common base
        raise ValueError(f"{onnx_file.name} is not a readable ONNX model ({exc})") from exc
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [_spec(v) for v in graph.input if v.name not in initializers]
    outputs = [_spec(v) for v in graph.output]
    if not inputs or not outputs:
        raise ValueError(f"{onnx_file.name}: the graph has no inputs or no outputs")
    return inputs, outputs


def _spec(value) -> TensorSpec:  # noqa: ANN001 - onnx.ValueInfoProto
    if value.type.WhichOneof("value") != "tensor_type":
        raise ValueError(f"ONNX tensor {value.name!r} is not a plain tensor (sequence/map)")
    tensor = value.type.tensor_type
    data_type = _ONNX_TO_TRITON.get(tensor.elem_type)
    if data_type is None:
        raise ValueError(f"ONNX tensor {value.name!r} has element type {tensor.elem_type}, "
                         "which Triton does not support")
    if not tensor.HasField("shape"):
        raise ValueError(f"ONNX tensor {value.name!r} has no shape (unknown rank)")
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    if not dims:
        raise ValueError(f"ONNX tensor {value.name!r} is a scalar; Triton needs at least one dim")
    return TensorSpec(value.name, data_type, dims)


def can_batch(tensors: list[TensorSpec]) -> bool:
    """Batch only when every tensor starts with a dynamic dim and keeps a dim after it."""
    return all(len(t.dims) >= 2 and t.dims[0] == -1 for t in tensors)
