"""The orchestrator's state machine and drop handling, with a fake runtime manager."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelium.config import settings_from_dict
from modelium.discovery import REASON_FILE
from modelium.hardware import GIB, Device, Inventory, MemoryLedger
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import (
    DropHandler,
    ModelFailedError,
    ModelState,
    NoCapacityError,
    NotReadyError,
    Orchestrator,
    UnknownModelError,
)
from modelium.runtimes.errors import BadRequestError
from tests.unit.fakes import FakeManager, make_config_only_model


def _orchestrator(tmp_path: Path, gpu_gib: float = 2.0, **config) -> tuple[Orchestrator, FakeManager]:
    settings = settings_from_dict(config, base_dir=tmp_path)
    inventory = Inventory(
        devices=(Device(id="gpu:0", kind="gpu", index=0, total_bytes=int(gpu_gib * GIB), name="simulated"),),
        source="configured",
    )
    manager = FakeManager()
    orchestrator = Orchestrator(settings, {"ray_serve": manager}, inventory, MemoryLedger(), ModeliumMetrics())
    return orchestrator, manager


async def test_registers_repository_models_at_start(tmp_path):
    make_config_only_model(tmp_path / "models/repository/alpha")
    (tmp_path / "models/repository/broken").mkdir(parents=True)
    (tmp_path / "models/repository/broken/config.json").write_text("{not json")
    orchestrator, manager = _orchestrator(tmp_path)
    await orchestrator.start()
    assert manager.started and orchestrator.ready
    assert orchestrator.get("alpha").state == ModelState.ANALYZED
    broken = orchestrator.get("broken")
    assert broken.state == ModelState.FAILED and "config" in broken.reason
    await orchestrator.load_registered()
    assert orchestrator.get("alpha").state == ModelState.READY
    assert orchestrator.get("alpha").device == "gpu:0"
    assert "alpha" in manager.loaded


async def test_good_drop_is_filed_and_loaded(tmp_path):
    orchestrator, manager = _orchestrator(tmp_path)
    await orchestrator.start()
    drop = make_config_only_model(tmp_path / "models/incoming/My Model")
    await DropHandler(orchestrator)("My Model", drop)
    assert not drop.exists()
    record = orchestrator.get("my-model")
    assert record.path == tmp_path / "models/repository/my-model"
    assert record.state == ModelState.READY and record.runtime == "ray_serve"
    assert "ray_serve" in record.runtime_reason
    record_out, outputs = await orchestrator.predict("my-model", "hi", {})
    assert outputs == {"echo": "hi", "device": "gpu:0"}
    body, _ = orchestrator.metrics.render()
    assert b'modelium_drops_total{outcome="filed"' in body


async def test_bad_drop_is_quarantined_with_reason_and_never_registered(tmp_path):
    orchestrator, _ = _orchestrator(tmp_path)
    await orchestrator.start()
    drop = tmp_path / "models/incoming/junk"
    drop.mkdir(parents=True)
    (drop / "notes.txt").write_text("not a model")
    await DropHandler(orchestrator)("junk", drop)
    reason = (tmp_path / "models/failed/junk" / REASON_FILE).read_text()
    assert "no config.json" in reason
    assert (tmp_path / "models/failed/junk/notes.txt").exists()
    with pytest.raises(UnknownModelError):
        orchestrator.get("junk")
    assert orchestrator.quarantined[-1]["name"] == "junk"


async def test_new_drop_under_same_name_replaces_model(tmp_path):
    orchestrator, manager = _orchestrator(tmp_path)
    await orchestrator.start()
    handler = DropHandler(orchestrator)
    await handler("m", make_config_only_model(tmp_path / "models/incoming/m"))
    await handler("m", make_config_only_model(tmp_path / "models/incoming/m", num_hidden_layers=4))
    assert manager.calls == [("load", "m"), ("unload", "m"), ("load", "m")]
    assert orchestrator.get("m").profile.num_layers == 4
    cfg = json.loads((tmp_path / "models/repository/m/config.json").read_text())
    assert cfg["num_hidden_layers"] == 4


async def test_failed_load_keeps_reason_and_other_models_serve(tmp_path):
    orchestrator, manager = _orchestrator(tmp_path)
    manager.fail_loads.add("bad")
    await orchestrator.start()
    await orchestrator.add_model("good", make_config_only_model(tmp_path / "models/repository/good"))
    await orchestrator.add_model("bad", make_config_only_model(tmp_path / "models/repository/bad"))
    bad = orchestrator.get("bad")
    assert bad.state == ModelState.FAILED and "boom" in bad.reason
    assert orchestrator.ledger.device_of("bad") is None
    with pytest.raises(ModelFailedError, match="boom"):
        await orchestrator.predict("bad", "x", {})
    _, outputs = await orchestrator.predict("good", "x", {})
    assert outputs["echo"] == "x"


async def test_unknown_model_lists_known_ones(tmp_path):
    orchestrator, _ = _orchestrator(tmp_path)
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"))
    with pytest.raises(UnknownModelError) as info:
        await orchestrator.predict("nope", "x", {})
    assert info.value.known == ["a"]


async def test_predict_before_start_is_not_ready(tmp_path):
    orchestrator, _ = _orchestrator(tmp_path)
    with pytest.raises(NotReadyError):
        await orchestrator.predict("a", "x", {})


async def test_bad_request_passes_through_untouched(tmp_path):
    orchestrator, _ = _orchestrator(tmp_path)
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"))
    with pytest.raises(BadRequestError):
        await orchestrator.predict("a", "x", {"bad": 1})
    assert orchestrator.get("a").state == ModelState.READY


async def test_unloaded_model_is_loaded_on_demand(tmp_path):
    orchestrator, manager = _orchestrator(tmp_path)
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"))
    await orchestrator.unload("a")
    assert orchestrator.get("a").state == ModelState.UNLOADED
    assert orchestrator.ledger.by_device().get("gpu:0", 0) == 0
    record, _ = await orchestrator.predict("a", "x", {})
    assert record.state == ModelState.READY and record.load_count == 2


async def test_model_lost_by_runtime_is_reloaded_on_next_request(tmp_path):
    orchestrator, manager = _orchestrator(tmp_path)
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"))
    manager.loaded.clear()  # the runtime crashed and lost it
    record, outputs = await orchestrator.predict("a", "x", {})
    assert outputs["echo"] == "x" and record.load_count == 2


async def test_reconcile_marks_lost_models_unloaded(tmp_path):
    orchestrator, manager = _orchestrator(tmp_path)
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"))
    manager.loaded.clear()
    await orchestrator.reconcile()
    record = orchestrator.get("a")
    assert record.state == ModelState.UNLOADED and "no longer serves" in record.reason
    assert orchestrator.ledger.device_of("a") is None


async def test_full_device_evicts_idle_model_to_make_room(tmp_path):
    # Each tiny model reserves ~0.72 GiB (CUDA context + margin); 1.8 GiB usable fits two.
    orchestrator, manager = _orchestrator(tmp_path, gpu_gib=2.0)
    await orchestrator.start()
    for name in ("a", "b", "c"):
        await orchestrator.add_model(name, make_config_only_model(tmp_path / f"models/repository/{name}"))
    states = {r.name: r.state for r in orchestrator.models()}
    assert states == {"a": ModelState.UNLOADED, "b": ModelState.READY, "c": ModelState.READY}
    assert "evicted to make room for c" in orchestrator.get("a").reason
    actions = [d["action"] for d in orchestrator.decisions]
    assert "evict" in actions


async def test_too_large_model_is_refused_with_reason(tmp_path):
    orchestrator, _ = _orchestrator(tmp_path, gpu_gib=0.5)
    await orchestrator.start()
    record = await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"))
    assert record.state == ModelState.UNLOADED and "GiB" in record.reason
    with pytest.raises(NoCapacityError):
        await orchestrator.predict("a", "x", {})


async def test_idle_models_are_unloaded_but_pinned_ones_stay(tmp_path):
    orchestrator, _ = _orchestrator(
        tmp_path,
        orchestration={"auto_unload_after_seconds": 0.01, "min_qps_threshold": 1000},
        models={"keep": {"pinned": True}},
    )
    await orchestrator.start()
    for name in ("idle", "keep"):
        await orchestrator.add_model(name, make_config_only_model(tmp_path / f"models/repository/{name}"))
    import asyncio

    await asyncio.sleep(0.05)
    await orchestrator.reconcile()
    assert orchestrator.get("idle").state == ModelState.UNLOADED
    assert orchestrator.get("keep").state == ModelState.READY


async def test_stop_stops_runtimes_and_marks_models_unloaded(tmp_path):
    orchestrator, manager = _orchestrator(tmp_path)
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"))
    await orchestrator.stop()
    assert manager.stopped and orchestrator.get("a").state == ModelState.UNLOADED


async def test_adopted_models_are_ready_without_reloading(tmp_path):
    make_config_only_model(tmp_path / "models/repository/kept")
    orchestrator, manager = _orchestrator(tmp_path)
    manager.leftovers = {"kept": tmp_path / "models/repository/kept", "stale": tmp_path / "x"}
    await orchestrator.start()
    record = orchestrator.get("kept")
    assert record.state == ModelState.READY and "adopted" in record.runtime_reason
    assert ("load", "kept") not in manager.calls
    assert any(d["action"] == "adopt" and d["model"] == "stale" for d in orchestrator.decisions)


async def test_crashed_model_restarts_after_backoff_then_fails_when_crash_looping(tmp_path):
    orchestrator, manager = _orchestrator(tmp_path, orchestration={"max_restarts": 2})
    manager.exit_reasons = {"a": "vLLM server for a exited with code -9; last log lines: boom"}
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"))
    for crash in (1, 2):
        manager.loaded.clear()
        await orchestrator.reconcile()
        record = orchestrator.get("a")
        assert record.state == ModelState.UNLOADED
        assert "exited with code -9" in record.reason and f"restart {crash} of 2" in record.reason
        assert record.restart_at is not None
        await orchestrator.reconcile()  # back-off not over yet: still unloaded
        assert orchestrator.get("a").state == ModelState.UNLOADED
        record.restart_at = 0.0  # pretend the back-off has passed
        await orchestrator.reconcile()
        assert orchestrator.get("a").state == ModelState.READY
    manager.loaded.clear()
    await orchestrator.reconcile()
    record = orchestrator.get("a")
    assert record.state == ModelState.FAILED and "crashed 3 times" in record.reason
    assert "boom" in record.reason
    with pytest.raises(ModelFailedError):
        await orchestrator.predict("a", "x", {})


async def test_enabled_but_missing_runtime_is_named_in_the_reason(tmp_path):
    settings = settings_from_dict({}, base_dir=tmp_path, env={})
    inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, 8 * GIB, "simulated"),), source="configured")
    manager = FakeManager()
    orchestrator = Orchestrator(settings, {"ray_serve": manager}, inventory, MemoryLedger(),
                                ModeliumMetrics(), unavailable={"vllm": "vllm is not installed (no .venvs/vllm)"})
    await orchestrator.start()
    record = await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"))
    assert record.runtime == "ray_serve" and "vllm is not installed" in record.runtime_reason


class FakeParkingManager(FakeManager):
    """A vLLM-like manager with sleep mode."""

    name = "vllm"

    def __init__(self) -> None:
        super().__init__()
        self.parked: set[str] = set()

    async def park(self, name: str) -> float:
        self.calls.append(("park", name))
        self.parked.add(name)
        return 0.1

    async def wake(self, name: str) -> float:
        self.calls.append(("wake", name))
        self.parked.discard(name)
        return 0.01


async def test_evicted_vllm_models_are_parked_and_woken_on_demand(tmp_path):
    # Each tiny vLLM server reserves ~1.86e9 B; a parked one keeps 1.6e9 B. On 5.6 GiB
    # (5.41e9 usable) two fit, and parking one makes room for a third.
    settings = settings_from_dict({"vllm": {"default_settings": {"park": True}}},
                                  base_dir=tmp_path, env={})
    inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, int(5.6 * GIB), "simulated"),),
                          source="configured")
    manager = FakeParkingManager()
    orchestrator = Orchestrator(settings, {"vllm": manager}, inventory, MemoryLedger(), ModeliumMetrics())
    await orchestrator.start()
    for name in ("a", "b", "c"):
        await orchestrator.add_model(name, make_config_only_model(tmp_path / f"models/repository/{name}"))
    a = orchestrator.get("a")
    assert a.runtime == "vllm" and a.state == ModelState.PARKED and "parked" in a.reason
    assert ("park", "a") in manager.calls and ("unload", "a") not in manager.calls
    assert orchestrator.ledger.reservations()["a"] == ("gpu:0", int(1.6e9))
    assert orchestrator.get("c").state == ModelState.READY

    record, _ = await orchestrator.predict("a", "hi", {})
    assert record.state == ModelState.READY and ("wake", "a") in manager.calls
    assert ("load", "a") == next(c for c in manager.calls if c[1] == "a")  # loaded once only
    assert orchestrator.get("b").state == ModelState.PARKED  # made room for a
    assert any(d["action"] == "park" for d in orchestrator.decisions)


async def test_parking_needs_the_opt_in(tmp_path):
    settings = settings_from_dict({}, base_dir=tmp_path, env={})
    inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, int(5.6 * GIB), "simulated"),),
                          source="configured")
    manager = FakeParkingManager()
    orchestrator = Orchestrator(settings, {"vllm": manager}, inventory, MemoryLedger(), ModeliumMetrics())
    await orchestrator.start()
    for name in ("a", "b", "c"):
        await orchestrator.add_model(name, make_config_only_model(tmp_path / f"models/repository/{name}"))
    assert orchestrator.get("a").state == ModelState.UNLOADED
    assert not any(call[0] == "park" for call in manager.calls)


class SlowManager(FakeManager):
    """Loads take a while, so concurrent requests pile up behind one load."""

    def __init__(self, load_seconds: float = 0.2) -> None:
        super().__init__()
        self.load_seconds = load_seconds

    async def load(self, request):
        import asyncio

        await asyncio.sleep(self.load_seconds)
        await super().load(request)

    async def infer(self, name, inputs, parameters):
        import asyncio

        await asyncio.sleep(float(parameters.get("sleep", 0)))
        return await super().infer(name, inputs, {})


def _slow_orchestrator(tmp_path: Path, manager: FakeManager, **config) -> Orchestrator:
    settings = settings_from_dict(config, base_dir=tmp_path, env={})
    inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, 8 * GIB, "simulated"),), source="configured")
    return Orchestrator(settings, {"ray_serve": manager}, inventory, MemoryLedger(), ModeliumMetrics())


async def test_twenty_concurrent_requests_to_an_unloaded_model_cause_one_load(tmp_path):
    import asyncio

    manager = SlowManager()
    orchestrator = _slow_orchestrator(tmp_path, manager)
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"), load=False)
    results = await asyncio.gather(*(orchestrator.predict("a", f"x{i}", {}) for i in range(20)))
    assert [c for c in manager.calls if c[0] == "load"] == [("load", "a")]
    assert sorted(out["echo"] for _, out in results) == sorted(f"x{i}" for i in range(20))
    body, _ = orchestrator.metrics.render()
    assert b'modelium_cold_starts_total{model="a",runtime="ray_serve"} 20.0' in body


async def test_full_queue_is_refused_with_too_many_requests(tmp_path):
    import asyncio

    from modelium.orchestrator import TooManyRequestsError

    manager = SlowManager(load_seconds=0)
    orchestrator = _slow_orchestrator(
        tmp_path, manager, orchestration={"max_concurrent_requests": 1, "max_queued_requests": 1})
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"))
    first = asyncio.ensure_future(orchestrator.predict("a", "1", {"sleep": 0.3}))
    second = asyncio.ensure_future(orchestrator.predict("a", "2", {"sleep": 0.3}))
    await asyncio.sleep(0.05)  # one serving, one queued
    with pytest.raises(TooManyRequestsError, match="limit of 1"):
        await orchestrator.predict("a", "3", {})
    assert [out["echo"] for _, out in await asyncio.gather(first, second)] == ["1", "2"]
    body, _ = orchestrator.metrics.render()
    assert b'modelium_rejected_requests_total{model="a"} 1.0' in body


async def test_request_gives_up_waiting_for_a_slow_load_but_the_load_finishes(tmp_path):
    import asyncio

    from modelium.orchestrator import LoadTimeoutError

    manager = SlowManager(load_seconds=0.5)
    orchestrator = _slow_orchestrator(
        tmp_path, manager, orchestration={"load_wait_timeout_seconds": 0.1})
    await orchestrator.start()
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"), load=False)
    with pytest.raises(LoadTimeoutError, match="still loading"):
        await orchestrator.predict("a", "x", {})
    await asyncio.sleep(0.6)
    assert orchestrator.get("a").state == ModelState.READY


async def test_pin_keeps_an_idle_model_and_per_model_idle_timeout(tmp_path):
    import asyncio

    orchestrator, _ = _orchestrator(
        tmp_path,
        gpu_gib=8.0,
        orchestration={"auto_unload_after_seconds": 0.01, "min_qps_threshold": 1000},
        models={"patient": {"auto_unload_after_seconds": 0}},
    )
    await orchestrator.start()
    for name in ("pinned", "idle", "patient"):
        await orchestrator.add_model(name, make_config_only_model(tmp_path / f"models/repository/{name}"))
    orchestrator.set_pinned("pinned", True)
    await asyncio.sleep(0.05)
    await orchestrator.reconcile()
    states = {r.name: r.state for r in orchestrator.models()}
    assert states == {"pinned": ModelState.READY, "idle": ModelState.UNLOADED,
                      "patient": ModelState.READY}
    assert "idle" in orchestrator.get("idle").reason
