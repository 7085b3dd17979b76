"""The CLI's rendering, as pure functions of the daemon's JSON: sizes, durations, the
memory bar, idle-unload arithmetic, and the models / ps / status / decisions tables."""

from __future__ import annotations

from modelium.cli.fmt import (
    FREE_GLYPH,
    MODEL_GLYPHS,
    OUTSIDE_GLYPH,
    human_bytes,
    human_duration,
    idle_limit,
    idle_until,
    memory_bar,
    memory_cell,
)
from modelium.cli.output import render_text
from modelium.cli.status_view import device_reservations, status_view
from modelium.cli.tables import (
    decisions_table,
    log_line,
    models_table,
    ps_json,
    ps_table,
)
from tests.unit.cli_fakes import (
    GIB,
    NOW,
    model,
    sample_config,
    sample_health,
    sample_models,
    sample_status,
)


def _row(text: str, first: str) -> str:
    rows = [line for line in text.splitlines() if line.split()[:1] == [first]]
    assert len(rows) == 1, text
    return rows[0]


def test_human_sizes_and_durations():
    assert human_bytes(None) == "-" and human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(3 * GIB) == "3.0 GiB"
    assert human_duration(None) == "-" and human_duration(4.25) == "4.2s"
    assert human_duration(65) == "1m05s" and human_duration(3700) == "1h01m"
    assert human_duration(-3) == "0.0s" and human_duration(3 * 86400) == "3d00h"


def test_memory_bar_shows_each_model_outside_and_free():
    bar = memory_bar(100, [("a", 50), ("b", 20)], outside=10, width=10)
    assert bar == MODEL_GLYPHS[0] * 5 + MODEL_GLYPHS[1] * 2 + OUTSIDE_GLYPH + FREE_GLYPH * 2
    tiny = memory_bar(1000, [("small", 1)], width=10)  # never invisible
    assert tiny == MODEL_GLYPHS[0] + FREE_GLYPH * 9
    full = memory_bar(10, [("a", 9), ("b", 9)], outside=9, width=6)  # over-full: still 6 cells
    assert len(full) == 6 and FREE_GLYPH not in full and OUTSIDE_GLYPH in full
    assert memory_bar(0, [], width=4) == FREE_GLYPH * 4


def test_idle_limit_reads_model_override_always_loaded_and_pins():
    ready = model("m", "ready", loaded_at=NOW - 100)
    assert idle_limit(ready, sample_config()) == (600.0, "global setting")
    own = {**sample_config(), "models": {"m": {"auto_unload_after_seconds": 30}}}
    assert idle_limit(ready, own) == (30.0, "model setting")
    assert idle_limit(ready, sample_config(auto_unload_after_seconds=0)) == (None, "idle unload off")
    assert idle_limit(ready, sample_config(always_loaded=["m"])) == (None, "always loaded")
    assert idle_limit({**ready, "pinned": True}, sample_config()) == (None, "pinned")
    assert idle_limit(ready, None) == (None, "unknown")
    assert idle_until(ready, sample_config(), NOW) == "in 8m20s"
    assert idle_until(ready, own, NOW) == "due"
    assert idle_until(model("m", "loading"), sample_config(), NOW) == "-"


def test_memory_cell_prefers_reserved_then_estimate():
    assert memory_cell(model("m", "unloaded", memory={"total_bytes": GIB})) == "~1.0 GiB est."
    assert memory_cell({"name": "bare"}) == "-"
    both = model("m", "ready", footprint={"reserved_bytes": 2 * GIB, "measured_bytes": GIB})
    assert memory_cell(both) == "2.0 GiB (1.0 GiB measured)"


def test_models_table_lists_every_model_and_failed_reasons():
    text = render_text(models_table(sample_models()), width=200)
    assert text.split()[:7] == ["NAME", "STATE", "RUNTIME", "DEVICE", "MEMORY", "PINNED", "REASON"]
    broken = _row(text, "broken")
    assert "failed" in broken and "ModuleNotFoundError: nope" in broken
    assert _row(text, "half-known").split() == ["half-known", "analyzed", "-", "-", "-"]
    assert "yes" in _row(text, "keeper")
    assert "2.0 GiB (1.5 GiB measured)" in _row(text, "tiny-bert")
    assert "ready" not in _row(text, "sleepy") and "~3.0 GiB est." in _row(text, "sleepy")
    assert "no models" in render_text(models_table([]))


def test_ps_lists_only_resident_models_with_idle_and_until():
    text = render_text(ps_table(sample_models(), sample_config(), NOW), width=200)
    names = [line.split()[0] for line in text.splitlines()[2:] if line.strip()]
    assert names == ["big-llama", "keeper", "tiny-bert"]  # loading first; no failed/unloaded
    bert = _row(text, "tiny-bert").split()
    assert bert[:3] == ["tiny-bert", "triton", "gpu:0"]
    assert "2m00s" in bert and "8m00s" in bert  # idle since the last request, 600 s limit
    assert "never (pinned)" in _row(text, "keeper")
    assert "no model is loaded" in render_text(ps_table([], None, NOW))


def test_ps_json_has_numbers():
    rows = {r["name"]: r for r in ps_json(sample_models(), sample_config(), NOW)}
    assert set(rows) == {"big-llama", "keeper", "tiny-bert"}
    bert = rows["tiny-bert"]
    assert bert["reserved_bytes"] == 2 * GIB and bert["measured_bytes"] == int(1.5 * GIB)
    assert abs(bert["idle_seconds"] - 120) < 1 and abs(bert["idle_unload_in_seconds"] - 480) < 1
    assert rows["keeper"]["idle_unload_after_seconds"] is None and rows["keeper"]["pinned"]
    assert rows["big-llama"]["idle_seconds"] is None


def test_reservations_split_per_model_with_the_ledger_rest():
    split = device_reservations(sample_status(), sample_models())
    assert split["gpu:0"] == [("big-llama", 8 * GIB), ("tiny-bert", 2 * GIB), ("(other)", GIB)]
    assert split["cpu"] == [("keeper", GIB)]


def test_status_view_has_devices_reservations_runtimes_scheduler_quarantine():
    text = render_text(status_view(sample_status(), sample_models(), sample_health(ok=False)), width=200)
    assert text.startswith("modelium 0.1.0 · ready · health degraded · 6 models")
    gpu = _row(text.split("Reservations")[0], "gpu:0")
    assert "11.0 GiB" in gpu and "4.0 GiB" in gpu and "9.0 GiB" in gpu and "24.0 GiB" in gpu
    assert "25%" in gpu and OUTSIDE_GLYPH in gpu and FREE_GLYPH in gpu
    assert "down" in _row(text, "ray_serve") and "ray head exited with 1" in text
    assert "ok" in _row(text, "triton")
    reservations = text.split("Reservations")[1].split("Runtimes")[0]
    assert _row(reservations, "cpu").split() == ["cpu", "keeper", "ready", "1.0", "GiB", "-"]
    assert "(other)" in reservations and "1.5 GiB" in reservations  # tiny-bert measured
    assert "claim     big-llama: 8.0 GiB on gpu:0 (victims: old-one)" in text
    assert "draining  old-one for big-llama (evict)" in text
    assert "weird-link" in text and "cp -rL" in text


def test_status_view_survives_an_empty_answer():
    text = render_text(status_view({}, [], None))
    assert "no devices reported" in text and "nothing reserved" in text
    assert "idle: no claims" in text and "Quarantined" not in text


def test_decisions_table_and_log_line():
    entries = [{"time": NOW, "action": "evict", "model": "a", "reason": "room for b"}, {"action": "load"}]
    text = render_text(decisions_table(entries), width=120)
    assert "evict" in _row(text, next(w for w in text.split() if w.count(":") == 2))
    assert "room for b" in text and "load" in text
    assert "no decisions yet" in render_text(decisions_table([]))
    line = log_line({"seq": 1, "time": 1700000000.25, "level": "INFO", "logger": "x.y", "message": "hi"})
    assert line.endswith(" INFO    x.y: hi") and ".250 " in line
    assert log_line({}) == "- -       -: "
