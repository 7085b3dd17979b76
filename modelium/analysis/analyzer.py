"""Turn a dropped model folder into a `ModelProfile`, from files alone.

Nothing is loaded onto a device and tensor data is never read: safetensors headers give
exact parameter counts, `config.json` gives shapes (and counts when there are no weights),
other formats are sized from the files. Anything that would make a runtime fail later
(truncated files, contradictory configs) is rejected here with `InvalidModelError`, whose
message tells the person who dropped the folder what to fix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from modelium.analysis.config_formula import parameters_from_config
from modelium.analysis.config_shape import ModelShape, read_shape, text_config
from modelium.analysis.dtypes import DEFAULT_DTYPE, dtype_bytes, normalize_dtype
from modelium.analysis.files import (
    MAX_CONFIG_BYTES,
    MAX_PBTXT_BYTES,
    decode_utf8,
    kind_of,
    load_json_object,
    read_bounded,
)
from modelium.analysis.pbtxt import PbtxtError, read_triton_config, triton_instance_count
from modelium.analysis.profile import (
    FORMAT_CONFIG_ONLY,
    FORMAT_ONNX,
    FORMAT_PYTORCH_BIN,
    FORMAT_SAFETENSORS,
    FORMAT_TRITON,
    InvalidModelError,
    ModelProfile,
)
from modelium.analysis.safetensors_header import SafetensorsCheckpoint, read_checkpoint

__all__ = ["analyze_folder", "task_for", "triton_instance_count"]

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt",
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
)
# Files named *.bin that hold training state, not weights.
_NON_WEIGHT_BINS = ("training_args.bin", "optimizer.bin", "scheduler.bin")
_ENCODER_DECODER_TYPES = ("t5", "mt5", "umt5", "bart", "mbart", "pegasus", "marian", "led")
_DECODER_TYPES = (
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma",
    "gemma2", "phi3", "gpt2", "opt", "gpt_neox", "falcon", "phi",
)
_ENCODER_TYPES = ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "deberta")
# Names of the input embedding in safetensors, most specific first.
_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight",
                       "shared.weight")


def analyze_folder(path: Path, name: str | None = None) -> ModelProfile:
    """Profile the model in `path`; `name` defaults to the folder name.

    `path` may also be a single ``.onnx`` file: it is profiled as the folder the daemon
    makes of a loose ``.onnx`` drop (named after the file). Only regular files are ever
    read, each with a size bound (:mod:`.files`), so any folder gives a profile or an
    InvalidModelError, and never blocks.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InvalidModelError(f"{path} cannot be read ({exc.strerror or exc})") from exc
    if stat.S_ISREG(mode) and path.suffix.lower() == ".onnx":
        return _onnx_profile(path, name or path.stem, None, [path])
    if stat.S_ISREG(mode):
        raise InvalidModelError(
            f"{path} is a file; a model is a folder (or a single .onnx file)")
    if not stat.S_ISDIR(mode):
        raise InvalidModelError(f"{path} is {kind_of(mode)}, not a model folder")
    name = name or path.name
    if os.path.lexists(path / "config.pbtxt"):
        return _triton_profile(path, name)

    config = _load_config(path)
    checkpoint = read_checkpoint(path)
    if checkpoint is not None:
        return _hf_profile(path, name, config, FORMAT_SAFETENSORS, checkpoint=checkpoint)
    bins = _weight_files(path, "*.bin", exclude=_NON_WEIGHT_BINS)
    if bins:
        return _hf_profile(path, name, config, FORMAT_PYTORCH_BIN, files=bins)
    onnx = [f for pattern in ("*.onnx", "*.onnx_data", "*.onnx.data")
            for f in _weight_files(path, pattern)]
    if onnx:
        return _onnx_profile(path, name, config, onnx)
    if config is not None:
        return _hf_profile(path, name, config, FORMAT_CONFIG_ONLY)
    raise InvalidModelError(
        f"{path.name}: no config.json and no recognised model files "
        "(*.safetensors, *.bin, *.onnx, or a Triton config.pbtxt)"
    )


# --- files -------------------------------------------------------------------------------


def _load_config(folder: Path) -> dict[str, Any] | None:
    """config.json as a dict, None if absent; raises if present but unusable."""
    file = folder / "config.json"
    if not os.path.lexists(file):
        return None
    config = load_json_object(file, MAX_CONFIG_BYTES, "config.json")
    archs = config.get("architectures")
    if archs is not None and not (
        isinstance(archs, list) and all(isinstance(a, str) for a in archs)
    ):
        raise InvalidModelError("config.json: 'architectures' must be a list of class names")
    for key in ("model_type", "torch_dtype", "dtype"):
        value = config.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidModelError(f"config.json: {key!r} must be a string, got {value!r:.60}")
    return config


def _weight_files(folder: Path, pattern: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    return sorted(
        p for p in folder.glob(pattern)
        if p.is_file() and p.name not in exclude and not p.name.startswith("rng_state")
    )


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


# --- config facts ---------------------------------------------------------------------------


def task_for(architecture: str | None, model_type: str | None) -> str:
    """Pipeline task implied by the architecture class name (model_type as fallback)."""
    arch = architecture or ""
    suffix_tasks = (
        (("ForCausalLM", "LMHeadModel"), "text-generation"),
        (("ForMaskedLM",), "fill-mask"),
        (("ForSequenceClassification",), "text-classification"),
        (("ForTokenClassification",), "token-classification"),
        (("ForQuestionAnswering",), "question-answering"),
        (("ForImageClassification",), "image-classification"),
        (("ForSpeechSeq2Seq", "ForCTC"), "automatic-speech-recognition"),
    )
    for suffixes, task in suffix_tasks:
        if arch.endswith(suffixes):
            return task
    if arch.endswith("ForConditionalGeneration"):
        if model_type in _ENCODER_DECODER_TYPES:
            return "text2text-generation"
        return "text-generation"  # e.g. vision-language decoders
    if arch.endswith(("Model", "EncoderModel")):
        return "feature-extraction"
    if not arch and model_type:
        if model_type in _DECODER_TYPES:
            return "text-generation"
        if model_type in _ENCODER_DECODER_TYPES:
            return "text2text-generation"
        if model_type in _ENCODER_TYPES:
            return "feature-extraction"
    return "unknown"


def _config_dtype(config: dict[str, Any]) -> str | None:
    cfg = text_config(config)
    return normalize_dtype(cfg.get("dtype") or cfg.get("torch_dtype"))


def _kv_bytes_per_token(shape: ModelShape, task: str, dtype: str) -> int:
    """K and V for every cached layer; encoders keep no cache."""
    if task == "text-generation":
        layers = shape.num_layers
    elif task == "text2text-generation":
        layers = shape.decoder_layers
    else:
        return 0
    if not (layers and shape.num_kv_heads and shape.head_dim):
        return 0
    return 2 * layers * shape.num_kv_heads * shape.head_dim * dtype_bytes(dtype)


def _check_embedding(checkpoint: SafetensorsCheckpoint, shape: ModelShape) -> None:
    """The input embedding (and an untied LM head) must be [vocab_size, embedding_dim], or
    config and weights do not belong together (a runtime would fail to load them)."""
    if shape.vocab_size is None or shape.embedding_dim is None:
        return
    expected = (shape.vocab_size, shape.embedding_dim)
    for suffixes in (_EMBEDDING_SUFFIXES, ("lm_head.weight",)):
        for suffix in suffixes:
            matches = sorted((n for n in checkpoint.tensors if n.endswith(suffix)), key=len)
            if not matches:
                continue
            tensor = checkpoint.tensors[matches[0]]
            if len(tensor.shape) == 2 and tensor.dtype.startswith(("F", "BF")) and \
                    tensor.shape != expected:
                raise InvalidModelError(
                    f"tensor {matches[0]} has shape {list(tensor.shape)} but config.json "
                    f"implies {list(expected)} (vocab_size x hidden size); config and "
                    "weights do not belong together"
                )
            break


# --- profiles ------------------------------------------------------------------------------


def _hf_profile(
    folder: Path,
    name: str,
    config: dict[str, Any] | None,
    fmt: str,
    *,
    checkpoint: SafetensorsCheckpoint | None = None,
    files: list[Path] | None = None,
) -> ModelProfile:
    """Profile for transformers-style folders: safetensors, .bin or config alone."""
    warnings: list[str] = []
    config = config or {}
    if not config:
        warnings.append("no config.json: architecture, task and shapes are unknown")
    shape = read_shape(config)
    cfg = text_config(config)
    archs = config.get("architectures") or []
    architecture = archs[0] if archs else None
    model_type = config.get("model_type") or cfg.get("model_type")
    task = task_for(architecture, model_type)
    if config and task == "unknown":
        warnings.append(f"cannot tell the task of architecture {architecture!r}")

    dtype = _config_dtype(config)
    if checkpoint is not None:
        _check_embedding(checkpoint, shape)
        warnings.extend(checkpoint.warnings)
        dtype = dtype or normalize_dtype(checkpoint.majority_dtype())
    if dtype is None:
        dtype = DEFAULT_DTYPE
        warnings.append(f"dtype not given; assuming {DEFAULT_DTYPE}")

    if checkpoint is not None:
        parameters, weight_bytes = checkpoint.parameters, checkpoint.weight_bytes
        source = "safetensors-header"
    else:
        weight_bytes = sum(f.stat().st_size for f in files or [])
        parameters, formula_warnings = parameters_from_config(config) if config else (0, [])
        source = "config-formula"
        if fmt == FORMAT_PYTORCH_BIN and (formula_warnings or not parameters):
            # No exact formula: a pickle is ~all tensor bytes, so size / itemsize is close.
            parameters, source = weight_bytes // dtype_bytes(dtype), "file-size"
            formula_warnings = [
                f"parameters estimated from .bin size assuming {dtype}; "
                "convert to safetensors for an exact count"
            ]
        warnings.extend(formula_warnings)

    return ModelProfile(
        name=name,
        path=str(folder),
        format=fmt,
        architecture=architecture,
        model_type=model_type,
        task=task,
        parameters=parameters,
        weight_bytes=weight_bytes,
        dtype=dtype,
        parameters_source=source,
        kv_bytes_per_token=_kv_bytes_per_token(shape, task, dtype),
        context_length=shape.context_length,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        vocab_size=shape.vocab_size,
        has_tokenizer=_has_tokenizer(folder),
        warnings=tuple(warnings),
    )


def _onnx_profile(
    folder: Path, name: str, config: dict[str, Any] | None, files: list[Path]
) -> ModelProfile:
    """ONNX graphs are sized from the files; we do not parse protobuf."""
    weight_bytes = sum(f.stat().st_size for f in files)
    config = config or {}
    shape = read_shape(config)
    archs = config.get("architectures") or [None]
    return ModelProfile(
        name=name,
        path=str(folder),
        format=FORMAT_ONNX,
        architecture=archs[0],
        model_type=config.get("model_type"),
        task="onnx",
        parameters=weight_bytes // 4,
        weight_bytes=weight_bytes,
        dtype="float32",
        parameters_source="onnx",
        context_length=shape.context_length,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        vocab_size=shape.vocab_size,
        has_tokenizer=_has_tokenizer(folder),
        warnings=("ONNX: parameters estimated as file size / 4 (float32 assumed)",),
    )


def _triton_profile(folder: Path, name: str) -> ModelProfile:
    """A Triton model repository entry: served as-is, sized by its version folders."""
    text = decode_utf8(read_bounded(folder / "config.pbtxt", MAX_PBTXT_BYTES), "config.pbtxt")
    try:
        config = read_triton_config(text)
    except PbtxtError as exc:
        raise InvalidModelError(f"config.pbtxt cannot be parsed: {exc}") from exc
    versions = [v for v in folder.iterdir()
                if v.name.isdigit() and v.is_dir() and not v.is_symlink()]
    if not versions:
        raise InvalidModelError(
            "config.pbtxt is there but no numeric version folder (e.g. 1/ holding the "
            "model file); Triton needs at least one"
        )
    weight_bytes = sum(
        f.stat().st_size for version in versions for f in version.rglob("*") if f.is_file()
    )
    return ModelProfile(
        name=name,
        path=str(folder),
        format=FORMAT_TRITON,
        architecture=None,
        model_type=config.backend,
        task="triton",
        parameters=0,
        weight_bytes=weight_bytes,
        dtype="unknown",
        parameters_source="unknown",
        has_tokenizer=_has_tokenizer(folder),
        warnings=("Triton model: parameters unknown; memory sized from version folders",),
        instances=config.instances,
    )
