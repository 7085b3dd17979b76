"""Inventory detection (configured, NVML, host fallback) and the reservation ledger."""

from __future__ import annotations

import sys
import threading
import types
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from modelium.hardware import GIB, MemoryLedger, detect_inventory, gpu_memory_usage


@dataclass
class Spec:
    id: int
    memory_gb: float
    name: str = "simulated"


class FakeNvml(types.ModuleType):
    """A pynvml stand-in with configurable GPUs; records init/shutdown calls."""

    def __init__(self, gpus: list[tuple[str | bytes, int, int]], fail_init: bool = False) -> None:
        super().__init__("pynvml")
        self.gpus = gpus
        self.fail_init = fail_init
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return self.gpus[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        _, total, used = self.gpus[handle]
        return types.SimpleNamespace(total=total, used=used, free=total - used)


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch):
    def install(gpus: list[tuple[str | bytes, int, int]], fail_init: bool = False) -> FakeNvml:
        mod = FakeNvml(gpus, fail_init)
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        return mod

    return install


def test_configured_gpus_become_simulated_devices() -> None:
    inv = detect_inventory([Spec(0, 80, "H100 sim"), Spec(3, 24.5)])
    assert inv.source == "configured"
    assert [d.id for d in inv.devices] == ["gpu:0", "gpu:3"]
    d0, d3 = inv.devices
    assert (d0.kind, d0.index, d0.total_bytes, d0.name) == ("gpu", 0, 80 * GIB, "H100 sim")
    assert d3.index == 3 and d3.total_bytes == int(24.5 * GIB)
    assert d0.used_bytes_outside == 0
    assert inv.has_gpu and inv.get("gpu:3") is d3


def test_empty_configured_list_is_an_empty_inventory() -> None:
    inv = detect_inventory([])
    assert inv.devices == () and inv.source == "configured"


def test_bad_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="auto"):
        detect_inventory("all")  # type: ignore[arg-type]


def test_auto_without_nvml_falls_back_to_host_ram(fake_nvml) -> None:
    fake_nvml([], fail_init=True)
    inv = detect_inventory("auto")
    assert inv.source == "host"
    (dev,) = inv.devices
    assert (dev.id, dev.kind, dev.index, dev.name) == ("cpu", "cpu", None, "host RAM")
    assert dev.total_bytes == psutil.virtual_memory().total
    assert not inv.has_gpu


def test_auto_with_zero_gpus_falls_back_and_shuts_nvml_down(fake_nvml) -> None:
    nvml = fake_nvml([])
    inv = detect_inventory("auto")
    assert inv.source == "host"
    assert nvml.inits == 1 and nvml.shutdowns == 1


def test_auto_reads_nvml_gpus(fake_nvml) -> None:
    nvml = fake_nvml([(b"NVIDIA H100 80GB HBM3", 80 * GIB, 2 * GIB), ("NVIDIA L4", 24 * GIB, 0)])
    inv = detect_inventory("auto")
    assert inv.source == "nvml"
    assert [(d.id, d.index, d.name, d.total_bytes, d.used_bytes_outside) for d in inv.devices] == [
        ("gpu:0", 0, "NVIDIA H100 80GB HBM3", 80 * GIB, 2 * GIB),
        ("gpu:1", 1, "NVIDIA L4", 24 * GIB, 0),
    ]
    assert nvml.shutdowns == 1


def test_nvml_failing_mid_query_falls_back_and_shuts_down(fake_nvml, monkeypatch) -> None:
    nvml = fake_nvml([("X", GIB, 0)])

    def boom(handle: int) -> Any:
        raise RuntimeError("GPU is lost")

    monkeypatch.setattr(nvml, "nvmlDeviceGetMemoryInfo", boom)
    assert detect_inventory("auto").source == "host"
    assert nvml.shutdowns == 1
    assert gpu_memory_usage() == []


def test_gpu_memory_usage(fake_nvml) -> None:
    fake_nvml([("A", 16 * GIB, 3 * GIB)])
    assert gpu_memory_usage() == [("gpu:0", 3 * GIB, 16 * GIB)]


def test_gpu_memory_usage_never_raises_without_nvml(fake_nvml) -> None:
    fake_nvml([], fail_init=True)
    assert gpu_memory_usage() == []


def test_gpu_memory_usage_on_this_machine_returns_a_list() -> None:
    # Real pynvml: no GPU here, so [] — but it must not raise either way.
    result = gpu_memory_usage()
    assert isinstance(result, list)
    assert all(len(row) == 3 for row in result)


def test_ledger_reserve_replace_release() -> None:
    ledger = MemoryLedger()
    ledger.reserve("a", "gpu:0", 10)
    ledger.reserve("b", "gpu:0", 5)
    ledger.reserve("c", "gpu:1", 7)
    assert ledger.reserved_on("gpu:0") == 15
    assert ledger.by_device() == {"gpu:0": 15, "gpu:1": 7}

    ledger.reserve("a", "gpu:1", 3)  # replaces, does not add
    assert ledger.reservations() == {"a": ("gpu:1", 3), "b": ("gpu:0", 5), "c": ("gpu:1", 7)}
    assert ledger.by_device() == {"gpu:0": 5, "gpu:1": 10}
    assert ledger.device_of("a") == "gpu:1"

    ledger.release("a")
    ledger.release("never-reserved")
    assert ledger.device_of("a") is None
    assert ledger.reserved_on("gpu:1") == 7
    assert ledger.reserved_on("gpu:9") == 0


def test_ledger_reservations_is_a_copy_and_rejects_negative() -> None:
    ledger = MemoryLedger()
    ledger.reserve("a", "cpu", 1)
    snapshot = ledger.reservations()
    snapshot["b"] = ("cpu", 2)
    assert "b" not in ledger.reservations()
    with pytest.raises(ValueError):
        ledger.reserve("x", "cpu", -1)


def test_ledger_is_thread_safe() -> None:
    ledger = MemoryLedger()

    def work(t: int) -> None:
        for i in range(500):
            ledger.reserve(f"m{t}-{i}", f"gpu:{t % 2}", 1)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert ledger.by_device() == {"gpu:0": 2000, "gpu:1": 2000}
