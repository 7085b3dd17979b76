"""`modelium analyze`: what the daemon would do with a folder, computed without a daemon.

Uses the same analyzer, brain and inventory code as the daemon, so the answer is the
daemon's answer (minus what other models already occupy).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modelium.analysis.isolated import check_drop
from modelium.brain import choose_runtime, place
from modelium.config import ModeliumSettings
from modelium.discovery import sanitize_model_name
from modelium.hardware import detect_inventory
from modelium.orchestrator.sizing import size_for_runtime
from modelium.runtimes.vllm.install import locate

IMPLEMENTED_RUNTIMES = ("ray_serve", "vllm", "triton")
GIB = 1024**3


def analysis_report(path: Path, settings: ModeliumSettings) -> dict[str, Any]:
    """Profile + runtime choice + memory estimate + placement, as one JSON-able dict.

    Raises InvalidModelError (with the reason) for folders that cannot be served. A
    single ``.onnx`` file is analysed as the model the daemon makes of it.
    """
    resolved = Path(os.path.realpath(path))  # a link the user names is followed (never raises)
    is_onnx_file = resolved.suffix.lower() == ".onnx" and resolved.is_file()
    name = sanitize_model_name(resolved.stem if is_onnx_file else resolved.name)
    profile = check_drop(resolved, name)  # the daemon's checks: entries, then the analyzer
    override = settings.override_for(name)
    unavailable: dict[str, str] = {}
    vllm_architectures = None
    triton_backends: frozenset[str] | None = None
    if settings.vllm.enabled:
        install, why = locate(settings.vllm.python, state_dir=settings.state_dir)
        if install is None:
            unavailable["vllm"] = why
        else:
            vllm_architectures = settings.vllm.architectures or install.architectures
    if settings.triton.enabled:
        from modelium.runtimes.triton.install import locate_tritonserver
        from modelium.runtimes.triton.server import PROJECT_ROOT

        triton_install = locate_tritonserver(settings.triton.executable, PROJECT_ROOT)
        if triton_install is None:
            unavailable["triton"] = "triton is enabled but no tritonserver was found (`make triton`)"
        elif settings.triton.endpoint == "auto":
            triton_backends = triton_install.backends
    choice = choose_runtime(profile, enabled=settings.enabled_runtimes(),
                            implemented=IMPLEMENTED_RUNTIMES, override=override.runtime,
                            vllm_architectures=vllm_architectures, unavailable=unavailable,
                            triton_backends=triton_backends)
    inventory = detect_inventory(settings.gpus)
    memory, _ = size_for_runtime(profile, choice.runtime, settings, override,
                                 device_kind="gpu" if inventory.has_gpu else "cpu")
    placement = place(
        memory.total_bytes,
        inventory,
        {},
        max_utilization=settings.orchestration.max_gpu_memory_utilization,
        strategy=settings.orchestration.placement,
        pinned_device=f"gpu:{override.gpu}" if override.gpu is not None else None,
    )
    report = profile.to_dict()
    report.update(
        runtime=choice.runtime,
        reason=choice.reason,
        memory=memory.to_dict(),
        placement={
            "fits": placement.device is not None,
            "device": placement.device.id if placement.device else None,
            "reason": placement.reason,
            "inventory_source": inventory.source,
            "devices": [d.to_dict() for d in inventory.devices],
        },
    )
    return report


def render_report(report: dict[str, Any]) -> str:
    memory = report["memory"]
    lines = [
        f"model         {report['name']}  ({report['path']})",
        f"format        {report['format']}",
        f"architecture  {report['architecture']}  (model_type {report['model_type']})",
        f"task          {report['task']}",
        f"parameters    {report['parameters']:,}  (from {report['parameters_source']})",
        f"dtype         {report['dtype']}",
        f"weights       {report['weight_bytes'] / GIB:.3f} GiB",
        f"context       {report['context_length']} tokens, KV cache {report['kv_bytes_per_token']:,} B/token",
        f"runtime       {report['runtime'] or 'none'}",
        f"  why         {report['reason']}",
        f"memory        {memory['total_bytes'] / GIB:.3f} GiB on {memory['device_kind']} "
        f"(batch {memory['batch_size']} x {memory['sequence_length']} tokens)",
    ]
    for item in ("weights_bytes", "kv_cache_bytes", "activation_bytes", "runtime_overhead_bytes"):
        lines.append(f"  {item.removesuffix('_bytes'):<18} {memory[item] / GIB:.3f} GiB")
    if memory["copies"] > 1:  # Triton instances / Ray replicas: each holds all of the above
        lines.append(f"  {'copies':<18} x{memory['copies']} (the items above are per copy)")
    placement = report["placement"]
    verdict = f"fits on {placement['device']}" if placement["fits"] else "does not fit"
    lines.append(f"placement     {verdict} ({placement['inventory_source']} inventory)")
    lines.append(f"  why         {placement['reason']}")
    for warning in report.get("warnings") or []:
        lines.append(f"warning       {warning}")
    return "\n".join(lines)
