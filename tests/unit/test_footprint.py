"""measure_footprint against this test's own child processes (host RAM) and a stand-in
NVML module (the GPU path: which processes are summed, and None when NVML is absent)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from modelium.hardware import footprint
from modelium.hardware.devices import Device
from modelium.hardware.footprint import measure_footprint, process_tree

MIB = 1024**2
CPU = Device(id="cpu", kind="cpu", index=None, total_bytes=16 << 30, name="host RAM")
GPU = Device(id="gpu:0", kind="gpu", index=0, total_bytes=80 << 30, name="H100")
SIMULATED = Device(id="gpu:1", kind="gpu", index=1, total_bytes=2 << 30, name="simulated", simulated=True)

# A parent holding ~60 MiB that starts a child holding ~40 MiB; both touch their pages.
_HOLDER = """
import subprocess, sys, time
block = bytearray({mib} * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
if {spawn}:
    child = subprocess.Popen([sys.executable, "-c", {child!r}])
print("ready", flush=True)
time.sleep(60)
"""
_CHILD = "import time\nblock = bytearray(40 * 1024 * 1024)\nfor i in range(0, len(block), 4096): block[i] = 1\ntime.sleep(60)"


@pytest.fixture
def holder():
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER.format(mib=60, spawn=True, child=_CHILD)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 20
    while True:  # the grandchild is up and has touched its 40 MiB
        children = psutil.Process(proc.pid).children()
        if children and children[0].memory_info().rss > 40 * MIB:
            break
        assert time.monotonic() < deadline, "the child process did not start"
        time.sleep(0.05)
    try:
        yield proc
    finally:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()


def test_host_ram_counts_the_processes_and_their_descendants(holder) -> None:
    child = psutil.Process(holder.pid).children()[0]
    total = measure_footprint([holder.pid], CPU)
    alone = measure_footprint([child.pid], CPU)
    assert total is not None and alone is not None
    assert total >= 100 * MIB  # 60 MiB + 40 MiB, plus two interpreters
    assert 40 * MIB <= alone < total
    # each process once: naming the child too (or twice) changes nothing
    assert abs(measure_footprint([holder.pid, child.pid, holder.pid], CPU) - total) < 4 * MIB
    assert {p.pid for p in process_tree([holder.pid])} == {holder.pid, child.pid}


def test_pss_is_used_and_below_the_rss_sum(holder) -> None:
    procs = process_tree([holder.pid])
    rss = sum(p.memory_info().rss for p in procs)
    pss = measure_footprint([holder.pid], CPU)
    assert pss is not None and pss <= rss  # shared pages (the interpreter) are split, not doubled


def test_simulated_gpu_is_measured_in_host_ram(holder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(footprint, "_nvml", lambda: pytest.fail("NVML must not be asked for a simulated GPU"))
    assert measure_footprint([holder.pid], SIMULATED) >= 100 * MIB


def test_gone_and_empty_pids_hold_nothing() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert measure_footprint([dead.pid], CPU) == 0
    assert measure_footprint([], CPU) == 0


class _FakeNvml:
    """The part of pynvml measure_footprint uses; records init/shutdown."""

    def __init__(self, processes: list[SimpleNamespace], fail: bool = False) -> None:
        self.processes = processes
        self.fail = fail
        self.calls: list[str] = []

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        self.calls.append(f"handle {index}")
        if self.fail:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return f"h{index}"

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[SimpleNamespace]:
        return self.processes

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")


def test_gpu_sums_used_memory_of_the_tree_on_that_gpu(holder, monkeypatch: pytest.MonkeyPatch) -> None:
    child = psutil.Process(holder.pid).children()[0]
    nvml = _FakeNvml([
        SimpleNamespace(pid=holder.pid, usedGpuMemory=3 * MIB),
        SimpleNamespace(pid=child.pid, usedGpuMemory=5 * MIB),  # a descendant: counted
        SimpleNamespace(pid=1, usedGpuMemory=100 * MIB),  # not ours
        SimpleNamespace(pid=child.pid, usedGpuMemory=None),  # driver cannot tell: skipped
    ])
    monkeypatch.setattr(footprint, "_nvml", lambda: nvml)
    assert measure_footprint([holder.pid], GPU) == 8 * MIB
    assert nvml.calls == ["handle 0", "shutdown"]  # one init/shutdown per call


def test_gpu_without_nvml_is_unknown_not_zero(holder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(footprint, "_nvml", lambda: None)
    assert measure_footprint([holder.pid], GPU) is None
    failing = _FakeNvml([], fail=True)
    monkeypatch.setattr(footprint, "_nvml", lambda: failing)
    assert measure_footprint([holder.pid], GPU) is None  # never raises
    assert failing.calls[-1] == "shutdown"


def test_real_nvml(holder) -> None:
    """The real pynvml: without a driver it cannot initialise (None, no exception); with
    one, CPU-only processes hold 0 bytes on GPU 0."""
    expected = 0 if Path("/dev/nvidiactl").exists() else None
    assert measure_footprint([holder.pid], GPU) == expected
