"""Write one model's entry in the Triton model repository that Modelium owns.

``write_model_entry(repository, name, source_dir, profile, ...)`` turns a filed model
folder into ``repository/NAME/`` (``config.pbtxt`` + version folder ``1/``) ready for
``POST /v2/repository/models/NAME/load``. Three cases, by ``profile.format``:

* ``triton`` (the folder has its own ``config.pbtxt``): the folder is taken as given; only
  the top-level ``name:`` is set to NAME (Triton requires it to match the directory).
  Everything else, ``instance_group`` included, is the user's: Modelium's placement is
  *not* written into a user's config.
* ``onnx``: with ``native_onnx`` (the server has the onnxruntime backend: a full install)
  a ``platform: "onnxruntime_onnx"`` model whose ``default_model_filename`` is the graph;
  else a python-backend model running the onnxruntime Python package on the graph (the
  pytriton wheel's Triton has no onnxruntime backend). Inputs and outputs are read from the graph; when every
  input and output has a dynamic first dimension (and rank >= 2) the model batches
  (``max_batch_size: N`` + ``dynamic_batching``, dims without the batch dim), else
  ``max_batch_size: 0`` with the full dims. Dynamic dims are -1.
* ``safetensors`` / ``pytorch-bin`` with a non-generative task: a python-backend model
  running :class:`~modelium.runtimes.transformers_predictor.TransformersPredictor`.
  Input ``TEXT`` (TYPE_STRING, dims [1], batched) and optional ``PARAMETERS`` (JSON,
  TYPE_STRING, dims [1], same batch size as TEXT or 1); output ``OUTPUT`` (TYPE_STRING,
  dims [1]) holding one JSON document per TEXT row. Generative models go to vLLM or Ray
  Serve and are refused here with ValueError.

The generated ``instance_group`` is ``KIND_GPU gpus: [N]`` for ``device_kind="gpu"``,
else ``KIND_CPU``; the python models read ``model_instance_kind`` /
``model_instance_device_id`` from Triton (which does not narrow CUDA_VISIBLE_DEVICES per
instance) and use ``cuda:N`` / CUDA provider device N themselves.

Model files are placed in the entry as hard links (a copy where linking is impossible, e.g.
across filesystems), never as symlinks: Modelium replaces ``models/repository/NAME`` by
renaming a new folder in, so a hard-linked entry keeps the *old* files (same inodes) until
the entry is rewritten, and a Triton reload after a crash never mixes a new drop's weights
with an old config. Files we change (``config.pbtxt``) are written as new files, never
through a link. The two ``model.py`` templates live in ``templates/`` as real modules.

The entry is staged in a hidden temp dir inside ``repository`` and renamed into place; an
older entry is renamed aside first and deleted after (a moment with no entry, never a
half-written one). Triton must not be loading NAME while it is rewritten: the manager
unloads (or has not loaded) it first.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from pathlib import Path

from modelium.analysis.profile import (
    FORMAT_ONNX,
    FORMAT_PYTORCH_BIN,
    FORMAT_SAFETENSORS,
    FORMAT_TRITON,
    ModelProfile,
)
from modelium.runtimes.triton.onnx_graph import (  # find_onnx_file / read_onnx_io re-exported
    TensorSpec,
    can_batch,
    find_onnx_file,
    read_onnx_io,
)

__all__ = ["TensorSpec", "find_onnx_file", "onnx_config", "read_onnx_io", "set_config_name",
           "transformers_config", "write_model_entry"]

TEMPLATES_DIR = Path(__file__).parent / "templates"
# The folder holding the `modelium` package (the project root in a source checkout).
MODELIUM_ROOT = Path(__file__).resolve().parents[3]
ONNX_TEMPLATE = TEMPLATES_DIR / "onnx_model.py"
TRANSFORMERS_TEMPLATE = TEMPLATES_DIR / "transformers_model.py"

# Tasks the transformers python model serves (TransformersPredictor, non-generative).
TRITON_HF_TASKS = frozenset(
    {"fill-mask", "text-classification", "token-classification", "feature-extraction"}
)
GENERATIVE_TASKS = frozenset({"text-generation", "text2text-generation"})
# Subfolder of the version folder that holds the Hugging Face files.
HF_SUBDIR = "hf_model"
VERSION = "1"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

def write_model_entry(
    repository: Path,
    name: str,
    source_dir: Path,
    profile: ModelProfile,
    *,
    device_kind: str,
    gpu_index: int | None,
    task: str,
    max_batch_size: int = 8,
    native_onnx: bool = False,
) -> Path:
    """Write ``repository/NAME`` for the model in ``source_dir``; return the entry's path.

    ``device_kind`` is "gpu" (``gpu_index`` required) or "cpu". Raises ValueError when the
    model cannot go to Triton (generative task, unsupported format or tensor type...).
    """
    repository = Path(repository)
    source_dir = Path(source_dir)
    if not _NAME_RE.match(name):
        raise ValueError(f"not a usable Triton model name: {name!r}")
    if not source_dir.is_dir():
        raise ValueError(f"{source_dir} is not a directory")
    if device_kind not in ("gpu", "cpu"):
        raise ValueError(f"device_kind must be 'gpu' or 'cpu', got {device_kind!r}")
    if device_kind == "gpu" and (gpu_index is None or gpu_index < 0):
        raise ValueError("a GPU placement needs gpu_index")
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1")
    instance_group = _instance_group(device_kind, gpu_index)

    fmt = profile.format
    if fmt != FORMAT_TRITON and task in GENERATIVE_TASKS:
        raise ValueError(
            f"{name}: task {task!r} is generative; it goes to vLLM or Ray Serve, not Triton"
        )
    if fmt == FORMAT_TRITON:
        builder = lambda staged: _write_own_config(staged, name, source_dir)  # noqa: E731
    elif fmt == FORMAT_ONNX:
        builder = lambda staged: _write_onnx(  # noqa: E731
            staged, name, source_dir, instance_group, max_batch_size, native=native_onnx)
    elif fmt in (FORMAT_SAFETENSORS, FORMAT_PYTORCH_BIN):
        if task not in TRITON_HF_TASKS:
            raise ValueError(
                f"{name}: task {task!r} is not served by Triton's transformers model "
                f"(supported: {', '.join(sorted(TRITON_HF_TASKS))})"
            )
        builder = lambda staged: _write_transformers(  # noqa: E731
            staged, name, source_dir, task, instance_group, max_batch_size)
    else:
        raise ValueError(f"{name}: format {fmt!r} cannot be served by Triton")

    repository.mkdir(parents=True, exist_ok=True)
    staged = repository / f".staging-{name}-{uuid.uuid4().hex[:12]}"
    try:
        staged.mkdir()
        builder(staged)
        return _swap_into_place(staged, repository / name)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


# --- the three cases ------------------------------------------------------------------------


def _write_own_config(staged: Path, name: str, source_dir: Path) -> None:
    _link_tree(source_dir, staged)
    config = staged / "config.pbtxt"
    text = config.read_text(encoding="utf-8")
    _write_new_file(config, set_config_name(text, name))


def _write_onnx(
    staged: Path, name: str, source_dir: Path, instance_group: str, max_batch_size: int,
    *, native: bool = False,
) -> None:
    onnx_file = find_onnx_file(source_dir)
    inputs, outputs = read_onnx_io(onnx_file)
    version = staged / VERSION
    # The whole folder goes into 1/ so external-data files stay next to the graph.
    _link_tree(source_dir, version)
    if not native:
        if (version / "model.py").exists():
            raise ValueError(f"{name}: the ONNX folder holds a model.py, which Triton would run")
        shutil.copyfile(ONNX_TEMPLATE, version / "model.py")
    batching = can_batch(inputs + outputs)
    _write_new_file(
        staged / "config.pbtxt",
        onnx_config(name, inputs, outputs, instance_group,
                    max_batch_size if batching else 0,
                    onnx_file=onnx_file.relative_to(source_dir).as_posix(), native=native),
    )


def _write_transformers(
    staged: Path, name: str, source_dir: Path, task: str, instance_group: str,
    max_batch_size: int,
) -> None:
    version = staged / VERSION
    version.mkdir()
    _link_tree(source_dir, version / HF_SUBDIR)
    shutil.copyfile(TRANSFORMERS_TEMPLATE, version / "model.py")
    _write_new_file(
        staged / "config.pbtxt",
        transformers_config(name, task, instance_group, max_batch_size),
    )


# --- config.pbtxt text ------------------------------------------------------------------------


def _instance_group(device_kind: str, gpu_index: int | None) -> str:
    if device_kind == "gpu":
        return f"instance_group [ {{ count: 1 kind: KIND_GPU gpus: [ {gpu_index} ] }} ]"
    return "instance_group [ { count: 1 kind: KIND_CPU } ]"


def _tensor_block(tensors: list[TensorSpec], batched: bool, optional: frozenset[str] = frozenset()) -> str:
    items = []
    for t in tensors:
        dims = t.dims[1:] if batched else t.dims
        extra = "\n    optional: true" if t.name in optional else ""
        items.append(
            f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n'
            f"    dims: [ {', '.join(str(d) for d in dims)} ]{extra}\n  }}"
        )
    return ",\n".join(items)


def _parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{_escape(value)}" }} }}'


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def onnx_config(
    name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], instance_group: str,
    max_batch_size: int, *, onnx_file: str, native: bool = False,
) -> str:
    """config.pbtxt of the ONNX model, native (onnxruntime backend, the graph as
    ``default_model_filename``) or python-backend; max_batch_size 0 = no batching."""
    batched = max_batch_size > 0
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"' if native else 'backend: "python"',
        f"max_batch_size: {max_batch_size}",
    ]
    if native:
        lines.append(f'default_model_filename: "{_escape(onnx_file)}"')
    if batched:
        lines.append("dynamic_batching { }")
    lines += [
        f"input [\n{_tensor_block(inputs, batched)}\n]",
        f"output [\n{_tensor_block(outputs, batched)}\n]",
        instance_group,
    ]
    if not native:
        lines.append(_parameter("onnx_file", onnx_file))
    return "\n".join(lines) + "\n"


def transformers_config(name: str, task: str, instance_group: str, max_batch_size: int) -> str:
    """config.pbtxt of the python-backend transformers model."""
    text_in = TensorSpec("TEXT", "TYPE_STRING", (-1, 1))
    params_in = TensorSpec("PARAMETERS", "TYPE_STRING", (-1, 1))
    out = TensorSpec("OUTPUT", "TYPE_STRING", (-1, 1))
    lines = [
        f'name: "{name}"',
        'backend: "python"',
        f"max_batch_size: {max_batch_size}",
        "dynamic_batching { }",
        f"input [\n{_tensor_block([text_in, params_in], True, frozenset({'PARAMETERS'}))}\n]",
        f"output [\n{_tensor_block([out], True)}\n]",
        instance_group,
        _parameter("task", task),
        _parameter("model_subdir", HF_SUBDIR),
        # The stub ignores PYTHONPATH: the template puts this on sys.path if needed.
        _parameter("modelium_root", str(MODELIUM_ROOT)),
    ]
    return "\n".join(lines) + "\n"


def set_config_name(text: str, name: str) -> str:
    """Set the top-level ``name:`` of a config.pbtxt to NAME (added first if absent).

    Nested ``name:`` fields (inputs, outputs, instance groups) are left alone.
    """
    new = f'name: "{_escape(name)}"'
    spans = [m for m in _top_level_name_fields(text)]
    if not spans:
        return new + "\n" + text
    start, end = spans[0]
    result = text[:start] + new + text[end:]
    # A repeated top-level name would be an error in Triton anyway; drop the extras.
    shift = len(new) - (end - start)
    for s, e in reversed(spans[1:]):
        result = result[: s + shift] + result[e + shift:]
    return result


_NAME_FIELD = re.compile(r"""name\s*:\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


def _top_level_name_fields(text: str) -> list[tuple[int, int]]:
    """Spans of ``name: "..."`` at nesting depth 0, outside strings and comments."""
    spans = []
    depth, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        if c in "\"'":
            i = _skip_string(text, i)
            continue
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        elif depth == 0 and text.startswith("name", i) and (i == 0 or not _ident(text[i - 1])):
            m = _NAME_FIELD.match(text, i)
            if m:
                spans.append((m.start(), m.end()))
                i = m.end()
                continue
        i += 1
    return spans


def _ident(c: str) -> bool:
    return c.isalnum() or c == "_"


def _skip_string(text: str, i: int) -> int:
    quote, i = text[i], i + 1
    while i < len(text) and text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return i + 1


# --- files -----------------------------------------------------------------------------------


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP):
            raise
        shutil.copy2(src, dst)


def _link_tree(src: Path, dst: Path) -> None:
    # symlinks=False: a symlink in the drop becomes its target's content (filing already
    # refused symlinks that leave the drop).
    shutil.copytree(src, dst, copy_function=_link_or_copy, dirs_exist_ok=True)


def _write_new_file(path: Path, text: str) -> None:
    """Replace ``path`` with a new file: never write through a hard link into the source."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _swap_into_place(staged: Path, final: Path) -> Path:
    old: Path | None = None
    if os.path.lexists(final):
        old = final.with_name(f".replaced-{final.name}-{uuid.uuid4().hex[:12]}")
        os.rename(final, old)
    try:
        os.rename(staged, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return final
