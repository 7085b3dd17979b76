"""Metric names in a PromQL expression, and the metric families a /metrics page exports.

Used by the Grafana board's tests (tests/unit/test_grafana_board.py,
tests/e2e/test_grafana_board.py). Not a full PromQL parser: it removes what cannot be a
metric name (strings, label matchers ``{...}``, range and subquery selectors ``[...]``,
the label lists of ``by/without/on/ignoring/group_left/group_right (...)``, numbers and
durations, Grafana's ``$variables``), then keeps the identifiers that are neither
functions (a name followed by ``(``), aggregation operators nor keywords.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# BOARD_UNDER_TEST=/path/to/copy.json runs the board tests on another file (e.g. to show
# that a misspelled metric makes them fail) without touching the real one.
BOARD = Path(os.environ.get("BOARD_UNDER_TEST") or REPO / "examples" / "grafana" / "modelium.json")

AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
})
KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atan2", "inf", "nan", "start", "end",
})
LABEL_LIST_KEYWORDS = ("by", "without", "on", "ignoring", "group_left", "group_right")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Grafana's built-in variables, and what the tests put in their place for Prometheus.
GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "${__rate_interval}": "1m",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_SELECTOR = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:" + "|".join(LABEL_LIST_KEYWORDS) + r")\s*\(([^()]*)\)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?(?:[smhdwy]|ms)?)+(?![\w:])")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (as written: ``x_total``, ``x_bucket``...)."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _SELECTOR.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        word = match.group(0)
        rest = text[match.end():].lstrip()
        if word in KEYWORDS or word in AGGREGATIONS:
            continue
        if rest.startswith("("):  # a function call
            continue
        names.add(word)
    return names


def exported_names(exposition: str) -> tuple[set[str], set[str]]:
    """(families from ``# TYPE`` lines, sample names) of a Prometheus text exposition."""
    families, samples = set(), set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return families, samples


def is_exported(name: str, families: set[str], samples: set[str]) -> bool:
    """Whether ``name`` (as a query writes it) is exported: a sample, a family, or a
    histogram's ``_bucket/_sum/_count`` (or a counter's ``_total``) of a family."""
    if name in samples or name in families:
        return True
    for suffix in (*HISTOGRAM_SUFFIXES, "_total"):
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            return True
    return False


def load_board(path: Path = BOARD) -> dict:
    return json.loads(path.read_text())


def all_panels(board: dict) -> list[dict]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    out: list[dict] = []
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def board_queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel."""
    return [(panel["title"], target["expr"]) for panel in all_panels(board)
            for target in panel.get("targets", [])]


def for_prometheus(expr: str, model_regex: str = ".*") -> str:
    """``expr`` with Grafana's variables replaced so Prometheus itself can run it."""
    for variable, value in GRAFANA_SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return expr.replace("${model}", model_regex).replace("$model", model_regex)
