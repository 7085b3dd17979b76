"""Finding the devices models can be placed on.

Three sources, in the order a deployment meets them: GPUs listed in the config (simulated,
for tests and capacity planning on a laptop), real GPUs via NVML, and host RAM when there is
no GPU at all (so the same daemon runs CPU models on a plain machine). NVML failures are
never fatal: a box without a driver is simply a CPU box.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import psutil

from modelium.hardware.devices import Device, Inventory

GIB = 1024**3


class GpuSpecLike(Protocol):
    """What `detect_inventory` needs from a configured GPU (the config's GpuSpec)."""

    id: int
    memory_gb: float
    name: str


def _decode(value: Any) -> str:
    """Older pynvml returns bytes for names; newer returns str."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _load_nvml() -> Any | None:
    """Import and initialise NVML, or None when there is no library/driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass


def _nvml_devices() -> list[Device]:
    """One Device per NVML GPU; [] when NVML is missing or fails part-way."""
    nvml = _load_nvml()
    if nvml is None:
        return []
    try:
        devices: list[Device] = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                Device(
                    id=f"gpu:{index}",
                    kind="gpu",
                    index=index,
                    total_bytes=int(mem.total),
                    name=_decode(nvml.nvmlDeviceGetName(handle)),
                    used_bytes_outside=int(mem.used),
                )
            )
        return devices
    except Exception:
        return []
    finally:
        _shutdown(nvml)


def host_device() -> Device:
    """Host RAM as the single device of a machine without GPUs."""
    return Device(
        id="cpu",
        kind="cpu",
        index=None,
        total_bytes=int(psutil.virtual_memory().total),
        name="host RAM",
    )


def detect_inventory(gpus: Literal["auto"] | Sequence[GpuSpecLike]) -> Inventory:
    """Devices from the config's GPU list, or (``"auto"``) from NVML, else host RAM."""
    if isinstance(gpus, str):
        if gpus != "auto":
            raise ValueError(f"gpus must be 'auto' or a list of GPU specs, got {gpus!r}")
        found = _nvml_devices()
        if found:
            return Inventory(devices=tuple(found), source="nvml")
        return Inventory(devices=(host_device(),), source="host")
    # A configured GPU that NVML also sees is real (the config caps what Modelium plans on
    # it); one it does not see is simulated: planned on like a GPU, run on the CPU.
    real = {device.index for device in _nvml_devices()}
    devices = tuple(
        Device(
            id=f"gpu:{spec.id}",
            kind="gpu",
            index=int(spec.id),
            total_bytes=int(spec.memory_gb * GIB),
            name=spec.name,
            simulated=int(spec.id) not in real,
        )
        for spec in gpus
    )
    return Inventory(devices=devices, source="configured")


def gpu_memory_usage() -> list[tuple[str, int, int]]:
    """(device_id, used_bytes, total_bytes) per real GPU, for metrics; [] without NVML.

    Called at every metrics scrape, so it must never raise.
    """
    try:
        return [(d.id, d.used_bytes_outside, d.total_bytes) for d in _nvml_devices()]
    except Exception:
        return []
