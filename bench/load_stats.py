"""The load tool's pure logic: per-request records, percentiles, time buckets, error tallies,
the SSE reader and the daemon's decisions turned into plot markers.

Kept apart from bench/load.py (which does the network) so tests/unit/test_load_tool.py can
check every number the report prints without a daemon.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

OK = "200"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection error"
CUT_OFF = "cut off"  # still in flight when the run's grace period ended


@dataclass
class Record:
    """One request as the client saw it. ``start``/``end`` are epoch seconds (the daemon's
    decisions carry ``time.time()`` too, so markers line up); ``latency`` and ``ttft`` are
    measured on the monotonic clock."""

    user: int
    model: str
    kind: str  # "predict" or "chat"
    start: float
    end: float = 0.0
    status: str = CUT_OFF  # the HTTP status as text, or TIMEOUT / CONNECTION_ERROR / CUT_OFF
    latency: float = 0.0
    ttft: float | None = None
    tokens: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK

    def row(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), ``q`` in 0..100;
    None for no values, so an empty group prints "-" rather than a made-up 0."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def triple(values: list[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99)}


def stream_rate(record: Record) -> float | None:
    """Tokens per second of one stream after its first token (the decode rate a user sees);
    the whole latency when there was only one chunk (Ray-served LLMs send one)."""
    if not record.ok or record.tokens <= 0 or record.latency <= 0:
        return None
    if record.ttft is not None and record.tokens > 1 and record.latency > record.ttft:
        return (record.tokens - 1) / (record.latency - record.ttft)
    return record.tokens / record.latency


def error_tally(records: list[Record]) -> dict[str, int]:
    """Every status that is not 200, counted, most frequent first."""
    counts = Counter(r.status for r in records if not r.ok)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def summarize(records: list[Record], window: float) -> dict[str, Any]:
    """One group's numbers. Latency percentiles are over successful requests only (a 429
    answered in 2 ms would flatter them); ``window`` is the run's length in seconds, the
    denominator of every rate."""
    ok = [r for r in records if r.ok]
    streams = [r for r in ok if r.kind == "chat"]
    rates = [rate for rate in map(stream_rate, streams) if rate is not None]
    window = max(window, 1e-9)
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": error_tally(records),
        "latency_s": triple([r.latency for r in ok]),
        "ttft_s": triple([r.ttft for r in streams if r.ttft is not None]),
        "tokens": sum(r.tokens for r in streams),
        "tokens_per_s_aggregate": sum(r.tokens for r in streams) / window,
        "tokens_per_s_per_stream": triple(rates),
        "throughput_ok_per_s": len(ok) / window,
        "throughput_all_per_s": len(records) / window,
    }


def summarize_run(records: list[Record], window: float, users_started: int,
                  users_asked: int) -> dict[str, Any]:
    by_model: dict[str, list[Record]] = {}
    for record in records:
        by_model.setdefault(record.model, []).append(record)
    return {
        "users_asked": users_asked,
        "users_reached": users_started,
        "users_served": len({r.user for r in records if r.ok}),
        "window_s": window,
        "overall": summarize(records, window),
        "models": {name: summarize(group, window) for name, group in sorted(by_model.items())},
    }


@dataclass
class Bucket:
    start: float  # seconds since the run began
    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    users: int = 0
    in_flight: int = 0


def buckets(records: list[Record], t0: float, t1: float, width: float,
            user_spans: list[tuple[float, float]] | None = None) -> list[Bucket]:
    """Requests by the bucket they *completed* in (latency and throughput), plus the users
    active and the requests in flight at each bucket's midpoint; times relative to ``t0``."""
    count = max(1, math.ceil((t1 - t0) / width))
    out = [Bucket(start=i * width) for i in range(count)]
    for record in records:
        index = min(count - 1, max(0, int((record.end - t0) // width)))
        bucket = out[index]
        if record.ok:
            bucket.ok += 1
            bucket.latencies.append(record.latency)
        else:
            bucket.errors += 1
    for bucket in out:
        middle = t0 + bucket.start + width / 2
        bucket.in_flight = sum(1 for r in records if r.start <= middle < r.end)
        if user_spans is not None:
            bucket.users = sum(1 for begin, stop in user_spans if begin <= middle < stop)
    return out


class SseReader:
    """Server-Sent Events from byte chunks as they arrive (an event may be split across
    chunks or several may share one): ``feed`` returns the complete ``data:`` payloads."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events: list[str] = []
        while b"\n\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n\n", 1)
            data = [line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
            if data:
                events.append(b"\n".join(data).decode("utf-8", "replace"))
        return events


@dataclass
class StreamCount:
    """What one chat stream carried: content deltas (chunks with text), the usage chunk's
    ``completion_tokens`` when the server sent one, and whether ``[DONE]`` came."""

    deltas: int = 0
    usage_tokens: int | None = None
    done: bool = False

    def add(self, data: str) -> bool:
        """Take one event's data; True when it carried content (the first one is TTFT)."""
        if data.strip() == "[DONE]":
            self.done = True
            return False
        try:
            chunk = json.loads(data)
        except ValueError:
            return False
        if not isinstance(chunk, dict):
            return False
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]
        content = False
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content") or choice.get("text"):
                content = True
        if content:
            self.deltas += 1
        return content

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.deltas


#: (action, reason_code) -> marker kind; "*" matches any code. See modelium/orchestrator/
#: scheduler.py (_swap: "evict"/"make-room" under the *waiting* model's name) and
#: transitions.py (on_loaded "load"/"ok", on_unloaded "unload"/<drain code>, on_parked).
MARKER_RULES: dict[tuple[str, str], str] = {
    ("load", "ok"): "load",
    ("wake", "ok"): "load",
    ("load", "error"): "load failed",
    ("evict", "make-room"): "swap",
    ("redrop", "swap"): "swap",
    ("unload", "evicted"): "evict",
    ("park", "evicted"): "evict",
    ("unload", "escalated"): "evict",
    ("idle_unload", "*"): "unload",
    ("unload", "request"): "unload",
    ("lost", "*"): "crash",
    ("fail", "*"): "crash",
}


@dataclass(frozen=True)
class Marker:
    time: float  # seconds since the run began
    kind: str
    model: str
    reason: str


def markers(decisions: list[dict[str, Any]], t0: float, t1: float) -> list[Marker]:
    """The decisions inside [t0, t1] that change what is loaded, oldest first."""
    out = []
    for entry in decisions:
        when = entry.get("time")
        if not isinstance(when, (int, float)) or not t0 <= when <= t1:
            continue
        action, code = entry.get("action", ""), entry.get("reason_code", "")
        kind = MARKER_RULES.get((action, code)) or MARKER_RULES.get((action, "*"))
        if kind is not None:
            out.append(Marker(when - t0, kind, str(entry.get("model", "")), str(entry.get("reason", ""))))
    return sorted(out, key=lambda m: m.time)


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def table(summary: dict[str, Any]) -> str:
    """The human report: one row per model and one for everything."""
    head = (f"{'model':18s} {'reqs':>6s} {'ok':>6s} {'p50':>9s} {'p90':>9s} {'p99':>9s} "
            f"{'TTFT p50':>9s} {'TTFT p99':>9s} {'tok/s':>7s} {'ok/s':>6s}  errors")
    lines = [head, "-" * len(head)]
    groups = [*summary["models"].items(), ("ALL", summary["overall"])]
    for name, group in groups:
        lat, ttft = group["latency_s"], group["ttft_s"]
        errors = ", ".join(f"{k}: {v}" for k, v in group["errors"].items()) or "-"
        lines.append(f"{name[:18]:18s} {group['requests']:6d} {group['ok']:6d} {fmt_seconds(lat['p50']):>9s} "
                     f"{fmt_seconds(lat['p90']):>9s} {fmt_seconds(lat['p99']):>9s} "
                     f"{fmt_seconds(ttft['p50']):>9s} {fmt_seconds(ttft['p99']):>9s} "
                     f"{group['tokens_per_s_aggregate']:7.1f} {group['throughput_ok_per_s']:6.1f}  {errors}")
    lines.append(f"users: {summary['users_reached']} of {summary['users_asked']} started, "
                 f"{summary['users_served']} got at least one answer; window {summary['window_s']:.1f} s")
    return "\n".join(lines)
