"""Devices models can be placed on: GPUs (real or simulated) or, without any GPU, host RAM.

Plain frozen data so the brain can reason over it without touching NVML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

DeviceKind = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class Device:
    """One place a model can live. ``id`` is stable and human-readable: ``gpu:0`` or ``cpu``."""

    id: str
    kind: DeviceKind
    index: int | None  # CUDA index for GPUs, None for host RAM
    total_bytes: int
    name: str  # e.g. "NVIDIA H100 80GB HBM3", "simulated", "host RAM"
    used_bytes_outside: int = 0  # memory taken by things Modelium did not place (NVML)
    simulated: bool = False  # a configured GPU (`gpus:` list): planned on, but run on CPU

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "index": self.index,
            "name": self.name,
            "total_bytes": self.total_bytes,
            "used_bytes_outside": self.used_bytes_outside,
            "simulated": self.simulated,
        }


@dataclass(frozen=True)
class Inventory:
    """All devices known right now, and where the list came from."""

    devices: tuple[Device, ...]
    source: Literal["nvml", "configured", "host"]

    @property
    def has_gpu(self) -> bool:
        return any(d.kind == "gpu" for d in self.devices)

    def get(self, device_id: str) -> Device | None:
        return next((d for d in self.devices if d.id == device_id), None)
