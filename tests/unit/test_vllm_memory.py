"""vllm_memory: the reservation the ledger holds and the --gpu-memory-utilization share."""

from __future__ import annotations

import math

import pytest

from modelium.analysis.profile import ModelProfile
from modelium.config.settings import VllmModelSettings
from modelium.runtimes.vllm.memory import (
    ABOVE_SHARE_BYTES,
    CPU_KV_CAP_BYTES,
    CPU_PROCESS_BYTES,
    CUDA_CONTEXT_BYTES,
    CUDA_GRAPH_BYTES,
    GIB,
    gpu_share,
    vllm_memory,
)

H100_TOTAL = int(79.18 * GIB)  # what vLLM (torch) reports for an 80 GB H100
GPU_80GIB = 80 * GIB


def llama3_8b(**changes) -> ModelProfile:
    """Llama-3-8B shape, bf16: 16.06 GB of weights, 128 KiB of KV per token (GQA)."""
    fields = dict(
        name="llama3-8b", path="/m", format="safetensors", architecture="LlamaForCausalLM",
        model_type="llama", task="text-generation", parameters=8_030_000_000,
        weight_bytes=16_060_000_000, dtype="bfloat16", parameters_source="safetensors-header",
        kv_bytes_per_token=2 * 32 * 8 * 128 * 2, context_length=8192, hidden_size=4096,
        num_layers=32, vocab_size=128256, has_tokenizer=True,
    )
    fields.update(changes)
    return ModelProfile(**fields)


def tiny_llama(**changes) -> ModelProfile:
    """The examples/make_tiny_models.py Llama: fp32, 1.4 MB, context 512."""
    fields = dict(
        name="tiny", path="/m", format="safetensors", architecture="LlamaForCausalLM",
        model_type="llama", task="text-generation", parameters=344_384, weight_bytes=1_377_536,
        dtype="float32", parameters_source="safetensors-header", kv_bytes_per_token=2 * 2 * 2 * 32 * 4,
        context_length=512, hidden_size=64, num_layers=2, vocab_size=2048, has_tokenizer=True,
    )
    fields.update(changes)
    return ModelProfile(**fields)


SETTINGS = VllmModelSettings(max_model_len=2048, max_num_seqs=16)


# ---------------------------------------------------------------------- GPU


def test_gpu_reservation_is_itemized_and_share_is_reservation_minus_above_share_over_total() -> None:
    memory, share, kv = vllm_memory(llama3_8b(), SETTINGS, device_kind="gpu", gpu_total_bytes=H100_TOTAL)
    assert memory.device_kind == "gpu"
    assert memory.weights_bytes == 16_060_000_000
    assert kv == memory.kv_cache_bytes == 131072 * 2048 * 16 == 4 * GIB
    assert memory.batch_size == 16 and memory.sequence_length == 2048
    # activations: 2048 tokens x 16 x hidden x 2 bytes + 16 seqs x vocab x fp32 x 2; + CUDA graphs
    assert memory.activation_bytes == 2048 * 16 * 4096 * 2 + 16 * 128256 * 4 * 2 + CUDA_GRAPH_BYTES
    inside = memory.weights_bytes + kv + memory.activation_bytes + CUDA_CONTEXT_BYTES
    assert share == math.ceil(inside / H100_TOTAL * 10_000) / 10_000
    assert round(share, 4) == share
    # the ledger holds exactly share x total (rounded up) + the measured 0.7 GB above it
    assert memory.total_bytes == math.ceil(share * H100_TOTAL) + ABOVE_SHARE_BYTES
    assert 0 <= memory.total_bytes - (inside + ABOVE_SHARE_BYTES) <= H100_TOTAL / 10_000 + 1
    assert 0.25 < share < 0.26


def test_two_8b_servers_fit_one_80gib_gpu() -> None:
    """The point of the share: two (here even three) servers on one GPU, each one able to
    start (vLLM wants free memory >= share x total at its start) with the others running
    at their worst (share + 0.7 GB each)."""
    first, share1, _ = vllm_memory(llama3_8b(), SETTINGS, device_kind="gpu", gpu_total_bytes=GPU_80GIB)
    second, share2, _ = vllm_memory(llama3_8b(name="b"), VllmModelSettings(max_model_len=4096, max_num_seqs=8),
                                    device_kind="gpu", gpu_total_bytes=GPU_80GIB)
    assert first.total_bytes + second.total_bytes <= GPU_80GIB
    assert share1 + share2 < 1
    used_by_first = share1 * GPU_80GIB + ABOVE_SHARE_BYTES  # measured worst case
    assert used_by_first <= first.total_bytes
    assert GPU_80GIB - used_by_first >= share2 * GPU_80GIB  # vLLM's start-up check passes
    third, share3, _ = vllm_memory(llama3_8b(name="c"), SETTINGS, device_kind="gpu", gpu_total_bytes=GPU_80GIB)
    assert first.total_bytes + second.total_bytes + third.total_bytes <= GPU_80GIB
    assert GPU_80GIB - 2 * used_by_first >= share3 * GPU_80GIB


def test_eager_skips_cuda_graphs() -> None:
    graphs, share_graphs, _ = vllm_memory(llama3_8b(), SETTINGS, device_kind="gpu", gpu_total_bytes=H100_TOTAL)
    eager, share_eager, _ = vllm_memory(llama3_8b(), SETTINGS.model_copy(update={"enforce_eager": True}),
                                        device_kind="gpu", gpu_total_bytes=H100_TOTAL)
    assert graphs.activation_bytes - eager.activation_bytes == CUDA_GRAPH_BYTES
    assert share_eager < share_graphs


def test_explicit_kv_budget_replaces_the_derived_one() -> None:
    memory, _, kv = vllm_memory(llama3_8b(), SETTINGS.model_copy(update={"kv_cache_bytes": 2 * GIB}),
                                device_kind="gpu", gpu_total_bytes=H100_TOTAL)
    assert kv == memory.kv_cache_bytes == 2 * GIB


def test_share_is_none_until_the_gpu_total_is_known() -> None:
    memory, share, kv = vllm_memory(llama3_8b(), SETTINGS, device_kind="gpu", gpu_total_bytes=None)
    known, _, _ = vllm_memory(llama3_8b(), SETTINGS, device_kind="gpu", gpu_total_bytes=H100_TOTAL)
    assert share is None and kv == 4 * GIB
    # without a total there is no rounding to add; otherwise the same reservation
    assert 0 <= known.total_bytes - memory.total_bytes <= H100_TOTAL / 10_000 + 1


def test_a_model_too_big_for_the_gpu_gets_a_share_above_one_and_a_note() -> None:
    big = llama3_8b(parameters=70_000_000_000, weight_bytes=140_000_000_000)
    memory, share, _ = vllm_memory(big, SETTINGS, device_kind="gpu", gpu_total_bytes=GPU_80GIB)
    assert share > 1 and memory.total_bytes > GPU_80GIB
    assert any("does not fit" in note for note in memory.notes)


def test_gpu_auto_serves_fp32_models_in_16_bits() -> None:
    fp32 = llama3_8b(weight_bytes=32_120_000_000, dtype="float32", kv_bytes_per_token=2 * 32 * 8 * 128 * 4)
    memory, _, kv = vllm_memory(fp32, SETTINGS, device_kind="gpu", gpu_total_bytes=H100_TOTAL)
    assert memory.weights_bytes == 8_030_000_000 * 2
    assert kv == 4 * GIB  # KV per token halved with the dtype


def test_max_model_len_is_capped_at_the_models_context() -> None:
    memory, _, kv = vllm_memory(tiny_llama(), SETTINGS, device_kind="gpu", gpu_total_bytes=H100_TOTAL)
    assert memory.sequence_length == 512
    assert kv == tiny_llama().kv_bytes_per_token // 2 * 512 * 16  # fp32 model served in 16 bits
    assert any("capped" in note for note in memory.notes)
    unset, _, _ = vllm_memory(tiny_llama(), SETTINGS.model_copy(update={"max_model_len": None}),
                              device_kind="gpu", gpu_total_bytes=H100_TOTAL)
    assert unset.sequence_length == 512


def test_gpu_share_rounds_up_to_4_decimals() -> None:
    assert gpu_share(25, 100) == 0.25  # exact stays exact
    assert gpu_share(250_001, 1_000_000) == 0.2501
    assert gpu_share(1, 10**9) == 0.0001


# ---------------------------------------------------------------------- CPU


def test_cpu_reservation_is_weights_kv_and_process_rss() -> None:
    settings = VllmModelSettings(max_model_len=256, max_num_seqs=4, kv_cache_bytes=64 * 2**20)
    memory, share, kv = vllm_memory(tiny_llama(), settings, device_kind="cpu", gpu_total_bytes=None)
    assert share is None
    assert kv == 64 * 2**20
    assert memory.device_kind == "cpu"
    assert memory.total_bytes == 1_377_536 + 64 * 2**20 + CPU_PROCESS_BYTES
    assert memory.activation_bytes == 0


def test_cpu_derived_kv_is_capped_at_4_gib_but_an_explicit_one_is_not() -> None:
    memory, _, kv = vllm_memory(llama3_8b(), VllmModelSettings(max_model_len=8192, max_num_seqs=16),
                                device_kind="cpu", gpu_total_bytes=None)
    assert kv == CPU_KV_CAP_BYTES == memory.kv_cache_bytes
    assert any("capped at 4 GiB" in note for note in memory.notes)
    _, _, explicit = vllm_memory(llama3_8b(), VllmModelSettings(kv_cache_bytes=6 * GIB),
                                 device_kind="cpu", gpu_total_bytes=None)
    assert explicit == 6 * GIB


def test_cpu_serves_fp16_models_as_fp32() -> None:
    fp16 = llama3_8b(dtype="float16")
    memory, _, _ = vllm_memory(fp16, VllmModelSettings(max_model_len=256, max_num_seqs=1),
                               device_kind="cpu", gpu_total_bytes=None)
    assert memory.weights_bytes == 8_030_000_000 * 4
    bf16, _, _ = vllm_memory(llama3_8b(), VllmModelSettings(max_model_len=256, max_num_seqs=1),
                             device_kind="cpu", gpu_total_bytes=None)
    assert bf16.weights_bytes == 16_060_000_000  # bf16 stays bf16


def test_unknown_kv_size_falls_back_to_one_gib_with_a_note() -> None:
    memory, _, kv = vllm_memory(tiny_llama(kv_bytes_per_token=0), SETTINGS, device_kind="cpu", gpu_total_bytes=None)
    assert kv == GIB
    assert any("unknown" in note for note in memory.notes)


def test_rejects_unknown_device_kind() -> None:
    with pytest.raises(ValueError):
        vllm_memory(tiny_llama(), SETTINGS, device_kind="cuda", gpu_total_bytes=None)
