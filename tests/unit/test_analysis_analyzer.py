"""Format detection and validation errors of analyze_folder (no transformers needed)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from modelium.analysis import InvalidModelError, analyze_folder

LLAMA: dict[str, Any] = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=128, vocab_size=1000, max_position_embeddings=256,
    tie_word_embeddings=False, dtype="bfloat16",
)


def write_config(folder: Path, config: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_embedding(folder: Path, shape: list[int]) -> None:
    """A one-tensor safetensors file holding an input embedding of `shape` (bf16 zeros)."""
    size = 2 * shape[0] * shape[1]
    header = json.dumps({"model.embed_tokens.weight": {
        "dtype": "BF16", "shape": shape, "data_offsets": [0, size]}}).encode()
    (folder / "model.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + b"\0" * size)


def test_config_only_profile(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "tiny-llama", LLAMA)
    (folder / "tokenizer.json").write_text("{}")
    profile = analyze_folder(folder)
    assert profile.format == "config-only"
    assert profile.parameters_source == "config-formula"
    assert profile.name == "tiny-llama" and profile.task == "text-generation"
    assert profile.dtype == "bfloat16" and profile.weight_bytes == 0
    assert profile.has_tokenizer and profile.context_length == 256


def test_missing_config_and_no_known_format(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hello")
    with pytest.raises(InvalidModelError, match="no config.json and no recognised"):
        analyze_folder(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [("{broken", "not valid JSON"), ("[1, 2]", "JSON object"),
     ('{"architectures": "Llama"}', "list of class names")],
)
def test_unusable_config(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(InvalidModelError, match=message):
        analyze_folder(tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (dict(num_attention_heads=5, num_key_value_heads=5), "not divisible by 5 attention"),
        (dict(num_key_value_heads=8), "exceeds num_attention_heads"),
        (dict(num_key_value_heads=3), "does not divide"),
        (dict(hidden_size=0), "hidden_size must be positive"),
        (dict(vocab_size=-1), "vocab_size must be positive"),
        (dict(num_hidden_layers="two"), "must be an integer"),
    ],
)
def test_contradictory_config(tmp_path: Path, override: dict[str, Any], message: str) -> None:
    write_config(tmp_path, {**LLAMA, **override})
    with pytest.raises(InvalidModelError, match=message):
        analyze_folder(tmp_path)


def test_head_dim_override_allows_indivisible_hidden(tmp_path: Path) -> None:
    write_config(tmp_path, {**LLAMA, "num_attention_heads": 5, "num_key_value_heads": 5,
                            "head_dim": 16})
    assert analyze_folder(tmp_path).kv_bytes_per_token == 2 * 2 * 5 * 16 * 2


def test_embedding_shape_must_match_config(tmp_path: Path) -> None:
    folder = write_config(tmp_path / "ok", LLAMA)
    write_embedding(folder, [1000, 64])
    profile = analyze_folder(folder)
    assert profile.parameters == 64_000 and profile.parameters_source == "safetensors-header"

    bad = write_config(tmp_path / "bad", LLAMA)
    write_embedding(bad, [1200, 64])
    with pytest.raises(InvalidModelError, match=r"shape \[1200, 64\].*\[1000, 64\]"):
        analyze_folder(bad)


def test_truncated_safetensors_is_rejected(tmp_path: Path) -> None:
    folder = write_config(tmp_path, LLAMA)
    write_embedding(folder, [1000, 64])
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError, match="truncated"):
        analyze_folder(folder)


def test_safetensors_without_config_warns(tmp_path: Path) -> None:
    write_embedding(tmp_path, [10, 4])
    profile = analyze_folder(tmp_path)
    assert profile.parameters == 40 and profile.dtype == "bfloat16"
    assert profile.task == "unknown" and any("no config.json" in w for w in profile.warnings)


def test_onnx_detection(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\0" * 4000)
    profile = analyze_folder(tmp_path, name="detector")
    assert (profile.format, profile.task, profile.name) == ("onnx", "onnx", "detector")
    assert profile.weight_bytes == 4000 and profile.parameters == 1000
    assert profile.parameters_source == "onnx"


def test_triton_folder_detection(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text('name: "det"\nplatform: "onnxruntime_onnx"\n')
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(b"\0" * 123)
    profile = analyze_folder(tmp_path)
    assert (profile.format, profile.task) == ("triton", "triton")
    assert profile.model_type == "onnxruntime_onnx" and profile.weight_bytes == 123
    assert profile.instances == 1  # no instance_group: one copy


@pytest.mark.parametrize("groups, expected", [
    ("instance_group [ { count: 3 kind: KIND_CPU } ]", 3),
    ("instance_group [ { count: 2 kind: KIND_CPU }, { kind: KIND_CPU } ]", 3),  # no count: 1
    ("instance_group { count: 2 }\ninstance_group { count: 4 kind: KIND_GPU gpus: [ 0 ] }", 6),
    ('instance_group [ { count: 1 rate_limiter { resources [ { name: "R" count: 9 } ] } } ]', 1),
    ("# instance_group [ { count: 7 } ]\ninstance_group [{count:2}]", 2),  # comments ignored
    ("instance_group [ ]", 1),
])
def test_triton_instances_sum_the_instance_group_counts(tmp_path: Path, groups: str, expected: int) -> None:
    (tmp_path / "config.pbtxt").write_text(f'name: "m"\nbackend: "python"\n{groups}\n')
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text("")
    profile = analyze_folder(tmp_path)
    assert profile.instances == expected
    assert profile.to_dict()["instances"] == expected


def test_pytorch_bin_with_unknown_family_sizes_from_file(tmp_path: Path) -> None:
    write_config(tmp_path, {"architectures": ["FooModel"], "model_type": "foo",
                            "torch_dtype": "float16"})
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 2000)
    (tmp_path / "training_args.bin").write_bytes(b"\0" * 999)
    profile = analyze_folder(tmp_path)
    assert profile.format == "pytorch-bin" and profile.weight_bytes == 2000
    assert profile.parameters == 1000 and profile.parameters_source == "file-size"
    assert any(".bin size" in w for w in profile.warnings)


def test_pytorch_bin_with_known_family_uses_formula(tmp_path: Path) -> None:
    write_config(tmp_path, LLAMA)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 10)
    profile = analyze_folder(tmp_path)
    assert profile.parameters_source == "config-formula" and profile.parameters > 100_000


def test_pbtxt_parser_reads_the_text_format_triton_accepts() -> None:
    from modelium.analysis.pbtxt import parse_pbtxt, read_triton_config

    text = '''
    name: "m"  # a comment with { and "quotes"
    platform: 'onnx' "runtime_onnx"
    input < name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] >
    input { name: "y"; dims: [1] },
    parameters { key: "k" value: { string_value: "a#b" } }
    [some.extension] { x: 1 }
    optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }
    instance_group [ { count: 2 }, { kind: KIND_CPU } ]
    '''
    message = parse_pbtxt(text)
    assert message["name"] == ["m"] and message["platform"] == ["onnxruntime_onnx"]
    assert [i["name"] for i in message["input"]] == [["x"], ["y"]]
    assert message["parameters"][0]["value"][0]["string_value"] == ["a#b"]
    assert read_triton_config(text).instances == 3 and read_triton_config(text).backend == "onnxruntime_onnx"


@pytest.mark.parametrize("text, expected", [
    ('name: "m', "line 1: an unterminated string"),
    ("input [ { name: 1 } ", "line 1: the text ends in the middle of a field"),
    ("input { name: 1 ", "a block is not closed"),
    ("max_batch_size: 8 }", "expected a field name, found '}'"),
    ("dims: [1 2]", "expected ',' or ']' in the list of 'dims'"),
    ("name \"m\"", "expected ':' or '{' after field name 'name'"),
    ("max_batch_size: lots", "max_batch_size must be an integer"),
    ("instance_group: 3", "instance_group must be a block"),
    ("x {" * 100 + "}" * 100, "nested more than 64 levels deep"),
])
def test_pbtxt_errors_say_where_and_what(text: str, expected: str) -> None:
    from modelium.analysis.pbtxt import PbtxtError, read_triton_config

    with pytest.raises(PbtxtError, match=re.escape(expected)):
        read_triton_config(text)
