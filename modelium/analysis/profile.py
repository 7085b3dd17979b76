"""What Modelium knows about a model folder, independent of any runtime.

`ModelProfile` is produced by the analyzer from files alone (no GPU, no weights loaded);
`MemoryEstimate` is an itemized prediction of what serving the model will take on one
device. Both are plain data so the brain can stay pure and the API can show them as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class InvalidModelError(Exception):
    """A drop that cannot be served; the message is the human-readable reason."""


# Formats the analyzer recognises.
FORMAT_SAFETENSORS = "safetensors"
FORMAT_PYTORCH_BIN = "pytorch-bin"
FORMAT_ONNX = "onnx"
FORMAT_TRITON = "triton"
FORMAT_CONFIG_ONLY = "config-only"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed to serve a model on one device, item by item.

    The items are for *one copy* of the model; `copies` is how many the runtime loads on
    the device (a Triton ``instance_group`` count, Ray Serve ``num_replicas``), each a
    process of its own with its own weights. `total_bytes` is the sum of the items times
    `copies`; the brain reserves exactly this much.
    """

    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    runtime_overhead_bytes: int
    batch_size: int
    sequence_length: int
    device_kind: str  # "gpu" or "cpu"
    notes: tuple[str, ...] = ()
    copies: int = 1

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ValueError(f"copies must be >= 1, got {self.copies}")

    @property
    def per_copy_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.kv_cache_bytes
            + self.activation_bytes
            + self.runtime_overhead_bytes
        )

    @property
    def total_bytes(self) -> int:
        return self.per_copy_bytes * self.copies

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["notes"] = list(self.notes)
        data["per_copy_bytes"] = self.per_copy_bytes
        data["total_bytes"] = self.total_bytes
        return data


@dataclass(frozen=True)
class ModelProfile:
    """The facts read from a model folder.

    Fields that cannot be known for a format (e.g. KV cache for an encoder) are 0 or None.
    """

    name: str
    path: str
    format: str
    architecture: str | None
    model_type: str | None
    task: str
    parameters: int
    weight_bytes: int
    dtype: str
    # "safetensors-header" | "config-formula" | "onnx" | "file-size" | "unknown"
    parameters_source: str
    kv_bytes_per_token: int = 0
    context_length: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    vocab_size: int | None = None
    has_tokenizer: bool = False
    warnings: tuple[str, ...] = field(default=())
    # Copies the folder's own serving config asks for (Triton instance_group counts).
    instances: int = 1

    @property
    def is_causal_lm(self) -> bool:
        return self.task == "text-generation"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["warnings"] = list(self.warnings)
        return data
