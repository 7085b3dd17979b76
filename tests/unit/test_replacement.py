"""Atomic re-drops with a fake runtime: no request fails, a bad new version never replaces
a good one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from modelium.config import settings_from_dict
from modelium.discovery import REASON_FILE
from modelium.hardware import GIB, Device, Inventory, MemoryLedger
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import DropHandler, ModelState, Orchestrator
from tests.unit.fakes import FakeManager, make_config_only_model

S = ModelState


def build(tmp_path: Path, gpu_gib: float) -> tuple[Orchestrator, FakeManager]:
    settings = settings_from_dict({}, base_dir=tmp_path, env={})
    inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, int(gpu_gib * GIB), "simulated"),),
                          source="configured")
    manager = FakeManager()
    return Orchestrator(settings, {"ray_serve": manager}, inventory, MemoryLedger(), ModeliumMetrics()), manager


async def hammer(orchestrator: Orchestrator, stop: asyncio.Event, seen: list[str]) -> int:
    failures = 0
    while not stop.is_set():
        try:
            _, out = await orchestrator.predict("m", "x", {"sleep": 0.002})
            seen.append(out["instance"])
        except Exception:  # noqa: BLE001 - counted: there must be none
            failures += 1
        await asyncio.sleep(0)
    return failures


async def redrop_under_load(tmp_path: Path, gpu_gib: float, **new_config):
    orchestrator, manager = build(tmp_path, gpu_gib)
    await orchestrator.start()
    handler = DropHandler(orchestrator)
    await handler("m", make_config_only_model(tmp_path / "models/incoming/m"))
    await orchestrator.quiesce()
    stop, seen = asyncio.Event(), []
    clients = [asyncio.ensure_future(hammer(orchestrator, stop, seen)) for _ in range(8)]
    await asyncio.sleep(0.05)
    await handler("m", make_config_only_model(tmp_path / "models/incoming/m", **new_config))
    await orchestrator.quiesce()
    await asyncio.sleep(0.05)
    stop.set()
    failures = sum(await asyncio.gather(*clients))
    return orchestrator, manager, failures, seen


async def test_side_by_side_redrop_under_load_fails_no_request(tmp_path):
    orchestrator, manager, failures, seen = await redrop_under_load(tmp_path, 4.0, num_hidden_layers=3)
    assert failures == 0 and seen[0] == "m" and seen[-1] == "m.REV2"
    assert seen.index("m.REV2") > 0 and "m" not in seen[seen.index("m.REV2"):]  # never back
    assert manager.calls[-2:] == [("load", "m.REV2"), ("unload", "m")]
    record = orchestrator.get("m")
    assert record.state == S.READY and record.profile.num_layers == 3
    assert json.loads((record.path / "config.json").read_text())["num_hidden_layers"] == 3


async def test_redrop_without_room_beside_swaps_and_requests_wait_through_it(tmp_path):
    orchestrator, manager, failures, seen = await redrop_under_load(tmp_path, 1.0, num_hidden_layers=3)
    assert failures == 0 and seen[-1] == "m.REV2"
    assert manager.calls[-2:] == [("unload", "m"), ("load", "m.REV2")]
    assert orchestrator.get("m").profile.num_layers == 3


async def test_failed_new_version_beside_the_old_one_leaves_the_old_serving(tmp_path):
    orchestrator, manager = build(tmp_path, 4.0)
    manager.fail_loads.add("m.REV2")
    await orchestrator.start()
    handler = DropHandler(orchestrator)
    await handler("m", make_config_only_model(tmp_path / "models/incoming/m"))
    await orchestrator.quiesce()
    await handler("m", make_config_only_model(tmp_path / "models/incoming/m", num_hidden_layers=3))
    await orchestrator.quiesce()
    record = orchestrator.get("m")
    assert record.state == S.READY and record.instance == "m" and record.profile.num_layers == 2
    assert json.loads((tmp_path / "models/repository/m/config.json").read_text())["num_hidden_layers"] == 2
    reason = (tmp_path / "models/failed/m" / REASON_FILE).read_text()
    assert "failed to load" in reason and "boom" in reason and "old version keeps serving" in reason
    _, out = await orchestrator.predict("m", "x", {})
    assert out["instance"] == "m"
    assert set(orchestrator.ledger.reservations()) == {"m"}


async def test_failed_new_version_through_a_swap_restores_the_old_one_for_the_waiters(tmp_path):
    orchestrator, manager = build(tmp_path, 1.0)
    manager.fail_loads.add("m.REV2")
    await orchestrator.start()
    handler = DropHandler(orchestrator)
    await handler("m", make_config_only_model(tmp_path / "models/incoming/m"))
    await orchestrator.quiesce()
    manager.gates["unload", "m"] = unload = asyncio.Event()
    await handler("m", make_config_only_model(tmp_path / "models/incoming/m", num_hidden_layers=3))
    await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(orchestrator.predict("m", "during the swap", {}))
    unload.set()
    _, out = await asyncio.wait_for(waiting, 5)
    assert out["instance"] == "m" and out["echo"] == "during the swap"  # served by the old one
    await orchestrator.quiesce()
    record = orchestrator.get("m")
    assert record.state == S.READY and record.revision == 1 and record.profile.num_layers == 2
    assert "failed to load" in (tmp_path / "models/failed/m" / REASON_FILE).read_text()
