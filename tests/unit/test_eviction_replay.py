"""bench/eviction_replay.py drives the real orchestrator in virtual time: invariants and
the claims docs/eviction.md makes, on small traces (a few seconds of CPU)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(_BENCH))
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


er = _load("eviction_replay")
# Tight on purpose: 10 models (1-40 GiB) on 2 x 48 GiB GPUs (86 GiB usable), so every
# policy evicts.
SPEC = er.TraceSpec(seed=3, duration=1800.0, models=10, rate=0.4, phase_seconds=300.0)
INVENTORY = er.make_inventory(2, 48.0)


def _run(policy: str, spec: er.TraceSpec = SPEC, **kwargs):
    return er.simulate(er.make_trace(spec), INVENTORY, policy, **kwargs)


@pytest.mark.parametrize("policy", er.DEFAULT_POLICIES)
def test_every_request_is_accounted_for_memory_never_overflows_nothing_is_cut_off(policy):
    trace = er.make_trace(SPEC)
    out = er.simulate(trace, INVENTORY, policy)
    assert out.requests == len(trace.requests) > 100 and out.evictions > 0  # really under pressure
    assert out.served + out.refused == out.requests
    assert 0 < out.peak_fraction_of_usable <= 1.0
    assert out.cut_off == 0  # victims are drained: in-flight requests finish first
    assert out.loads >= len({name for _, name, _ in trace.requests}) - out.refused


def test_the_cut_off_counter_is_real():
    """With no time to drain, victims are unloaded under their requests and it shows."""
    long = dataclasses.replace(SPEC, service_base_s=20.0)
    assert _run("modelium", long, overrides={"drain_timeout_seconds": 0.001}).cut_off > 0


def test_the_scheduler_beats_lru_and_refuses_nothing():
    ours, lru = _run("modelium"), _run("lru")
    assert ours.refused == 0
    assert ours.loads < lru.loads and ours.mean_wait < lru.mean_wait


def test_alternating_pairs_spend_less_time_switching_than_first_come():
    spec = er.TraceSpec(kind="alternating", seed=1, duration=1800.0, models=4, rate=0.5, pair_gib=30.0)
    ours, fifo = _run("modelium", spec), _run("fifo", spec)
    assert ours.switching_share < fifo.switching_share and ours.loads < fifo.loads


def test_same_seed_same_numbers_other_seed_differs():
    assert _run("modelium").__dict__ == _run("modelium").__dict__
    assert _run("modelium").__dict__ != _run("modelium", dataclasses.replace(SPEC, seed=4)).__dict__


def test_cli_prints_a_row_per_policy(capsys):
    assert er.main(["--duration", "600", "--models", "6"]) == 0
    out = capsys.readouterr().out
    for policy in er.DEFAULT_POLICIES:
        assert f"| {policy} |" in out
