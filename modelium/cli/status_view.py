"""`modelium status` for people: devices with memory bars, reservations, runtimes' health,
the scheduler's queue of work, quarantined drops.

Pure: takes the JSON of GET /status, GET /models and GET /health and returns rich
renderables; any of them may be partial (an older daemon, a runtime still starting).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from modelium.cli.fmt import clock, human_bytes, memory_bar
from modelium.cli.tables import new_table, state_text

BAR_WIDTH = 30
LEGEND = ("bar: █/▓ one run per reserved model, ▒ used outside Modelium, ░ free; "
          "LOADING: share of busy time spent loading")
OTHER = "(other)"  # ledger bytes no listed model accounts for (e.g. a retiring re-drop)


def device_reservations(status: Mapping[str, Any], models: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[str, int]]]:
    """device id -> [(model, reserved bytes)], largest first, plus an '(other)' entry for
    what the ledger holds beyond the models' own reservations."""
    out: dict[str, list[tuple[str, int]]] = {}
    for model in models:
        reserved = (model.get("footprint") or {}).get("reserved_bytes") or 0
        if reserved > 0 and model.get("device"):
            out.setdefault(str(model["device"]), []).append((str(model.get("name")), int(reserved)))
    for device, total in (status.get("reserved_bytes") or {}).items():
        rest = int(total) - sum(b for _, b in out.get(device, []))
        if rest > 0:
            out.setdefault(device, []).append((OTHER, rest))
    return {d: sorted(rows, key=lambda r: (r[0] == OTHER, -r[1], r[0])) for d, rows in out.items()}


def bar_width_for(console_width: int) -> int:
    """The memory bar's cells: 30 on a wide page, down to 10 so the numbers fit on 80."""
    return max(10, min(BAR_WIDTH, console_width - 72))


def devices_table(status: Mapping[str, Any], models: Sequence[Mapping[str, Any]],
                  bar_width: int = BAR_WIDTH) -> RenderableType:
    """One row per device: its bar, reserved (Modelium's ledger), used outside Modelium,
    free, total, and the share of its busy time spent loading rather than serving."""
    reservations = device_reservations(status, models)
    shares = status.get("switching_share") or {}
    table = new_table("DEVICE", "NAME", "MEMORY", "RESERVED", "OUTSIDE", "FREE", "TOTAL", "LOADING",
                      title=f"Devices ({status.get('inventory_source') or '?'} inventory)")
    for column in table.columns:
        column.no_wrap = column.header != "NAME"
    table.columns[2].min_width = bar_width
    devices = status.get("devices") or []
    for device in devices:
        device_id = str(device.get("id", "?"))
        total = int(device.get("total_bytes") or 0)
        outside = int(device.get("used_bytes_outside") or 0)
        rows = reservations.get(device_id, [])
        reserved = sum(b for _, b in rows)
        name = str(device.get("name") or "-")
        if device.get("simulated") and "simulated" not in name:
            name += " (simulated)"
        share = shares.get(device_id)
        table.add_row(device_id, name, memory_bar(total, rows, outside, bar_width), human_bytes(reserved),
                      human_bytes(outside), human_bytes(max(0, total - reserved - outside)),
                      human_bytes(total), f"{share:.0%}" if isinstance(share, (int, float)) else "-")
    if not devices:
        table.caption = "no devices reported"
        return table
    return Group(table, Text(LEGEND, style="dim"))


def reservations_table(status: Mapping[str, Any], models: Sequence[Mapping[str, Any]]) -> RenderableType:
    states = {str(m.get("name")): m for m in models}
    table = new_table("DEVICE", "MODEL", "STATE", "RESERVED", "MEASURED", title="Reservations")
    for device, rows in sorted(device_reservations(status, models).items()):
        for name, reserved in rows:
            model = states.get(name, {})
            measured = (model.get("footprint") or {}).get("measured_bytes")
            table.add_row(device, name, state_text(model.get("state")) if model else Text("-"),
                          human_bytes(reserved), human_bytes(measured))
    if not table.row_count:
        table.caption = "nothing reserved"
    return table


def runtimes_table(status: Mapping[str, Any], health: Mapping[str, Any] | None) -> RenderableType:
    table = new_table("RUNTIME", "HEALTH", "DETAIL", title="Runtimes")
    table.columns[2].overflow = "fold"
    runtimes = (health or {}).get("runtimes") or {}
    unknown = status.get("unknown_runtimes") or {}
    for name in sorted(set(runtimes) | set(unknown)):
        entry = runtimes.get(name) or {}
        ok = entry.get("ok")
        label = Text("ok", style="green") if ok else Text("down" if ok is False else "?", style="bold red")
        detail = " ".join(str(entry.get("detail") or "").split())
        if name in unknown:
            detail = (detail + "; " if detail else "") + f"cannot list its models: {unknown[name]}"
        table.add_row(name, label, detail or "-")
    if not table.row_count:
        table.caption = "no runtime health reported" if health is None else "no runtimes enabled"
    return table


def scheduler_lines(status: Mapping[str, Any]) -> RenderableType:
    """Claims (room promised to a waiting model), drains, retiring versions and intents."""
    scheduler = status.get("scheduler") or {}
    lines: list[str] = []
    for name, claim in sorted((scheduler.get("claims") or {}).items()):
        victims = ", ".join(claim.get("victims") or []) or "none"
        lines.append(f"claim     {name}: {human_bytes(claim.get('bytes'))} on {claim.get('device', '-')}"
                     f" (victims: {victims})")
    for name, drain in sorted((scheduler.get("draining") or {}).items()):
        target = f" for {drain['for']}" if drain.get("for") else ""
        park = ", will park" if drain.get("park") else ""
        lines.append(f"draining  {name}{target} ({drain.get('code', '-')}{park})")
    for name in scheduler.get("retiring") or []:
        lines.append(f"retiring  {name}")
    for name in scheduler.get("intents") or []:
        lines.append(f"wanted    {name} (a load is asked for)")
    for key in ("queues", "jobs"):  # shown when the daemon reports them
        value = status.get(key)
        if isinstance(value, Mapping) and value:
            lines.append(f"{key:<9} " + ", ".join(f"{k}={v}" for k, v in sorted(value.items())))
    body = "\n".join(lines) if lines else "idle: no claims, drains or pending loads"
    return Group(Text("Scheduler", style="bold"), Text(body))


def quarantined_table(status: Mapping[str, Any]) -> RenderableType | None:
    entries = status.get("quarantined") or []
    if not entries:
        return None
    table = new_table("TIME", "NAME", "REASON", title="Quarantined drops")
    table.columns[2].overflow = "fold"
    for entry in entries:
        table.add_row(clock(entry.get("time")), str(entry.get("name", "-")), str(entry.get("reason", "-")))
    return table


def summary_line(status: Mapping[str, Any], health: Mapping[str, Any] | None) -> Text:
    """'modelium 0.1.0 · ready · health ok · 3 models: 2 ready, 1 failed'."""
    states = Counter((status.get("models") or {}).values())
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items(), key=lambda kv: (-kv[1], kv[0])))
    ready = "ready" if status.get("ready") else "starting"
    parts = [f"modelium {status.get('version', '?')}", ready]
    if health is not None:
        parts.append(f"health {health.get('status', '?')}")
    total = sum(states.values())
    parts.append(f"{total} model{'' if total == 1 else 's'}" + (f": {counts}" if counts else ""))
    text = Text(" · ".join(parts), style="bold")
    if status.get("startup_error"):
        text.append(f"\nstartup error: {status['startup_error']}", style="bold red")
    return text


def status_view(status: Mapping[str, Any], models: Sequence[Mapping[str, Any]],
                health: Mapping[str, Any] | None, bar_width: int = BAR_WIDTH) -> Group:
    parts: list[RenderableType] = [summary_line(status, health), Text(""),
                                   devices_table(status, models, bar_width), Text(""),
                                   reservations_table(status, models), Text(""),
                                   runtimes_table(status, health), Text(""), scheduler_lines(status)]
    quarantined = quarantined_table(status)
    if quarantined is not None:
        parts += [Text(""), quarantined]
    return Group(*parts)
