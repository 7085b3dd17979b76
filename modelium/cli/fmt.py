"""Small, pure formatting helpers for the CLI's tables: sizes, durations, the text memory
bar and when idle unloading could take a model.

Kept free of rich and of HTTP so every rule here is a plain function of the daemon's JSON
(easy to test, and the same answer whatever the terminal).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

#: States in which a model holds (or is taking) memory: what `modelium ps` lists.
RESIDENT_STATES = ("loading", "ready", "draining", "unloading", "parked")
#: States that idle unloading can take (the daemon's `residents`).
IDLE_STATES = ("ready", "parked")

FREE_GLYPH = "░"
OUTSIDE_GLYPH = "▒"
MODEL_GLYPHS = ("█", "▓")  # alternate, so neighbouring models stay apart without colour


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-' (missing fields are shown, never raised on)."""
    if n is None or not isinstance(n, (int, float)) or math.isnan(n):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1000 or unit == "TiB":  # 1019 MiB reads better as 1.0 GiB
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop always returns


def human_duration(seconds: float | None) -> str:
    """65 -> '1m05s', 3700 -> '1h01m', 0.4 -> '0.4s'; None -> '-'."""
    if seconds is None or not isinstance(seconds, (int, float)) or math.isnan(seconds):
        return "-"
    if seconds < 0:
        seconds = 0.0
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def clock(stamp: float | None) -> str:
    """A unix time as local HH:MM:SS (what a person compares with their own clock)."""
    if not isinstance(stamp, (int, float)):
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(stamp))


def memory_bar(total: int, segments: Sequence[tuple[str, int]], outside: int = 0,
               width: int = 30) -> str:
    """A text bar of ``width`` cells: one run per model (``segments`` of (name, bytes)),
    then memory used outside Modelium, then free.

    Each non-empty segment gets at least one cell so a small model is still visible;
    cells are taken from the largest segment when that overfills the bar.
    """
    if total <= 0 or width <= 0:
        return FREE_GLYPH * max(width, 0)
    parts = [max(0, b) for _, b in segments] + [max(0, outside)]
    cells = [max(1, round(b / total * width)) if b > 0 else 0 for b in parts]
    while sum(cells) > width and max(cells) > 1:
        cells[cells.index(max(cells))] -= 1
    glyphs = [MODEL_GLYPHS[i % 2] for i in range(len(segments))] + [OUTSIDE_GLYPH]
    bar = "".join(g * c for g, c in zip(glyphs, cells))[:width]
    return bar + FREE_GLYPH * (width - len(bar))


def idle_seconds(model: Mapping[str, Any], now: float) -> float | None:
    """Seconds since the model last got a request or loaded (the later), as the daemon
    counts idleness; None when neither is known or the model is not serving."""
    if model.get("state") not in IDLE_STATES:
        return None
    marks = [t for t in (model.get("last_used"), model.get("loaded_at")) if isinstance(t, (int, float))]
    return max(0.0, now - max(marks)) if marks else None


def idle_limit(model: Mapping[str, Any], config: Mapping[str, Any] | None) -> tuple[float | None, str]:
    """(seconds idle before idle unloading may take it, or None for never, why).

    Reads the daemon's public config (GET /status → config): the model's own
    ``auto_unload_after_seconds`` over the global one; pinned and ``always_loaded``
    models are never taken. ``(None, "unknown")`` when the config is not available.
    """
    if model.get("pinned"):
        return None, "pinned"
    if not isinstance(config, Mapping):
        return None, "unknown"
    orchestration = config.get("orchestration") or {}
    if model.get("name") in (orchestration.get("always_loaded") or []):
        return None, "always loaded"
    own = ((config.get("models") or {}).get(model.get("name")) or {}).get("auto_unload_after_seconds")
    limit = own if own is not None else orchestration.get("auto_unload_after_seconds")
    if not isinstance(limit, (int, float)):
        return None, "unknown"
    if limit <= 0:
        return None, "idle unload off"
    return float(limit), "model setting" if own is not None else "global setting"


def idle_until(model: Mapping[str, Any], config: Mapping[str, Any] | None, now: float) -> str:
    """What `ps` shows in UNTIL: 'in 6m48s', 'due', 'never (pinned)' or '-'."""
    limit, why = idle_limit(model, config)
    if limit is None:
        return "-" if why == "unknown" else f"never ({why})"
    idle = idle_seconds(model, now)
    if idle is None:
        return "-"
    left = limit - idle
    return f"in {human_duration(left)}" if left > 0 else "due"


def memory_cell(model: Mapping[str, Any]) -> str:
    """'1.2 GiB' reserved, '+ 0.9 GiB measured' when measured, '~1.2 GiB est.' when only
    the estimate is known."""
    footprint = model.get("footprint") or {}
    reserved = footprint.get("reserved_bytes")
    measured = footprint.get("measured_bytes")
    estimate = footprint.get("estimate_bytes")
    if estimate is None and isinstance(model.get("memory"), Mapping):
        estimate = model["memory"].get("total_bytes")
    if reserved:
        text = human_bytes(reserved)
    elif estimate:
        text = f"~{human_bytes(estimate)} est."
    else:
        text = "-"
    if measured:
        text += f" ({human_bytes(measured)} measured)"
    return text
