"""Memory estimates: itemization, scaling, and the H100 measurements they must cover."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelium.analysis import ModelProfile, analyze_folder, estimate_memory

GB = 1e9
CUDA_CONTEXT_GB = 0.65

LLAMA3_8B: dict[str, Any] = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
    max_position_embeddings=8192, torch_dtype="bfloat16",
)
GPT2: dict[str, Any] = dict(
    architectures=["GPT2LMHeadModel"], model_type="gpt2", n_embd=768, n_layer=12, n_head=12,
    vocab_size=50257, n_positions=1024, dtype="bfloat16",
)
BERT: dict[str, Any] = dict(
    architectures=["BertModel"], model_type="bert", hidden_size=768, num_hidden_layers=12,
    num_attention_heads=12, intermediate_size=3072, vocab_size=30522,
    max_position_embeddings=512, torch_dtype="float32",
)


def profile_of(config: dict[str, Any], tmp_path: Path) -> ModelProfile:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return analyze_folder(tmp_path)


# (config, batch, seq, measured forward peak above weights in GB, H100 bf16)
MEASURED = [
    (LLAMA3_8B, 1, 512, 0.24),
    (LLAMA3_8B, 4, 1024, 1.65),
    (GPT2, 4, 1024, 0.58),
]


@pytest.mark.parametrize(("config", "batch", "seq", "peak_gb"), MEASURED,
                         ids=["llama3-8b-1x512", "llama3-8b-4x1024", "gpt2-4x1024"])
def test_covers_measured_h100_points(config: dict[str, Any], batch: int, seq: int,
                                     peak_gb: float, tmp_path: Path) -> None:
    profile = profile_of(config, tmp_path)
    estimate = estimate_memory(profile, batch_size=batch, sequence_length=seq)
    weights_gb = profile.parameters * 2 / GB
    measured_total = (weights_gb + peak_gb + CUDA_CONTEXT_GB) * GB
    assert estimate.total_bytes >= measured_total
    assert estimate.total_bytes <= 1.25 * measured_total
    # The forward-pass items alone must also cover the measured peak.
    assert estimate.kv_cache_bytes + estimate.activation_bytes >= peak_gb * GB


def test_items_sum_and_scale_with_batch_and_sequence(tmp_path: Path) -> None:
    profile = profile_of(LLAMA3_8B, tmp_path)
    small = estimate_memory(profile, batch_size=1, sequence_length=512)
    assert small.total_bytes == (small.weights_bytes + small.kv_cache_bytes
                                 + small.activation_bytes + small.runtime_overhead_bytes)
    assert small.weights_bytes == profile.parameters * 2
    assert small.kv_cache_bytes == profile.kv_bytes_per_token * 512
    assert small.to_dict()["total_bytes"] == small.total_bytes
    assert small.copies == 1 and small.to_dict()["copies"] == 1

    bigger_batch = estimate_memory(profile, batch_size=4, sequence_length=512)
    longer = estimate_memory(profile, batch_size=1, sequence_length=2048)
    for grown in (bigger_batch, longer):
        assert grown.kv_cache_bytes == 4 * small.kv_cache_bytes
        assert grown.activation_bytes == 4 * small.activation_bytes
        assert grown.total_bytes > small.total_bytes


def test_defaults_and_device_kinds(tmp_path: Path) -> None:
    llama = profile_of(LLAMA3_8B, tmp_path)
    gpu = estimate_memory(llama)
    assert (gpu.sequence_length, gpu.batch_size, gpu.device_kind) == (2048, 1, "gpu")
    cpu = estimate_memory(llama, device_kind="cpu")
    assert cpu.runtime_overhead_bytes == int(0.5 * 1024**3)
    assert gpu.runtime_overhead_bytes > int(0.65 * 1024**3)

    gpt2 = estimate_memory(profile_of(GPT2, tmp_path))
    assert gpt2.sequence_length == 1024  # capped by context length

    bert = estimate_memory(profile_of(BERT, tmp_path), batch_size=8)
    assert bert.sequence_length == 512 and bert.kv_cache_bytes == 0
    assert bert.activation_bytes == 8 * 512 * 4 * 16 * 768  # no vocab logits for embeddings

    with pytest.raises(ValueError):
        estimate_memory(llama, device_kind="tpu")
    with pytest.raises(ValueError):
        estimate_memory(llama, batch_size=0)


def test_onnx_profile_uses_file_bytes(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\0" * 4096)
    estimate = estimate_memory(analyze_folder(tmp_path), device_kind="cpu")
    assert estimate.weights_bytes == 4096 and estimate.kv_cache_bytes == 0
    assert estimate.notes  # activations could not be estimated


def test_copies_multiply_every_item(tmp_path: Path) -> None:
    profile = profile_of(BERT, tmp_path)
    one = estimate_memory(profile, device_kind="cpu")
    three = estimate_memory(profile, device_kind="cpu", copies=3)
    assert (one.copies, three.copies) == (1, 3)
    assert three.weights_bytes == one.weights_bytes  # the items stay per copy
    assert three.per_copy_bytes == one.total_bytes
    assert three.total_bytes == 3 * one.total_bytes
    data = three.to_dict()
    assert data["copies"] == 3 and data["total_bytes"] == three.total_bytes
    assert any("3 copies" in note for note in three.notes)
    with pytest.raises(ValueError):
        estimate_memory(profile, copies=0)
