"""The orchestrator facade with a fake runtime: drops, loads on demand, eviction, idle
unloads, crashes, adoption, parking, back-pressure."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from modelium.config import settings_from_dict
from modelium.discovery import REASON_FILE
from modelium.hardware import GIB, Device, Inventory, MemoryLedger
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import (
    DropHandler,
    LoadTimeoutError,
    ModelFailedError,
    ModelState,
    NotReadyError,
    Orchestrator,
    TooManyRequestsError,
    UnknownModelError,
)
from modelium.runtimes.errors import BadRequestError
from tests.unit.fakes import FakeManager, FakeParkingManager, make_config_only_model


def build(tmp_path: Path, manager: FakeManager | None = None, *, gpu_gib: float = 2.0,
          **config) -> tuple[Orchestrator, FakeManager]:
    settings = settings_from_dict(config, base_dir=tmp_path, env={})
    inventory = Inventory(
        devices=(Device(id="gpu:0", kind="gpu", index=0, total_bytes=int(gpu_gib * GIB), name="simulated"),),
        source="configured",
    )
    manager = manager or FakeManager()
    orchestrator = Orchestrator(settings, {manager.name: manager}, inventory, MemoryLedger(), ModeliumMetrics())
    return orchestrator, manager


async def add(orchestrator: Orchestrator, tmp_path: Path, name: str, **config) -> None:
    folder = make_config_only_model(tmp_path / f"models/repository/{name}", **config)
    await orchestrator.add_model(name, folder, wait=True)


async def test_registers_repository_models_at_start_and_loads_new_ones(tmp_path):
    make_config_only_model(tmp_path / "models/repository/alpha")
    (tmp_path / "models/repository/broken").mkdir(parents=True)
    (tmp_path / "models/repository/broken/config.json").write_text("{not json")
    orchestrator, manager = build(tmp_path)
    await orchestrator.start()
    assert manager.started and orchestrator.ready
    broken = orchestrator.get("broken")
    assert broken.state == ModelState.FAILED and "config" in broken.reason
    await orchestrator.quiesce()
    alpha = orchestrator.get("alpha")
    assert alpha.state == ModelState.READY and alpha.device == "gpu:0" and "alpha" in manager.loaded


async def test_good_drop_is_filed_and_loaded(tmp_path):
    orchestrator, manager = build(tmp_path)
    await orchestrator.start()
    drop = make_config_only_model(tmp_path / "models/incoming/My Model")
    await DropHandler(orchestrator)("My Model", drop)
    await orchestrator.quiesce()
    assert not drop.exists()
    record = orchestrator.get("my-model")
    assert record.path == tmp_path / "models/repository/my-model"
    assert record.state == ModelState.READY and record.runtime == "ray_serve"
    _, outputs = await orchestrator.predict("my-model", "hi", {})
    assert outputs["echo"] == "hi" and outputs["device"] == "gpu:0"
    body, _ = orchestrator.metrics.render()
    assert b'modelium_drops_total{outcome="filed"' in body


async def test_bad_drop_is_quarantined_with_reason_and_never_registered(tmp_path):
    orchestrator, _ = build(tmp_path)
    await orchestrator.start()
    drop = tmp_path / "models/incoming/junk"
    drop.mkdir(parents=True)
    (drop / "notes.txt").write_text("not a model")
    await DropHandler(orchestrator)("junk", drop)
    reason = (tmp_path / "models/failed/junk" / REASON_FILE).read_text()
    assert "no config.json" in reason
    with pytest.raises(UnknownModelError):
        orchestrator.get("junk")
    assert orchestrator.quarantined[-1]["name"] == "junk"


async def test_new_drop_under_same_name_is_swapped_in_beside_the_old_one(tmp_path):
    orchestrator, manager = build(tmp_path, gpu_gib=4.0)
    await orchestrator.start()
    handler = DropHandler(orchestrator)
    await handler("m", make_config_only_model(tmp_path / "models/incoming/m"))
    await orchestrator.quiesce()
    await handler("m", make_config_only_model(tmp_path / "models/incoming/m", num_hidden_layers=4))
    await orchestrator.quiesce()
    assert manager.calls == [("load", "m"), ("load", "m.REV2"), ("unload", "m")]
    record = orchestrator.get("m")
    assert record.state == ModelState.READY and record.instance == "m.REV2"
    assert record.profile.num_layers == 4 and record.path == tmp_path / "models/repository/m"
    cfg = json.loads((tmp_path / "models/repository/m/config.json").read_text())
    assert cfg["num_hidden_layers"] == 4
    assert set(orchestrator.ledger.reservations()) == {"m.REV2"}


async def test_failed_load_keeps_reason_and_other_models_serve(tmp_path):
    orchestrator, manager = build(tmp_path)
    manager.fail_loads.add("bad")
    await orchestrator.start()
    await add(orchestrator, tmp_path, "good")
    await add(orchestrator, tmp_path, "bad")
    bad = orchestrator.get("bad")
    assert bad.state == ModelState.FAILED and "boom" in bad.reason
    assert orchestrator.ledger.device_of("bad") is None
    with pytest.raises(ModelFailedError, match="boom"):
        await orchestrator.predict("bad", "x", {})
    _, outputs = await orchestrator.predict("good", "x", {})
    assert outputs["echo"] == "x"


async def test_unknown_model_lists_known_ones(tmp_path):
    orchestrator, _ = build(tmp_path)
    await orchestrator.start()
    await add(orchestrator, tmp_path, "a")
    with pytest.raises(UnknownModelError) as info:
        await orchestrator.predict("nope", "x", {})
    assert info.value.known == ["a"]


async def test_predict_before_start_is_not_ready(tmp_path):
    orchestrator, _ = build(tmp_path)
    with pytest.raises(NotReadyError):
        await orchestrator.predict("a", "x", {})


async def test_bad_request_passes_through_untouched(tmp_path):
    orchestrator, _ = build(tmp_path)
    await orchestrator.start()
    await add(orchestrator, tmp_path, "a")
    with pytest.raises(BadRequestError):
        await orchestrator.predict("a", "x", {"bad": 1})
    assert orchestrator.get("a").state == ModelState.READY


async def test_unloaded_model_is_loaded_on_demand(tmp_path):
    orchestrator, _ = build(tmp_path)
    await orchestrator.start()
    await add(orchestrator, tmp_path, "a")
    await orchestrator.unload("a")
    assert orchestrator.get("a").state == ModelState.UNLOADED
    assert orchestrator.ledger.by_device().get("gpu:0", 0) == 0
    record, _ = await orchestrator.predict("a", "x", {})
    assert record.state == ModelState.READY and record.load_count == 2


async def test_model_lost_by_runtime_is_reloaded_on_next_request(tmp_path):
    orchestrator, manager = build(tmp_path)
    await orchestrator.start()
    await add(orchestrator, tmp_path, "a")
    manager.loaded.clear()  # the runtime crashed and lost it
    record, outputs = await orchestrator.predict("a", "x", {})
    assert outputs["echo"] == "x" and record.load_count == 2
    assert [d["action"] for d in orchestrator.decisions.newest(model="a")][:3] == ["load", "place", "lost"]


async def test_tick_marks_lost_models_unloaded(tmp_path):
    orchestrator, manager = build(tmp_path)
    await orchestrator.start()
    await add(orchestrator, tmp_path, "a")
    manager.loaded.clear()
    await orchestrator.tick()
    record = orchestrator.get("a")
    assert record.state == ModelState.UNLOADED and "no longer serves" in record.reason
    assert orchestrator.ledger.device_of("a") is None


async def test_full_device_evicts_an_idle_model_to_make_room(tmp_path):
    # Each tiny model reserves ~0.72 GiB (CUDA context + margin); 1.8 GiB usable fits two.
    orchestrator, _ = build(tmp_path, gpu_gib=2.0)
    await orchestrator.start()
    for name in ("a", "b", "c"):
        await add(orchestrator, tmp_path, name)
    states = {r.name: r.state for r in orchestrator.models()}
    assert states == {"a": ModelState.UNLOADED, "b": ModelState.READY, "c": ModelState.READY}
    assert "evicted to make room for c" in orchestrator.get("a").reason
    evict = next(d for d in orchestrator.decisions.newest() if d["action"] == "evict")
    assert set(evict["numbers"]["victims"]) == {"a"} and "reload_s" in evict["numbers"]["victims"]["a"]


async def test_model_that_can_never_fit_is_failed_with_the_numbers(tmp_path):
    orchestrator, _ = build(tmp_path, gpu_gib=0.5)
    await orchestrator.start()
    await add(orchestrator, tmp_path, "a")
    record = orchestrator.get("a")
    assert record.state == ModelState.FAILED and "GiB" in record.reason and "even when empty" in record.reason
    with pytest.raises(ModelFailedError, match="GiB"):
        await orchestrator.predict("a", "x", {})


async def test_idle_models_are_unloaded_but_pinned_ones_stay(tmp_path):
    orchestrator, _ = build(tmp_path, gpu_gib=8.0,
                            orchestration={"auto_unload_after_seconds": 0.01, "min_qps_threshold": 1000},
                            models={"keep": {"pinned": True}, "patient": {"auto_unload_after_seconds": 0}})
    await orchestrator.start()
    for name in ("idle", "keep", "patient", "pinned-later"):
        await add(orchestrator, tmp_path, name)
    orchestrator.set_pinned("pinned-later", True)
    await asyncio.sleep(0.05)
    await orchestrator.tick()
    await orchestrator.quiesce()
    states = {r.name: r.state for r in orchestrator.models()}
    assert states == {"idle": ModelState.UNLOADED, "keep": ModelState.READY,
                      "patient": ModelState.READY, "pinned-later": ModelState.READY}
    assert "idle" in orchestrator.get("idle").reason


async def test_stop_stops_runtimes(tmp_path):
    orchestrator, manager = build(tmp_path)
    await orchestrator.start()
    await add(orchestrator, tmp_path, "a")
    await orchestrator.stop()
    assert manager.stopped and not orchestrator.ready


async def test_adopted_models_are_ready_without_reloading(tmp_path):
    make_config_only_model(tmp_path / "models/repository/kept")
    orchestrator, manager = build(tmp_path)
    manager.leftovers = {"kept": tmp_path / "models/repository/kept", "stale": tmp_path / "x"}
    await orchestrator.start()
    record = orchestrator.get("kept")
    assert record.state == ModelState.READY and "adopted" in record.runtime_reason
    await orchestrator.quiesce()
    assert ("load", "kept") not in manager.calls
    assert any(d["action"] == "adopt" and d["model"] == "stale" for d in orchestrator.decisions)


async def test_crashed_model_restarts_after_backoff_then_fails_when_crash_looping(tmp_path):
    orchestrator, manager = build(tmp_path, orchestration={"max_restarts": 2})
    manager.exit_reasons = {"a": "vLLM server for a exited with code -9; last log lines: boom"}
    await orchestrator.start()
    await add(orchestrator, tmp_path, "a")
    for crash in (1, 2):
        manager.loaded.clear()
        await orchestrator.tick()
        record = orchestrator.get("a")
        assert record.state == ModelState.UNLOADED
        assert "exited with code -9" in record.reason and f"restart {crash} of 2" in record.reason
        await orchestrator.quiesce()  # back-off not over yet: still unloaded
        assert orchestrator.get("a").state == ModelState.UNLOADED
        orchestrator.scheduler.intents["a"].not_before = 0.0  # pretend the back-off has passed
        orchestrator.scheduler.kick()
        await orchestrator.quiesce()
        assert orchestrator.get("a").state == ModelState.READY
    manager.loaded.clear()
    await orchestrator.tick()
    record = orchestrator.get("a")
    assert record.state == ModelState.FAILED and "crashed 3 times" in record.reason and "boom" in record.reason
    with pytest.raises(ModelFailedError):
        await orchestrator.predict("a", "x", {})


async def test_enabled_but_missing_runtime_is_named_in_the_reason(tmp_path):
    settings = settings_from_dict({}, base_dir=tmp_path, env={})
    inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, 8 * GIB, "simulated"),), source="configured")
    manager = FakeManager()
    orchestrator = Orchestrator(settings, {"ray_serve": manager}, inventory, MemoryLedger(),
                                ModeliumMetrics(), unavailable={"vllm": "vllm is not installed (no .venvs/vllm)"})
    await orchestrator.start()
    await add(orchestrator, tmp_path, "a")
    record = orchestrator.get("a")
    assert record.runtime == "ray_serve" and "vllm is not installed" in record.runtime_reason


def _parking(tmp_path: Path, park: bool = True) -> tuple[Orchestrator, FakeParkingManager]:
    # Each tiny vLLM server reserves ~1.86e9 B; a parked one keeps 1.6e9 B. On 5.6 GiB
    # (5.41e9 usable) two fit, and parking one makes room for a third.
    manager = FakeParkingManager()
    orchestrator, _ = build(tmp_path, manager, gpu_gib=5.6, vllm={"default_settings": {"park": park}})
    return orchestrator, manager


async def test_evicted_models_are_parked_when_the_runtime_can_and_woken_on_demand(tmp_path):
    orchestrator, manager = _parking(tmp_path)
    await orchestrator.start()
    for name in ("a", "b", "c"):
        await add(orchestrator, tmp_path, name)
    a = orchestrator.get("a")
    assert a.runtime == "vllm" and a.state == ModelState.PARKED and "parked" in a.reason
    assert ("park", "a") in manager.calls and ("unload", "a") not in manager.calls
    assert orchestrator.ledger.reservations()["a"] == ("gpu:0", FakeParkingManager.RESIDUE)
    assert orchestrator.get("c").state == ModelState.READY

    record, _ = await orchestrator.predict("a", "hi", {})
    assert record.state == ModelState.READY and ("wake", "a") in manager.calls
    assert [c for c in manager.calls if c == ("load", "a")] == [("load", "a")]  # loaded once only
    assert orchestrator.get("b").state == ModelState.PARKED  # made room for a


async def test_a_failed_wake_stops_the_process_and_loads_cold_without_leaking(tmp_path):
    orchestrator, manager = _parking(tmp_path)
    await orchestrator.start()
    for name in ("a", "b", "c"):
        await add(orchestrator, tmp_path, name)
    manager.fail_wakes.add("a")
    record, _ = await orchestrator.predict("a", "hi", {})
    assert record.state == ModelState.READY
    assert manager.calls.index(("wake", "a")) < manager.calls.index(("unload", "a"))
    assert manager.calls.count(("load", "a")) == 2  # cold load after the failed wake
    reserved = sum(n for _, n in orchestrator.ledger.reservations().values())
    assert reserved <= int(5.6 * GIB * 0.9)
    assert set(orchestrator.ledger.reservations()) == {r.instance for r in orchestrator.models()
                                                       if r.state in (ModelState.READY, ModelState.PARKED)}


async def test_a_failed_park_stops_the_model_instead(tmp_path):
    orchestrator, manager = _parking(tmp_path)
    manager.fail_parks.add("a")
    await orchestrator.start()
    for name in ("a", "b", "c"):
        await add(orchestrator, tmp_path, name)
    assert orchestrator.get("a").state == ModelState.UNLOADED and ("unload", "a") in manager.calls
    assert orchestrator.ledger.device_of("a") is None


async def test_parking_needs_the_opt_in(tmp_path):
    orchestrator, manager = _parking(tmp_path, park=False)
    manager.park_residue_bytes = lambda name: None  # type: ignore[method-assign]
    await orchestrator.start()
    for name in ("a", "b", "c"):
        await add(orchestrator, tmp_path, name)
    assert orchestrator.get("a").state == ModelState.UNLOADED
    assert not any(call[0] == "park" for call in manager.calls)


async def test_twenty_concurrent_requests_to_an_unloaded_model_cause_one_load(tmp_path):
    orchestrator, manager = build(tmp_path, gpu_gib=8)
    manager.gates["load", "a"] = gate = asyncio.Event()
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"), load=False)
    requests = [asyncio.ensure_future(orchestrator.predict("a", f"x{i}", {})) for i in range(20)]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*requests)
    assert [c for c in manager.calls if c[0] == "load"] == [("load", "a")]
    assert sorted(out["echo"] for _, out in results) == sorted(f"x{i}" for i in range(20))
    body, _ = orchestrator.metrics.render()
    assert b'modelium_cold_starts_total{model="a",runtime="ray_serve"} 20.0' in body


async def test_full_queue_is_refused_with_too_many_requests(tmp_path):
    orchestrator, _ = build(tmp_path, gpu_gib=8,
                            orchestration={"max_concurrent_requests": 1, "max_queued_requests": 1})
    await orchestrator.start()
    await add(orchestrator, tmp_path, "a")
    first = asyncio.ensure_future(orchestrator.predict("a", "1", {"sleep": 0.3}))
    second = asyncio.ensure_future(orchestrator.predict("a", "2", {"sleep": 0.3}))
    await asyncio.sleep(0.05)  # one serving, one queued
    with pytest.raises(TooManyRequestsError, match="limit of 1") as info:
        await orchestrator.predict("a", "3", {})
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    assert [out["echo"] for _, out in await asyncio.gather(first, second)] == ["1", "2"]
    body, _ = orchestrator.metrics.render()
    assert b'modelium_rejected_requests_total{model="a"} 1.0' in body


async def test_request_gives_up_waiting_with_a_retry_after_but_the_load_finishes(tmp_path):
    orchestrator, manager = build(tmp_path, gpu_gib=8)
    manager.gates["load", "a"] = gate = asyncio.Event()
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"), load=False)
    with pytest.raises(LoadTimeoutError, match="did not become available") as info:
        await orchestrator.predict("a", "x", {}, wait_seconds=0.1)
    assert info.value.retry_after >= 1
    gate.set()
    await orchestrator.quiesce()
    assert orchestrator.get("a").state == ModelState.READY


async def test_priorities_order_the_queue(tmp_path):
    from modelium.orchestrator import Priority

    orchestrator, manager = build(tmp_path, gpu_gib=8, orchestration={"max_concurrent_requests": 1})
    manager.gates["load", "a"] = gate = asyncio.Event()
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"), load=False)
    done: list[str] = []

    async def ask(label: str, priority: Priority) -> None:
        await orchestrator.predict("a", label, {}, priority=priority)
        done.append(label)

    tasks = [asyncio.ensure_future(ask(label, p)) for label, p in
             (("low", Priority.LOW), ("normal", Priority.NORMAL), ("high", Priority.HIGH))]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(*tasks)
    assert done == ["high", "normal", "low"]
