"""Rich tables for `modelium models`, `ps` and `decisions`: pure functions from the daemon's
JSON to renderables, so they can be tested without a daemon or a terminal.

Every field is read with ``.get``: a daemon older or newer than this CLI, or a model that
is half registered, gives '-' cells, never a KeyError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from modelium.cli.fmt import (
    RESIDENT_STATES,
    clock,
    human_duration,
    idle_limit,
    idle_seconds,
    idle_until,
    memory_cell,
)

STATE_STYLES = {"ready": "green", "loading": "yellow", "draining": "yellow", "unloading": "yellow",
                "parked": "cyan", "failed": "bold red", "unloaded": "dim", "analyzed": "blue"}
#: Reasons worth a column: a failed model's error; why others are not loaded is noise.
REASON_STATES = ("failed", "unloaded", "draining")


def new_table(*columns: str, title: str | None = None) -> Table:
    """The one table style: a header line, no borders between rows (greps and pipes well)."""
    table = Table(*columns, box=box.SIMPLE_HEAD, title=title, title_justify="left",
                  pad_edge=False, show_edge=False, header_style="bold")
    return table


def state_text(state: Any) -> Text:
    text = str(state) if state else "-"
    return Text(text, style=STATE_STYLES.get(text, ""))


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def models_table(models: Sequence[Mapping[str, Any]]) -> Table:
    """Every model: NAME STATE RUNTIME DEVICE MEMORY PINNED REASON (the failure reason for
    failed ones, quarantine reasons are in `status`)."""
    table = new_table("NAME", "STATE", "RUNTIME", "DEVICE", "MEMORY", "PINNED", "REASON")
    table.columns[6].overflow = "fold"
    for model in sorted(models, key=lambda m: str(m.get("name", ""))):
        state = model.get("state")
        reason = model.get("reason") if state in REASON_STATES else None
        table.add_row(_cell(model.get("name")), state_text(state), _cell(model.get("runtime")),
                      _cell(model.get("device")), memory_cell(model),
                      "yes" if model.get("pinned") else "", _cell(reason) if reason else "")
    if not models:
        table.caption = "no models (drop a folder into the incoming directory)"
    return table


def ps_rows(models: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The models `ps` shows: those holding or taking memory, loading ones first."""
    order = {state: i for i, state in enumerate(RESIDENT_STATES)}
    rows = [m for m in models if m.get("state") in order]
    return sorted(rows, key=lambda m: (order[m["state"]], str(m.get("name", ""))))


def ps_table(models: Sequence[Mapping[str, Any]], config: Mapping[str, Any] | None, now: float) -> Table:
    """Like `ollama ps`: one row per loaded (or loading, draining, parked) model.

    IDLE is seconds since its last request or load; UNTIL is when idle unloading could
    take it by the daemon's config (it also needs the model's rate below
    ``min_qps_threshold``, and runs on the control loop's tick).
    """
    table = new_table("NAME", "RUNTIME", "DEVICE", "MEMORY", "STATE", "IDLE", "UNTIL", "PINNED")
    rows = ps_rows(models)
    for model in rows:
        table.add_row(_cell(model.get("name")), _cell(model.get("runtime")), _cell(model.get("device")),
                      memory_cell(model), state_text(model.get("state")),
                      human_duration(idle_seconds(model, now)), idle_until(model, config, now),
                      "yes" if model.get("pinned") else "")
    if not rows:
        table.caption = "no model is loaded"
    return table


def ps_json(models: Sequence[Mapping[str, Any]], config: Mapping[str, Any] | None, now: float) -> list[dict[str, Any]]:
    """`ps --json`: the same rows as the table, with numbers instead of phrases."""
    out = []
    for model in ps_rows(models):
        limit, why = idle_limit(model, config)
        idle = idle_seconds(model, now)
        footprint = model.get("footprint") or {}
        out.append({
            "name": model.get("name"), "runtime": model.get("runtime"), "device": model.get("device"),
            "state": model.get("state"), "pinned": bool(model.get("pinned")),
            "reserved_bytes": footprint.get("reserved_bytes"),
            "measured_bytes": footprint.get("measured_bytes"),
            "estimate_bytes": footprint.get("estimate_bytes"),
            "idle_seconds": None if idle is None else round(idle, 3),
            "idle_unload_after_seconds": limit, "idle_unload_rule": why,
            "idle_unload_in_seconds": None if limit is None or idle is None else round(max(0.0, limit - idle), 3),
        })
    return out


def decisions_table(entries: Sequence[Mapping[str, Any]]) -> Table:
    """Newest first, as the daemon answers: TIME ACTION MODEL REASON."""
    table = new_table("TIME", "ACTION", "MODEL", "REASON")
    table.columns[3].overflow = "fold"
    for entry in entries:
        table.add_row(clock(entry.get("time")), _cell(entry.get("action")), _cell(entry.get("model")),
                      _cell(entry.get("reason")))
    if not entries:
        table.caption = "no decisions yet"
    return table


def log_line(line: Mapping[str, Any]) -> str:
    """One log line as text: 'HH:MM:SS.mmm LEVEL logger: message'."""
    stamp = line.get("time")
    if isinstance(stamp, (int, float)):
        when = f"{clock(stamp)}.{int((stamp % 1) * 1000):03d}"
    else:
        when = "-"
    return f"{when} {line.get('level') or '-'!s:<7} {line.get('logger') or '-'}: {line.get('message', '')}"
