"""Itemized memory needed to serve a profiled model on one device.

    total = (weights + kv_cache + activations + runtime_overhead) x copies

weights      profile.weight_bytes (exact from headers/files); config-only drops use
             parameters * bytes(dtype).
kv_cache     kv_bytes_per_token * batch * seq, where kv_bytes_per_token =
             2 (K,V) * layers * kv_heads * head_dim * bytes(dtype). Encoders: 0.
activations  batch * seq * bytes(dtype) * (vocab [if the model emits vocab logits]
             + 16 * hidden).
             A forward pass's peak above the weights is dominated by the logits tensor
             (batch*seq*vocab in the model dtype); the 16*hidden term covers the transient
             per-token buffers (residual, norm output, q/k/v/o, SwiGLU gate/up/act at ~3.5
             hidden each). Attention is assumed to be SDPA/flash, so no seq^2 term.
overhead     gpu: CUDA context 0.65 GiB per process + allocator margin of
             max(64 MiB, 4% of the rest) for caching-allocator fragmentation.
             cpu: ~0.5 GiB for python + torch + transformers.
copies       how many copies the runtime loads (Triton instance_group count, Ray Serve
             num_replicas): each is a process with its own weights, context and
             buffers, so every item is per copy.

Calibration: forward-pass peak above weights measured with transformers in bf16 on one
H100 (peaks include the KV cache, so they compare with kv_cache + activations):

    Llama-3-8B shape (16.06 GB weights)  batch 1 x  512   +0.24 GB  -> estimate +0.27 GB
    Llama-3-8B shape                     batch 4 x 1024   +1.65 GB  -> estimate +2.13 GB
    GPT-2 (0.25 GB weights)              batch 4 x 1024   +0.58 GB  -> estimate +0.66 GB

With weights and overhead included the estimated totals are 4-14% above the measured
totals (weights + peak + 0.65 GB context), never below; tests pin this.
"""

from __future__ import annotations

from modelium.analysis.dtypes import dtype_bytes
from modelium.analysis.profile import MemoryEstimate, ModelProfile

GIB = 1024**3
MIB = 1024**2
CUDA_CONTEXT_BYTES = int(0.65 * GIB)
CPU_PROCESS_BYTES = int(0.5 * GIB)
ALLOCATOR_MARGIN_MIN = 64 * MIB
ALLOCATOR_MARGIN_FRACTION = 0.04
HIDDEN_BUFFERS_PER_TOKEN = 16  # multiples of hidden_size alive at the peak, per token

# Tasks whose forward pass ends in a [batch, seq, vocab] logits tensor.
_VOCAB_LOGIT_TASKS = ("text-generation", "text2text-generation", "fill-mask")
DEFAULT_DECODER_SEQUENCE = 2048
DEFAULT_ENCODER_SEQUENCE = 512


def _is_decoder(profile: ModelProfile) -> bool:
    return profile.kv_bytes_per_token > 0 or profile.task in (
        "text-generation", "text2text-generation"
    )


def default_sequence_length(profile: ModelProfile) -> int:
    """What a typical request batch will use: capped context for decoders, 512 otherwise."""
    cap = DEFAULT_DECODER_SEQUENCE if _is_decoder(profile) else DEFAULT_ENCODER_SEQUENCE
    return min(profile.context_length or cap, cap)


def estimate_memory(
    profile: ModelProfile,
    *,
    device_kind: str = "gpu",
    batch_size: int = 1,
    sequence_length: int | None = None,
    copies: int = 1,
) -> MemoryEstimate:
    """Bytes to serve `copies` copies of `profile` at `batch_size` x `sequence_length`
    each on one device."""
    if device_kind not in ("gpu", "cpu"):
        raise ValueError(f"device_kind must be 'gpu' or 'cpu', got {device_kind!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    seq = sequence_length if sequence_length is not None else default_sequence_length(profile)
    if seq < 1:
        raise ValueError(f"sequence_length must be >= 1, got {seq}")

    notes: list[str] = []
    if copies > 1:
        notes.append(f"{copies} copies: every item is per copy")
    itemsize = dtype_bytes(profile.dtype)
    weights = profile.weight_bytes
    if weights == 0 and profile.parameters:
        weights = profile.parameters * itemsize
        notes.append(f"weights computed as parameters x {itemsize} bytes ({profile.dtype})")

    tokens = batch_size * seq
    kv_cache = profile.kv_bytes_per_token * tokens

    per_token = 0
    if profile.task in _VOCAB_LOGIT_TASKS and profile.vocab_size:
        per_token += profile.vocab_size
    if profile.hidden_size:
        per_token += HIDDEN_BUFFERS_PER_TOKEN * profile.hidden_size
    else:
        notes.append("hidden size unknown: activations not estimated")
    activations = tokens * itemsize * per_token

    if device_kind == "gpu":
        margin = max(
            ALLOCATOR_MARGIN_MIN,
            int(ALLOCATOR_MARGIN_FRACTION * (weights + kv_cache + activations)),
        )
        overhead = CUDA_CONTEXT_BYTES + margin
    else:
        overhead = CPU_PROCESS_BYTES

    return MemoryEstimate(
        weights_bytes=weights,
        kv_cache_bytes=kv_cache,
        activation_bytes=activations,
        runtime_overhead_bytes=overhead,
        batch_size=batch_size,
        sequence_length=seq,
        device_kind=device_kind,
        notes=tuple(notes),
        copies=copies,
    )
