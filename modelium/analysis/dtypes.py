"""One spelling for dtypes, and their sizes.

Configs say "bfloat16", "torch.bfloat16" or "bf16"; safetensors headers say "BF16". Memory
math needs bytes per element, so everything is normalised to torch's names here.
"""

from __future__ import annotations

DTYPE_BYTES: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "int64": 8, "int32": 4, "int16": 2,
    "int8": 1, "uint8": 1, "bool": 1,
}

_ALIASES: dict[str, str] = {
    "f64": "float64", "double": "float64",
    "f32": "float32", "fp32": "float32", "float": "float32",
    "f16": "float16", "fp16": "float16", "half": "float16",
    "bf16": "bfloat16",
    "f8_e4m3": "float8_e4m3fn", "float8_e4m3": "float8_e4m3fn", "f8_e5m2": "float8_e5m2",
    "i64": "int64", "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8",
}

# Unknown dtypes are sized as float32: over-reserving memory beats an OOM.
DEFAULT_DTYPE = "float32"


def normalize_dtype(value: object) -> str | None:
    """Canonical torch name for a config or header dtype; None if absent or "auto"."""
    if not isinstance(value, str) or not value.strip():
        return None
    name = value.strip().lower().removeprefix("torch.")
    if name == "auto":
        return None
    return _ALIASES.get(name, name)


def dtype_bytes(dtype: str) -> int:
    """Bytes per element; 4 for anything we do not know."""
    return DTYPE_BYTES.get(dtype, DTYPE_BYTES[DEFAULT_DTYPE])
