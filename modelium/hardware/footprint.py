"""What a model's processes really hold on their device, for checking reservations.

The ledger reserves what the analysis *predicts*; this module measures what the model's
processes (``RuntimeManager.process_ids``: a vLLM server, Triton stubs, Ray replicas)
*take*, so the two can be compared and drift noticed. Every process is counted with its
descendants (vLLM's engine core is a child of the API server), and each process once.

* Real GPU (NVML): the sum of ``usedGpuMemory`` over the compute processes on that GPU
  that are among the pids or their descendants. ``None`` when NVML cannot answer (no
  driver, no permission, a GPU it does not know): "unknown" must never read as 0.
* Host RAM, and simulated GPUs (planned as GPUs, run on the CPU): the sum of PSS
  (proportional set size: shared pages split between the processes sharing them, so
  two stubs importing the same torch are not counted twice over), falling back to RSS
  where PSS cannot be read.

Blocking (NVML init, /proc reads): callers run it in a thread. It never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psutil

from modelium.hardware.devices import Device

log = logging.getLogger(__name__)


def measure_footprint(pids: Iterable[int], device: Device) -> int | None:
    """Bytes the processes ``pids`` (and their descendants) hold on ``device``; None when
    that cannot be measured (NVML unavailable for a real GPU). ``[]`` gives 0."""
    try:
        processes = process_tree(pids)
        if device.kind == "gpu" and not device.simulated:
            return _gpu_bytes({p.pid for p in processes}, device)
        return _host_bytes(processes)
    except Exception as exc:  # noqa: BLE001 - a measurement must never break its caller
        log.debug("footprint of %s on %s failed: %s", list(pids), device.id, exc)
        return None


def process_tree(pids: Iterable[int]) -> list[psutil.Process]:
    """The live processes among ``pids`` and all their descendants, each once."""
    seen: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in members:
            seen.setdefault(proc.pid, proc)
    return list(seen.values())


def _host_bytes(processes: list[psutil.Process]) -> int:
    total = 0
    for proc in processes:
        try:
            total += _pss_or_rss(proc)
        except psutil.Error:
            continue  # exited meanwhile: it holds nothing now
    return total


def _pss_or_rss(proc: psutil.Process) -> int:
    """PSS (Linux: /proc/PID/smaps_rollup); RSS when smaps may not be read (another
    user's process)."""
    try:
        return int(proc.memory_full_info().pss)
    except psutil.AccessDenied:
        return int(proc.memory_info().rss)


def _gpu_bytes(pids: set[int], device: Device) -> int | None:
    if device.index is None:
        return None
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(device.index)
        running = list(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
    except Exception as exc:  # noqa: BLE001 - NVMLError and friends
        log.debug("NVML could not list the processes on %s: %s", device.id, exc)
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    total = 0
    for info in running:
        used = info.usedGpuMemory  # None when the driver cannot tell (e.g. some MIG setups)
        if info.pid in pids and used is not None:
            total += int(used)
    return total


def _nvml() -> Any | None:
    """pynvml, initialised (once per measurement), or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound, DriverNotLoaded...
        return None
    return pynvml
