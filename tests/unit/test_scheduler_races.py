"""Races, with fakes that block at the awaits where the world changes (review findings 1,
2, 5 and 9): every scenario must complete, serve what waiting can serve, and never call a
live model crashed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from modelium.config import settings_from_dict
from modelium.hardware import Device, Inventory, MemoryLedger
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import ModelState, Orchestrator
from modelium.runtimes.base import ModelNotLoadedError
from modelium.runtimes.errors import BadRequestError
from tests.unit.fakes import FakeManager, make_config_only_model

S = ModelState
BIG = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 6,
       "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000}
NO_WINDOW = {"scheduler": {"min_residency_seconds": 0}}


async def sized(tmp_path: Path, names: dict[str, dict]) -> dict[str, int]:
    """What each model would reserve (ask a throw-away orchestrator)."""
    probe, _ = build(tmp_path / "probe", gpu_bytes=10**12)
    await probe.start()
    sizes = {}
    for name, config in names.items():
        record = await probe.add_model(name, make_config_only_model(tmp_path / f"probe-{name}", **config), load=False)
        probe.ctx.planner.choose(record)
        sizes[name] = probe.ctx.planner.required_bytes(record)
    return sizes


def build(tmp_path: Path, *, gpu_bytes: int, **config) -> tuple[Orchestrator, FakeManager]:
    settings = settings_from_dict(config, base_dir=tmp_path, env={})
    # max_gpu_memory_utilization 1.0 in the tests below: the GPU's size is what is usable
    inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, gpu_bytes, "simulated"),), source="configured")
    manager = FakeManager()
    return Orchestrator(settings, {"ray_serve": manager}, inventory, MemoryLedger(), ModeliumMetrics()), manager


async def add(orchestrator: Orchestrator, tmp_path: Path, name: str, **config) -> None:
    folder = make_config_only_model(tmp_path / f"models/repository/{name}", **config)
    await orchestrator.add_model(name, folder, wait=True)


async def until(predicate, seconds: float = 3.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.001)
    await asyncio.wait_for(poll(), seconds)


async def test_multi_victim_eviction_while_a_victim_is_asked_for_and_another_crashes(tmp_path):
    """The deadlock of review finding 1: model A evicts B and C; meanwhile B is still
    serving, C is asked for while it unloads, and B crashes. Nothing may wedge."""
    sizes = await sized(tmp_path, {"b": {}, "c": {}, "a": BIG})
    assert sizes["a"] > sizes["b"] and sizes["a"] + sizes["b"] > sizes["b"] + sizes["c"]
    orchestrator, manager = build(tmp_path, gpu_bytes=sizes["b"] + sizes["c"] + sizes["a"] // 4,
                                  orchestration={"max_gpu_memory_utilization": 1.0, **NO_WINDOW})
    await orchestrator.start()
    await add(orchestrator, tmp_path, "b")
    await add(orchestrator, tmp_path, "c")
    manager.gates["infer", "b"] = b_infer = asyncio.Event()
    manager.gates["unload", "c"] = c_unload = asyncio.Event()
    b_request = asyncio.ensure_future(orchestrator.predict("b", "in flight", {}))
    await until(lambda: ("infer", "b") in manager.entered)
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a", **BIG), load=False)
    a_request = asyncio.ensure_future(orchestrator.predict("a", "for a", {}))
    await until(lambda: orchestrator.get("b").state == S.DRAINING and orchestrator.get("c").state == S.UNLOADING)
    c_request = asyncio.ensure_future(orchestrator.predict("c", "for c", {}))
    manager.loaded.pop("b")  # b's server dies while draining
    await orchestrator.tick()
    assert orchestrator.get("b").state == S.UNLOADED and "no longer serves" in orchestrator.get("b").reason
    b_infer.set()
    c_unload.set()
    answers = await asyncio.wait_for(asyncio.gather(a_request, c_request, b_request), 5)
    assert [out["echo"] for _, out in answers] == ["for a", "for c", "in flight"]
    await orchestrator.quiesce()
    reserved = orchestrator.ledger.reservations()
    assert set(reserved) == {r.instance for r in orchestrator.models() if r.state == S.READY}
    assert sum(n for _, n in reserved.values()) <= orchestrator.inventory.devices[0].total_bytes


async def test_request_arriving_while_its_model_unloads_as_a_victim_is_served(tmp_path):
    sizes = await sized(tmp_path, {"v": {}, "w": {}})
    orchestrator, manager = build(tmp_path, gpu_bytes=sizes["v"] + sizes["w"] // 2,
                                  orchestration={"max_gpu_memory_utilization": 1.0, **NO_WINDOW})
    await orchestrator.start()
    await add(orchestrator, tmp_path, "v")
    await orchestrator.add_model("w", make_config_only_model(tmp_path / "models/repository/w"), load=False)
    manager.gates["unload", "v"] = v_unload = asyncio.Event()
    w_request = asyncio.ensure_future(orchestrator.predict("w", "for w", {}))
    await until(lambda: ("unload", "v") in manager.entered)
    assert orchestrator.get("v").state == S.UNLOADING
    v_request = asyncio.ensure_future(orchestrator.predict("v", "for v", {}))
    await asyncio.sleep(0.01)
    assert not v_request.done()  # it waits in v's queue: never sent to a model going away
    v_unload.set()
    (_, w_out), (_, v_out) = await asyncio.wait_for(asyncio.gather(w_request, v_request), 5)
    assert w_out["echo"] == "for w" and v_out["echo"] == "for v"
    assert manager.calls.count(("load", "v")) == 2  # reloaded for its request


async def test_in_flight_request_of_a_victim_finishes_before_it_is_unloaded(tmp_path):
    sizes = await sized(tmp_path, {"v": {}, "w": {}})
    orchestrator, manager = build(tmp_path, gpu_bytes=sizes["v"] + sizes["w"] // 2,
                                  orchestration={"max_gpu_memory_utilization": 1.0, **NO_WINDOW})
    await orchestrator.start()
    await add(orchestrator, tmp_path, "v")
    await orchestrator.add_model("w", make_config_only_model(tmp_path / "models/repository/w"), load=False)
    manager.gates["infer", "v"] = v_infer = asyncio.Event()
    v_request = asyncio.ensure_future(orchestrator.predict("v", "busy", {}))
    await until(lambda: ("infer", "v") in manager.entered)
    w_request = asyncio.ensure_future(orchestrator.predict("w", "for w", {}))
    await until(lambda: orchestrator.get("v").state == S.DRAINING)
    await asyncio.sleep(0.01)
    assert ("unload", "v") not in manager.calls  # drained first
    v_infer.set()
    (_, v_out), (_, w_out) = await asyncio.wait_for(asyncio.gather(v_request, w_request), 5)
    assert v_out["echo"] == "busy" and w_out["echo"] == "for w"
    assert manager.calls.index(("unload", "v")) < manager.calls.index(("load", "w"))


async def test_a_load_that_finishes_during_reconcile_is_not_a_crash(tmp_path):
    orchestrator, manager = build(tmp_path, gpu_bytes=8 * 2**30)
    await orchestrator.start()
    await add(orchestrator, tmp_path, "steady")
    manager.gates["load", "late"] = load_gate = asyncio.Event()
    await orchestrator.add_model("late", make_config_only_model(tmp_path / "models/repository/late"))
    await until(lambda: ("load", "late") in manager.entered)
    manager.gates["loaded_models"] = index_gate = asyncio.Event()
    tick = asyncio.ensure_future(orchestrator.tick())
    await until(lambda: "loaded_models" in manager.entered)  # the runtime's answer: {"steady"}
    load_gate.set()
    await until(lambda: orchestrator.get("late").state == S.READY)
    index_gate.set()
    await tick
    for name in ("late", "steady"):
        record = orchestrator.get(name)
        assert record.state == S.READY and record.crash_times == [], name
    assert not any(d["action"] == "lost" for d in orchestrator.decisions)


async def test_a_model_reloaded_during_reconcile_is_not_judged_on_the_stale_answer(tmp_path):
    """m's server dies; the tick asks the runtime (answer: not there) and is slow to hear
    back; meanwhile a request confirms the crash and m is reloaded. The tick's stale answer
    must not count a second crash against the new m."""
    orchestrator, manager = build(tmp_path, gpu_bytes=8 * 2**30)
    await orchestrator.start()
    await add(orchestrator, tmp_path, "m")
    slow = asyncio.Event()
    calls = 0
    original = manager.loaded_models

    async def loaded_models() -> set[str]:
        nonlocal calls
        calls += 1
        answer = await original()
        if calls == 1:
            await slow.wait()
        return answer

    manager.loaded_models = loaded_models  # type: ignore[method-assign]
    manager.loaded.pop("m")  # the crash
    tick = asyncio.ensure_future(orchestrator.tick())
    await until(lambda: calls == 1)
    _, out = await asyncio.wait_for(orchestrator.predict("m", "after the crash", {}), 5)
    assert out["echo"] == "after the crash" and orchestrator.get("m").load_count == 2
    slow.set()
    await tick
    record = orchestrator.get("m")
    assert record.state == S.READY and len(record.crash_times) == 1


async def test_a_runtime_that_cannot_answer_is_unknown_not_crashed(tmp_path):
    orchestrator, manager = build(tmp_path, gpu_bytes=8 * 2**30)
    await orchestrator.start()
    await add(orchestrator, tmp_path, "m")
    manager.unknown = True
    for _ in range(5):
        await orchestrator.tick()
    record = orchestrator.get("m")
    assert record.state == S.READY and record.crash_times == []
    assert orchestrator.supervisor.unknown["ray_serve"] == "index timed out"
    assert [d["reason_code"] for d in orchestrator.decisions.newest(model="ray_serve")] == ["unknown"]


async def test_a_clients_bad_request_is_never_a_crash(tmp_path):
    orchestrator, manager = build(tmp_path, gpu_bytes=8 * 2**30, orchestration={"max_restarts": 1})
    manager.bad_request_text = "model 'm' is not found in this input"  # error text echoing input
    await orchestrator.start()
    await add(orchestrator, tmp_path, "m")
    for _ in range(6):
        try:
            await orchestrator.predict("m", "x", {"bad": 1})
        except BadRequestError:
            pass
    record = orchestrator.get("m")
    assert record.state == S.READY and record.crash_times == [] and record.load_count == 1


async def test_not_loaded_answer_while_the_runtime_still_has_the_model_is_not_a_crash(tmp_path):
    orchestrator, manager = build(tmp_path, gpu_bytes=8 * 2**30, orchestration={"max_restarts": 1})
    await orchestrator.start()
    await add(orchestrator, tmp_path, "m")

    async def flaky_infer(name, inputs, parameters):
        raise ModelNotLoadedError("Triton: request for unknown model")

    manager.infer = flaky_infer  # type: ignore[method-assign]
    for _ in range(4):
        try:
            await orchestrator.predict("m", "x", {})
        except ModelNotLoadedError:
            pass
    record = orchestrator.get("m")
    assert record.state == S.READY and record.crash_times == [] and record.load_count == 1


async def test_a_model_that_just_became_ready_with_a_queue_is_not_evicted_for_an_urgent_one(tmp_path):
    """The thrash measured with 1,000 users (docs/load-testing.md): ``a`` becomes ready with
    its queue full; in the same instant, before any of its waiters has resumed from the
    admission await, ``b``'s urgent waiters asked for a swap, and ``a`` was evicted having
    served nothing (its residency window was not counted until a request had resumed).
    ``a`` must keep serving its queue through its window."""
    sizes = await sized(tmp_path, {"a": {}, "b": {}})
    orchestrator, manager = build(tmp_path, gpu_bytes=sizes["a"] + sizes["b"] // 2, orchestration={
        "max_gpu_memory_utilization": 1.0, "max_concurrent_requests": 1,
        "scheduler": {"min_residency_seconds": 30}})
    await orchestrator.start()
    await add(orchestrator, tmp_path, "b")
    await orchestrator.add_model("a", make_config_only_model(tmp_path / "models/repository/a"), load=False)
    manager.gates["load", "a"] = a_load = asyncio.Event()
    manager.gates["infer", "a"] = a_infer = asyncio.Event()
    a_requests = [asyncio.ensure_future(orchestrator.predict("a", f"a{i}", {}, wait_seconds=60))
                  for i in range(3)]
    await until(lambda: ("load", "a") in manager.entered)  # b evicted (idle), a loading
    # b's users arrive while a loads: their 3 s budget (urgency margin 2 s) makes them urgent at once.
    b_requests = [asyncio.ensure_future(orchestrator.predict("b", f"b{i}", {}, wait_seconds=3.0))
                  for i in range(2)]
    await asyncio.sleep(0.01)
    a_load.set()
    await until(lambda: orchestrator.get("a").state == S.READY)
    await until(lambda: ("infer", "a") in manager.entered)
    await orchestrator.tick()
    await asyncio.sleep(0.05)
    assert orchestrator.get("a").state == S.READY, orchestrator.get("a").reason
    held = [d for d in orchestrator.decisions.newest(50, model="b") if "of its own queued" in d["reason"]]
    assert held, "\n".join(f"{d['model']} {d['action']}: {d['reason']}" for d in orchestrator.decisions.newest(10))
    a_infer.set()
    answers = await asyncio.wait_for(asyncio.gather(*a_requests), 5)
    assert [out["echo"] for _, out in answers] == ["a0", "a1", "a2"]  # a served its whole queue
    await asyncio.gather(*b_requests, return_exceptions=True)
    await orchestrator.quiesce()
