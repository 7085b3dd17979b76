"""bench/eviction_replay.py: invariants of the trace-replay simulator on a tiny trace."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "eviction_replay.py"


def _load():
    name = "eviction_replay"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


er = _load()

# Tight on purpose: 10 models on 2 x 40 GiB GPUs (72 GiB usable), so every policy evicts.
SPEC = er.TraceSpec(seed=3, duration=1800.0, models=10, rate=0.4, phase_seconds=300.0)
PARAMS = er.PolicyParams(auto_unload_after_seconds=120.0, keep_alive=120.0)


def _run(policy, spec=SPEC, params=PARAMS):
    return er.simulate(er.make_trace(spec), er.make_inventory(2, 40.0), policy, params)


@pytest.mark.parametrize("policy", er.POLICIES)
def test_memory_never_exceeds_usable_and_every_requested_model_cold_starts(policy):
    r = _run(policy)
    assert r.requests > 100 and r.evictions > 0  # the trace really is under pressure
    assert 0 < r.peak_fraction_of_usable <= 1.0
    usable = 2 * int(40 * er.GIB * PARAMS.max_utilization)
    assert 0 < r.mean_mem_bytes <= usable
    assert r.cold_starts >= len(r.loaded_models)
    # a model requested but never loaded can only be one whose every request was refused
    assert r.cold_starts >= r.distinct_requested - r.refused
    assert r.requests == len(r.added_latency) + r.refused + r.pending_at_end


def test_cold_starts_at_least_distinct_models_without_refusals():
    roomy = er.simulate(er.make_trace(SPEC), er.make_inventory(2, 80.0), "lru", PARAMS)
    assert roomy.refused == 0
    assert roomy.cold_starts >= roomy.distinct_requested == len(roomy.loaded_models)


def test_brain_never_evicts_a_busy_model():
    r = _run("modelium")
    assert r.evictions > 0 and r.idle_unloads > 0
    assert r.busy_evictions == 0


def test_busy_tracking_catches_a_policy_that_ignores_busy(monkeypatch):
    """The counter is real: a brain that is told nothing is busy evicts busy models."""
    real = er.plan_eviction

    def blind(required, device, reserved, candidates, **kw):
        return real(required, device, reserved,
                    [dataclasses.replace(c, busy=False) for c in candidates], **kw)

    monkeypatch.setattr(er, "plan_eviction", blind)
    busy_spec = dataclasses.replace(SPEC, service_base_s=20.0)  # long requests: often busy
    assert _run("modelium", spec=busy_spec).busy_evictions > 0


def test_same_seed_same_numbers_other_seed_differs():
    for policy in er.POLICIES:
        assert _run(policy).summary() == _run(policy).summary()
    other = dataclasses.replace(SPEC, seed=4)
    assert _run("modelium").summary() != _run("modelium", spec=other).summary()


def test_cli_prints_a_row_per_policy(capsys):
    assert er.main(["--duration", "600", "--models", "6"]) == 0
    out = capsys.readouterr().out
    for policy in er.POLICIES:
        assert f"| {policy} |" in out
