"""One persisted state: a restart (even after kill -9) restores what the user had."""

from __future__ import annotations

from pathlib import Path

from modelium.analysis import analyze_folder
from modelium.config import settings_from_dict
from modelium.hardware import GIB, Device, Inventory, MemoryLedger
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import ModelState, Orchestrator, StateStore
from modelium.orchestrator.table import IllegalTransition, ModelTable
from modelium.orchestrator.records import ModelRecord
from tests.unit.fakes import FakeManager, make_config_only_model

S = ModelState


class CountingAnalyzer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, path: Path, name: str):
        self.calls.append(name)
        return analyze_folder(path, name)


def boot(tmp_path: Path, manager: FakeManager, analyze: CountingAnalyzer) -> Orchestrator:
    settings = settings_from_dict({"orchestration": {"max_concurrent_loads": 1}}, base_dir=tmp_path, env={})
    inventory = Inventory(devices=(Device("gpu:0", "gpu", 0, 16 * GIB, "simulated"),), source="configured")
    return Orchestrator(settings, {"ray_serve": manager}, inventory, MemoryLedger(), ModeliumMetrics(),
                        store=StateStore(tmp_path / "state" / "modelium.db"), analyze=analyze)


async def test_restart_restores_pins_unloads_failures_and_reloads_the_most_used_first(tmp_path):
    for name in ("pinned", "unloaded", "busy", "quiet", "broken"):
        make_config_only_model(tmp_path / "models/repository" / name)
    first_manager, first_analyze = FakeManager(), CountingAnalyzer()
    first_manager.fail_loads.add("broken")
    first = boot(tmp_path, first_manager, first_analyze)
    await first.start()
    await first.quiesce()
    assert {r.name: r.state for r in first.models()} == {
        "broken": S.FAILED, "busy": S.READY, "pinned": S.READY, "quiet": S.READY, "unloaded": S.READY}
    first.set_pinned("pinned", True)
    await first.unload("unloaded")
    for _ in range(5):
        await first.predict("busy", "x", {})
    await first.predict("quiet", "x", {})
    await first.tick()  # request counters are persisted each tick
    broken_reason = first.get("broken").reason
    # kill -9: nothing is stopped or flushed beyond what each transition wrote.

    manager, analyze = FakeManager(), CountingAnalyzer()
    second = boot(tmp_path, manager, analyze)
    await second.start()
    await second.quiesce()
    states = {r.name: r.state for r in second.models()}
    assert states == {"broken": S.FAILED, "busy": S.READY, "pinned": S.READY, "quiet": S.READY,
                      "unloaded": S.UNLOADED}
    assert second.get("pinned").pinned and second.get("broken").reason == broken_reason
    assert [name for call, name in manager.calls if call == "load"] == ["pinned", "busy", "quiet"]
    assert analyze.calls == []  # nothing re-analysed: the folders did not change
    assert second.get("busy").usage.requests == 5 and second.get("busy").costs.load_seconds is not None
    # the user's unload holds until something asks for the model
    _, out = await second.predict("unloaded", "hi", {})
    assert out["echo"] == "hi"


async def test_a_changed_folder_is_analysed_again_and_a_removed_one_forgotten(tmp_path):
    make_config_only_model(tmp_path / "models/repository/a")
    make_config_only_model(tmp_path / "models/repository/gone")
    first = boot(tmp_path, FakeManager(), CountingAnalyzer())
    await first.start()
    await first.quiesce()
    make_config_only_model(tmp_path / "models/repository/a", num_hidden_layers=5)
    (tmp_path / "models/repository/gone/config.json").unlink()
    (tmp_path / "models/repository/gone").rmdir()
    analyze = CountingAnalyzer()
    second = boot(tmp_path, FakeManager(), analyze)
    await second.start()
    assert analyze.calls == ["a"] and second.get("a").profile.num_layers == 5
    assert [r.name for r in second.models()] == ["a"]
    assert "gone" not in second.store.load()


def test_the_transition_table_rejects_illegal_moves(tmp_path):
    table = ModelTable()
    record = table.put(ModelRecord(name="m", path=tmp_path))
    table.set_state(record, S.ANALYZED)
    try:
        table.set_state(record, S.READY)
    except IllegalTransition as exc:
        assert "analyzed -> ready" in str(exc)
    else:
        raise AssertionError("ANALYZED -> READY must be refused (it skips LOADING)")
    assert record.state == S.ANALYZED
