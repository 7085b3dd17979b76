"""Packing reservations onto devices.

Pure functions over the inventory and the ledger's totals. Free memory is computed from
Modelium's own reservations (not NVML's live "free"), which lags after unloads. What to
evict when nothing fits is :mod:`modelium.brain.victims`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from modelium.brain.decisions import PlacementDecision
from modelium.hardware.devices import Device, Inventory

GIB = 1024**3
STRATEGIES = ("best-fit", "spread")


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f} GiB"


def _order(device: Device) -> tuple[int, int, str]:
    """Tie-break order: GPUs by CUDA index (so gpu:2 < gpu:10), then host RAM."""
    return (0 if device.kind == "gpu" else 1, device.index or 0, device.id)


def usable_bytes(device: Device, max_utilization: float) -> int:
    """What Modelium may fill on a device: a utilization cap, less others' GPU memory use."""
    cap = int(device.total_bytes * max_utilization)
    if device.kind == "gpu":
        return max(0, cap - device.used_bytes_outside)
    return cap


def _free(device: Device, reserved: Mapping[str, int], max_utilization: float) -> int:
    return usable_bytes(device, max_utilization) - reserved.get(device.id, 0)


def _listing(
    devices: Sequence[Device], reserved: Mapping[str, int], max_utilization: float
) -> str:
    return ", ".join(
        f"{d.id} {_gib(max(0, _free(d, reserved, max_utilization)))} free of "
        f"{_gib(usable_bytes(d, max_utilization))} usable"
        for d in sorted(devices, key=_order)
    )


def place(
    required_bytes: int,
    inventory: Inventory,
    reserved: Mapping[str, int],
    *,
    max_utilization: float = 0.9,
    strategy: str = "best-fit",
    pinned_device: str | None = None,
) -> PlacementDecision:
    """Pick a device for `required_bytes`, or refuse saying whether eviction could help.

    best-fit takes the fitting device with the least free memory (keeps big holes for big
    models); spread takes the one with the most. Refusals are "too-large" when no device
    could hold it even empty (eviction is pointless) and "no-fit"/"pinned-no-fit" otherwise.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if required_bytes < 0:
        raise ValueError(f"required_bytes must be >= 0, got {required_bytes}")
    need = _gib(required_bytes)

    def refuse(reason: str, code: str) -> PlacementDecision:
        return PlacementDecision(None, reason, code, required_bytes, None)

    if pinned_device is not None:
        device = inventory.get(pinned_device)
        if device is None:
            known = ", ".join(d.id for d in sorted(inventory.devices, key=_order)) or "none"
            return refuse(
                f"pinned to {pinned_device}, which is not in the inventory (devices: {known})",
                "pinned-unknown-device",
            )
        free = _free(device, reserved, max_utilization)
        usable = usable_bytes(device, max_utilization)
        if free >= required_bytes:
            return PlacementDecision(
                device,
                f"pinned to {device.id}: needs {need}, {_gib(free)} free of {_gib(usable)} usable",
                "pinned",
                required_bytes,
                free - required_bytes,
            )
        if usable < required_bytes:
            return refuse(
                f"pinned to {device.id} but needs {need}, more than its {_gib(usable)} usable "
                "even when empty",
                "too-large",
            )
        return refuse(
            f"pinned to {device.id} but needs {need}, only {_gib(max(0, free))} free of "
            f"{_gib(usable)} usable",
            "pinned-no-fit",
        )

    devices = list(inventory.devices)
    if not devices:
        return refuse(f"needs {need} but the inventory has no devices", "too-large")
    fitting = [d for d in devices if _free(d, reserved, max_utilization) >= required_bytes]
    if not fitting:
        listing = _listing(devices, reserved, max_utilization)
        if any(usable_bytes(d, max_utilization) >= required_bytes for d in devices):
            return refuse(
                f"no device has {need} free now ({listing}); unloading models could make room",
                "no-fit",
            )
        return refuse(
            f"needs {need}, more than any device can hold even when empty ({listing})",
            "too-large",
        )

    if strategy == "best-fit":
        device = min(fitting, key=lambda d: (_free(d, reserved, max_utilization), _order(d)))
        label = "best fit"
    else:
        device = min(fitting, key=lambda d: (-_free(d, reserved, max_utilization), _order(d)))
        label = "most free memory (spread)"
    free = _free(device, reserved, max_utilization)
    return PlacementDecision(
        device,
        f"{device.id} {label}: needs {need}, {_gib(free)} free of "
        f"{_gib(usable_bytes(device, max_utilization))} usable",
        strategy,
        required_bytes,
        free - required_bytes,
    )
