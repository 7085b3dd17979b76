"""What a model will reserve in a given runtime, and the runtime options that follow.

Shared by the orchestrator (placement, ledger) and `modelium analyze`, so both give the
same answer. Pure: no I/O.

Copies: a runtime that loads a model several times on its device needs memory for each
copy (review finding 10: only one was reserved). Triton loads one copy per model
instance the folder's config.pbtxt asks for (``profile.instances``); Ray Serve one per
replica (the model's ``num_replicas`` override); a vLLM server is one engine however
many requests it batches, so 1.
"""

from __future__ import annotations

from typing import Any

from modelium.analysis import estimate_memory
from modelium.analysis.profile import MemoryEstimate, ModelProfile
from modelium.config import ModeliumSettings, ModelOverride
from modelium.hardware import Device


def size_for_runtime(
    profile: ModelProfile,
    runtime: str | None,
    settings: ModeliumSettings,
    override: ModelOverride,
    *,
    device_kind: str,
    device: Device | None = None,
) -> tuple[MemoryEstimate, dict[str, Any]]:
    """The reservation for ``profile`` in ``runtime``; once ``device`` is known, also the
    options the manager needs (vLLM: its settings, memory share, KV budget, GPU indices)."""
    if runtime == "vllm":
        from modelium.runtimes.vllm.memory import vllm_memory

        vllm_settings = settings.vllm.settings_for(override.vllm)
        total = device.total_bytes if device is not None and device.kind == "gpu" else None
        memory, share, kv_bytes = vllm_memory(
            profile, vllm_settings, device_kind=device_kind, gpu_total_bytes=total
        )
        gpu_indices = [device.index] if device is not None and device.index is not None else []
        return memory, {"vllm": vllm_settings, "gpu_memory_utilization": share,
                        "kv_cache_bytes": kv_bytes, "gpu_indices": gpu_indices}
    memory = estimate_memory(profile, device_kind=device_kind, batch_size=override.batch_size,
                             sequence_length=override.max_sequence_length,
                             copies=copies_for_runtime(profile, runtime, override))
    return memory, {}


def copies_for_runtime(profile: ModelProfile, runtime: str | None, override: ModelOverride) -> int:
    """How many copies of the model ``runtime`` will hold on its device (see the module doc)."""
    if runtime == "triton":
        return max(1, profile.instances)
    if runtime == "ray_serve":
        return max(1, override.num_replicas)
    return 1
