"""VllmManager parking, reuse of a live server, and instance keys vs public names, against
the fake vLLM server of test_vllm_server.py (a FAKE: real sleep mode needs a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from modelium.config.settings import VllmModelSettings
from modelium.hardware.devices import Device
from modelium.runtimes.base import Capability, LoadRequest
from modelium.runtimes.vllm.memory import PARK_RESIDUE_BYTES
from tests.unit.test_vllm_server import (  # noqa: F401 - fixtures used by name
    CPU,
    GPU,
    _alive,
    _local_connections_allowed,
    _manager,
    _profile,
    _request,
    _wait_gone,
    fake_vllm,
)
from modelium.analysis.profile import MemoryEstimate

PARK = VllmModelSettings(max_model_len=256, park=True)
OTHER_GPU = Device(id="gpu:0", kind="gpu", index=0, total_bytes=80 << 30, name="simulated")


def _parkable(name: str = "p", device: Device = GPU) -> LoadRequest:
    return _request(name, device, vllm=PARK, gpu_memory_utilization=0.2, kv_cache_bytes=1,
                    gpu_indices=[device.index])


async def test_park_capability_and_residue(tmp_path: Path, fake_vllm: Path) -> None:
    manager = _manager(tmp_path, device="cuda")
    assert Capability.PARK in manager.capabilities
    await manager.start()
    try:
        await manager.load(_parkable("p"))
        await manager.load(_request("q", GPU, vllm=VllmModelSettings(max_model_len=256)))
        assert manager.park_residue_bytes("p") == PARK_RESIDUE_BYTES
        assert manager.park_residue_bytes("q") is None  # not started with sleep mode
        assert manager.park_residue_bytes("nope") is None
        with pytest.raises(RuntimeError, match="park enabled"):
            await manager.park("q")
    finally:
        await manager.stop()
    cpu = _manager(tmp_path / "cpu")
    await cpu.start()
    try:
        await cpu.load(_request("c", CPU, vllm=PARK))  # park asked for, but on the CPU
        assert cpu.park_residue_bytes("c") is None
    finally:
        await cpu.stop()


async def test_load_of_a_parked_server_wakes_it(tmp_path: Path, fake_vllm: Path) -> None:
    manager = _manager(tmp_path, device="cuda")
    await manager.start()
    try:
        await manager.load(_parkable())
        server = manager._servers["p"]
        await manager.park("p")
        assert manager.is_parked("p") and await server.is_sleeping()
        await manager.load(_parkable())  # never "already running" while asleep
        assert manager._servers["p"] is server and not manager.is_parked("p")
        assert not await server.is_sleeping()
        # asleep without the manager knowing (a park call that timed out after it worked)
        await server.park()
        server.parked = False
        await manager.load(_parkable())
        assert manager._servers["p"] is server and not await server.is_sleeping()
        assert await manager.infer("p", "hi", {"max_new_tokens": 1})
    finally:
        await manager.stop()


async def test_a_server_that_cannot_wake_is_replaced(tmp_path: Path, fake_vllm: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_WAKE_FAIL", "1")
    manager = _manager(tmp_path, device="cuda")
    await manager.start()
    try:
        await manager.load(_parkable())
        old = manager._servers["p"]
        await manager.park("p")
        await manager.load(_parkable())
        new = manager._servers["p"]
        assert new is not old and _wait_gone(old.pid) and _alive(new.pid)
        assert not manager.is_parked("p") and not await new.is_sleeping()
        assert await manager.loaded_models() == {"p"} and manager.exit_reason("p") is None
        assert manager.ports.allocated == frozenset({new.port})
    finally:
        await manager.stop()


async def test_a_live_server_on_another_device_is_replaced(tmp_path: Path, fake_vllm: Path) -> None:
    """After a refused wake the model may be placed elsewhere: the old server must not
    answer for it (review finding 7)."""
    manager = _manager(tmp_path, device="cuda")
    await manager.start()
    try:
        await manager.load(_parkable("p", GPU))
        old = manager._servers["p"]
        await manager.park("p")
        await manager.load(_parkable("p", OTHER_GPU))
        new = manager._servers["p"]
        assert new is not old and _wait_gone(old.pid)
        assert psutil.Process(new.pid).environ()["CUDA_VISIBLE_DEVICES"] == "0"
    finally:
        await manager.stop()


async def test_instance_key_names_the_server_public_name_the_model(tmp_path: Path, fake_vllm: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    manager = _manager(tmp_path)
    await manager.start()
    try:
        request = LoadRequest(name="chat.REV2", served_name="chat", model_dir=Path("/models/chat"),
                              profile=_profile(), device=CPU, memory=MemoryEstimate(0, 0, 0, 0, 1, 1, "cpu"))
        await manager.load(request)
        server = manager._servers["chat.REV2"]
        assert server.command[server.command.index("--served-model-name") + 1] == "chat"
        assert (tmp_path / "state/vllm/logs/chat.REV2.log").exists()
        assert psutil.Process(server.pid).environ()["MODELIUM_VLLM_INSTANCE"] == "chat.REV2"
        assert await manager.loaded_models() == {"chat.REV2"}
        assert await manager.process_ids("chat.REV2") == [server.pid]
        assert await manager.process_ids("chat") == []
        out = await manager.infer("chat.REV2", "hi", {"max_new_tokens": 2})
        assert out["generated_text"] == "<hi>"  # the fake answers 404 unless model == its served name
        assert json.loads(record.read_text().splitlines()[-1])["body"]["model"] == "chat"
        await manager.unload("chat.REV2")
        assert await manager.process_ids("chat.REV2") == []
    finally:
        await manager.stop()
