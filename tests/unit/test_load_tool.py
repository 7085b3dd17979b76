"""bench/load.py's pure parts: the numbers its report prints (percentiles, buckets, error
tally, tokens/s), the SSE reader, the decisions -> plot markers mapping, and that the plot
is written. No daemon, no network."""

from __future__ import annotations

import json

import pytest

from bench import load
from bench.load_plot import plot
from bench.load_stats import (
    CUT_OFF,
    TIMEOUT,
    Record,
    SseReader,
    StreamCount,
    buckets,
    error_tally,
    markers,
    percentile,
    stream_rate,
    summarize,
    summarize_run,
    table,
)


def rec(start: float, latency: float, status: str = "200", model: str = "m", kind: str = "predict",
        **extra) -> Record:
    return Record(user=extra.pop("user", 0), model=model, kind=kind, start=start, end=start + latency,
                  status=status, latency=latency, **extra)


def test_percentile_interpolates_like_numpy():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0 and percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_error_tally_counts_everything_but_200_most_frequent_first():
    records = [rec(0, 1), rec(0, 1, "429"), rec(0, 1, "429"), rec(0, 1, TIMEOUT), rec(0, 1, "503"),
               rec(0, 1, CUT_OFF), rec(0, 1, "429")]
    assert error_tally(records) == {"429": 3, "503": 1, "cut off": 1, "timeout": 1}
    assert next(iter(error_tally(records))) == "429"


def test_summary_latency_is_over_successes_and_rates_over_the_window():
    records = [rec(0, 0.1), rec(0, 0.2), rec(0, 0.3), rec(0, 0.002, "429"),
               rec(0, 1.0, "200", kind="chat", ttft=0.2, tokens=9),
               rec(0, 0.5, "200", kind="chat", ttft=0.1, tokens=1)]
    summary = summarize(records, window=10.0)
    assert summary["requests"] == 6 and summary["ok"] == 5
    assert summary["errors"] == {"429": 1}
    assert summary["latency_s"]["p50"] == pytest.approx(0.3)  # 0.002 (the 429) is left out
    assert summary["ttft_s"]["p50"] == pytest.approx(0.15)
    assert summary["tokens"] == 10
    assert summary["tokens_per_s_aggregate"] == pytest.approx(1.0)
    assert summary["throughput_ok_per_s"] == pytest.approx(0.5)
    # (9 - 1) tokens over the 0.8 s after the first one = 10/s; a one-chunk stream: 1 / 0.5 s
    assert sorted([stream_rate(r) for r in records[4:]]) == [pytest.approx(2.0), pytest.approx(10.0)]
    assert stream_rate(records[3]) is None


def test_run_summary_groups_by_model_and_counts_users():
    records = [rec(0, 0.1, model="a", user=1), rec(0, 0.1, "503", model="b", user=2), rec(0, 0.2, model="b", user=3)]
    summary = summarize_run(records, 5.0, users_started=3, users_asked=4)
    assert summary["users_reached"] == 3 and summary["users_asked"] == 4 and summary["users_served"] == 2
    assert set(summary["models"]) == {"a", "b"}
    assert summary["models"]["b"]["errors"] == {"503": 1}
    assert summary["overall"]["requests"] == 3
    text = table(summary)
    assert "ALL" in text and "503: 1" in text and "3 of 4 started" in text


def test_buckets_by_completion_with_users_and_in_flight():
    t0 = 1000.0
    records = [rec(t0 + 0.5, 0.2), rec(t0 + 1.0, 0.5, "429"), rec(t0 + 2.1, 0.6), rec(t0 + 0.2, 3.5)]
    spans = [(t0, t0 + 4.0), (t0 + 2.5, t0 + 4.0)]
    series = buckets(records, t0, t0 + 4.0, 1.0, spans)
    assert [b.start for b in series] == [0.0, 1.0, 2.0, 3.0]
    assert [b.ok for b in series] == [1, 0, 1, 1]
    assert [b.errors for b in series] == [0, 1, 0, 0]
    assert series[3].latencies == [pytest.approx(3.5)]
    assert [b.users for b in series] == [1, 1, 2, 2]  # midpoints 0.5, 1.5, 2.5 (starts then), 3.5
    assert [b.in_flight for b in series] == [2, 1, 2, 1]


def test_sse_reader_joins_split_events_and_splits_joined_ones():
    reader = SseReader()
    assert reader.feed(b'data: {"a"') == []
    assert reader.feed(b': 1}\n\ndata: [DONE]\r\n\r\n: comment\n\n') == ['{"a": 1}', "[DONE]"]
    assert reader.feed(b"event: x\ndata: one\ndata: two\n\n") == ["one\ntwo"]


def chunk(content: str | None = None, usage: int | None = None) -> str:
    body: dict = {"choices": [] if content is None else [{"index": 0, "delta": {"content": content}}]}
    if usage is not None:
        body["usage"] = {"prompt_tokens": 3, "completion_tokens": usage}
    return json.dumps(body)


def test_stream_count_uses_usage_when_present_else_deltas():
    count = StreamCount()
    role = json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    assert count.add(role) is False  # the role chunk is not content: TTFT waits for text
    assert count.add(chunk("Hel")) is True and count.add(chunk("")) is False and count.add(chunk("lo")) is True
    assert count.tokens == 2 and not count.done
    assert count.add(chunk(usage=5)) is False and count.add("[DONE]") is False
    assert count.tokens == 5 and count.done
    assert StreamCount().add("not json") is False
    completions = StreamCount()
    assert completions.add(json.dumps({"choices": [{"text": "x"}]})) is True


def test_decisions_become_markers_inside_the_window_only():
    t0 = 100.0
    decisions = [  # newest first, as GET /decisions answers
        {"time": 190.0, "model": "a", "action": "load", "reason_code": "ok", "reason": "late"},
        {"time": 130.0, "model": "b", "action": "idle_unload", "reason_code": "idle", "reason": "idle"},
        {"time": 125.0, "model": "a", "action": "unload", "reason_code": "evicted", "reason": "for b"},
        {"time": 120.0, "model": "b", "action": "evict", "reason_code": "make-room", "reason": "room"},
        {"time": 121.0, "model": "b", "action": "load", "reason_code": "ok", "reason": "loaded"},
        {"time": 122.0, "model": "c", "action": "load", "reason_code": "error", "reason": "boom"},
        {"time": 123.0, "model": "b", "action": "defer", "reason_code": "amortising", "reason": "not yet"},
        {"time": 124.0, "model": "b", "action": "place", "reason_code": "ok", "reason": "placed"},
        {"time": 90.0, "model": "a", "action": "load", "reason_code": "ok", "reason": "before"},
        {"model": "x", "action": "load", "reason_code": "ok"},  # no time: skipped
    ]
    marks = markers(decisions, t0, 150.0)
    assert [(m.time, m.kind, m.model) for m in marks] == [
        (20.0, "swap", "b"), (21.0, "load", "b"), (22.0, "load failed", "c"),
        (25.0, "evict", "a"), (30.0, "unload", "b")]


def test_plot_is_written(tmp_path):
    t0 = 1000.0
    records = [rec(t0 + i * 0.1, 0.05 + (i % 7) * 0.01, "200" if i % 5 else "429",
                   kind="chat" if i % 2 else "predict", ttft=0.01, tokens=4) for i in range(200)]
    series = buckets(records, t0, t0 + 21.0, 2.0, [(t0, t0 + 21.0)])
    marks = markers([{"time": t0 + 5, "model": "a", "action": "load", "reason_code": "ok"},
                     {"time": t0 + 9, "model": "a", "action": "unload", "reason_code": "evicted"},
                     {"time": t0 + 8.5, "model": "b", "action": "evict", "reason_code": "make-room"}], t0, t0 + 21)
    path = plot(tmp_path / "img" / "load.png", records, series, marks, t0, 2.0, "synthetic")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    empty = plot(tmp_path / "empty.png", [], buckets([], t0, t0 + 4, 2.0), [], t0, 2.0, "nothing")
    assert empty.exists()


def test_cli_needs_a_model_and_raises_the_fd_limit():
    with pytest.raises(SystemExit):
        load.parse_args(["--users", "3"])
    args = load.parse_args(["--predict", "a,b", "--chat", "c", "--chat-share", "0.25"])
    assert args.predict == ["a", "b"] and args.chat == "c"
    soft, hard = load.raise_fd_limit(10)
    assert soft >= 10 * 2 + 256 or soft == hard
