"""Modelium's own record of what it reserved on which device.

Right after an unload the driver's "free memory" lags (processes still exiting, caching
allocators not yet released), so placement trusts this ledger rather than NVML, as Ollama
does. Thread-safe: the event loop, the watcher thread and runtime callbacks all touch it.
"""

from __future__ import annotations

import threading


class MemoryLedger:
    """instance key -> (device id, reserved bytes); one reservation per runtime instance
    (a model, or the old and new versions of a re-dropped model side by side)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reservations: dict[str, tuple[str, int]] = {}

    def reserve(self, model: str, device_id: str, nbytes: int) -> None:
        """Record a reservation; reserving a model again replaces its old one."""
        if nbytes < 0:
            raise ValueError(f"cannot reserve a negative number of bytes ({nbytes})")
        with self._lock:
            self._reservations[model] = (device_id, int(nbytes))

    def release(self, model: str) -> None:
        """Forget the model's reservation; a no-op if it has none."""
        with self._lock:
            self._reservations.pop(model, None)

    def reserved_on(self, device_id: str) -> int:
        with self._lock:
            return sum(n for dev, n in self._reservations.values() if dev == device_id)

    def reservations(self) -> dict[str, tuple[str, int]]:
        """A copy, safe to iterate while others reserve."""
        with self._lock:
            return dict(self._reservations)

    def by_device(self) -> dict[str, int]:
        """device id -> total reserved bytes (the `reserved` input of `brain.place`)."""
        with self._lock:
            totals: dict[str, int] = {}
            for dev, n in self._reservations.values():
                totals[dev] = totals.get(dev, 0) + n
            return totals

    def bytes_of(self, model: str) -> int:
        with self._lock:
            entry = self._reservations.get(model)
            return entry[1] if entry else 0

    def device_of(self, model: str) -> str | None:
        with self._lock:
            entry = self._reservations.get(model)
            return entry[0] if entry else None
