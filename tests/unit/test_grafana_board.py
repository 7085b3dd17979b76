"""The Grafana board (examples/grafana/modelium.json) parses, every panel queries something,
and the PromQL metric-name extractor the e2e test relies on handles tricky expressions.
That every name is really exported is tests/e2e/test_grafana_board.py's job."""

from __future__ import annotations

import re

import pytest

from tests.promql_names import (
    BOARD,
    all_panels,
    board_queries,
    exported_names,
    for_prometheus,
    is_exported,
    load_board,
    metric_names,
)


@pytest.mark.parametrize(("expr", "names"), [
    ("modelium_requests_total", {"modelium_requests_total"}),
    ('sum by (model, status) (rate(modelium_requests_total{model=~"$model",status!="ok"}[$__rate_interval]))',
     {"modelium_requests_total"}),
    ('histogram_quantile(0.99, sum by (model, le) (rate(modelium_request_latency_seconds_bucket{model=~"a|b"}[5m])))',
     {"modelium_request_latency_seconds_bucket"}),
    # aggregation with the clause after the parentheses, offset, subquery, bool comparison
    ("sum(rate(x_total[1m] offset 5m)) by (instance) > bool 0", {"x_total"}),
    ("max_over_time(rate(y_total[1m])[10m:30s])", {"y_total"}),
    # a vector matching join: labels in on()/group_left() are no metric names
    ('sum by (device) (a_bytes{kind="measured"} * on (model) group_left (device) max by (model, device) (b))',
     {"a_bytes", "b"}),
    # label values that look like metric names, strings with braces, numbers and durations
    ('count(c{reason="modelium_fake_total", x="}{"}) / 1e3 + 2.5 - 0x1F', {"c"}),
    ('label_replace(up, "dst", "$1", "src", "(.*)")', {"up"}),
    ("topk(3, sum without (pod) (z)) or vector(0) unless w", {"z", "w"}),
    ("avg(d_seconds_sum) / avg(d_seconds_count)", {"d_seconds_sum", "d_seconds_count"}),
    ("rate(e[1h30m]) and on () f", {"e", "f"}),
    ("- g_total", {"g_total"}),
    ('{__name__="h"}', set()),  # a name only given as a matcher is not extracted
])
def test_metric_names_extracts_only_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_exported_names_and_histogram_families() -> None:
    page = (
        "# HELP lat_seconds Latency\n# TYPE lat_seconds histogram\n"
        'lat_seconds_bucket{le="0.1",model="m"} 1.0\nlat_seconds_sum{model="m"} 0.05\n'
        "# TYPE req counter\nreq_total{model=\"m\"} 3.0\nreq_created 1.7e9\n"
        "# TYPE empty_seconds histogram\n"  # a labelled family with no series yet
        "nv_inference_count 2\n"
    )
    families, samples = exported_names(page)
    assert families == {"lat_seconds", "req", "empty_seconds"}
    assert "nv_inference_count" in samples and "req_total" in samples
    for name in ("lat_seconds_bucket", "lat_seconds_count", "req_total", "empty_seconds_bucket",
                 "nv_inference_count"):
        assert is_exported(name, families, samples), name
    for name in ("lat_second_bucket", "req_count_total", "nope", "empty_seconds_total_bucket"):
        assert not is_exported(name, families, samples), name


def test_for_prometheus_replaces_grafana_variables() -> None:
    expr = 'rate(x{model=~"$model"}[$__rate_interval]) + y{model=~"${model}"}'
    assert for_prometheus(expr) == 'rate(x{model=~".*"}[1m]) + y{model=~".*"}'


def test_board_parses_and_every_panel_has_queries() -> None:
    board = load_board()
    assert board["uid"] == "modelium" and board["title"] == "Modelium"
    assert 36 <= board["schemaVersion"] <= 41
    panels = all_panels(board)
    assert len(panels) >= 10
    ids = [p["id"] for p in board["panels"]] + [p["id"] for r in board["panels"] for p in r.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["title"], panel
        assert panel.get("targets"), f"panel {panel['title']!r} has no targets"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert metric_names(target["expr"]), f"{panel['title']!r}: no metric in {target['expr']!r}"
            assert all(n.startswith("modelium_") for n in metric_names(target["expr"])), target["expr"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"


def test_board_covers_the_asked_for_panels() -> None:
    """Requests, latency quantiles, TTFT, tokens/s, QPS, idle, loads, unloads, swaps, queue
    depth, reserved vs used memory and decisions by reason each have a query."""
    exprs = " ".join(expr for _, expr in board_queries(load_board()))
    for needed in ("modelium_requests_total", "modelium_request_latency_seconds_bucket",
                   "modelium_time_to_first_token_seconds_bucket", "modelium_generated_tokens_total",
                   "modelium_model_qps", "modelium_model_idle_seconds", "modelium_model_loads_total",
                   "modelium_model_unloads_total", "modelium_swaps_total", "modelium_queue_depth",
                   "modelium_memory_reserved_bytes", "modelium_gpu_memory_used_bytes",
                   "modelium_decisions_total"):
        assert needed in exprs, needed
    for q in ("0.5", "0.9", "0.99"):
        assert re.search(rf"histogram_quantile\({q}, sum by \(model, le\) \(rate\(modelium_request_latency", exprs), q
    assert "sum by (action, reason)" in exprs


def test_board_file_is_the_one_documented() -> None:
    assert BOARD.suffix == ".json" and BOARD.is_file(), BOARD
