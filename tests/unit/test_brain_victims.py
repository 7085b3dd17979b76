"""Victim choice by expected cost, the swap rule and idle unloads (pure functions)."""

from __future__ import annotations

import math

from modelium.brain import Demand, Resident, idle_unload_candidates, plan_room, reachable_slack, swap_verdict
from modelium.hardware import GIB, Device


def gpu(index: int, gib: float) -> Device:
    return Device(f"gpu:{index}", "gpu", index, int(gib * GIB), "simulated")


def res(name: str, gib: float, *, rate: float = 0.0, reload: float = 10.0, device: str = "gpu:0",
        pinned: bool = False, in_flight: int = 0, queued: int = 0, resident: float = 1000.0,
        idle: float = 0.0, last_used: float = 0.0, loaded_at: float = 0.0,
        freed: float | None = None) -> Resident:
    size = int(gib * GIB)
    return Resident(name=name, device_id=device, reserved_bytes=size,
                    freed_bytes=int(freed * GIB) if freed is not None else size, pinned=pinned,
                    in_flight=in_flight, queued=queued, rate=rate, reload_seconds=reload,
                    resident_seconds=resident, idle_seconds=idle, last_used=last_used,
                    loaded_at=loaded_at)


def plan(required_gib: float, residents, *, free_gib: float = 0.0, devices=None, **kwargs):
    devices = devices or [gpu(0, 10)]
    free = {d.id: int(free_gib * GIB) for d in devices}
    usable = {d.id: d.total_bytes for d in devices}
    return plan_room(int(required_gib * GIB), devices, free, usable, residents, **kwargs)


def test_cost_order_evicts_the_cheap_reload_not_the_expensive_one() -> None:
    # Same request rate: the encoder reloads in 0.2 s, the LLM in 40 s.
    encoder = res("encoder", 2, rate=0.1, reload=0.2, last_used=100)
    llm = res("llm", 8, rate=0.1, reload=40, last_used=1)
    chosen = plan(2, [encoder, llm])
    assert chosen is not None and chosen.victim_names == ("encoder",)
    # LRU would take the LLM (used longest ago).
    assert plan(2, [encoder, llm], order="lru").victim_names == ("llm",)


def test_a_far_busier_cheap_model_is_kept() -> None:
    hot = res("hot", 2, rate=50.0, reload=0.5)
    cold = res("cold", 2, rate=0.001, reload=30)
    assert plan(2, [hot, cold]).victim_names == ("cold",)


def test_just_enough_victims_and_unneeded_ones_put_back() -> None:
    small = res("small", 1, rate=0.0)
    big = res("big", 6, rate=0.001)
    chosen = plan(5, [small, big], free_gib=0.5)
    # small first by cost, but only big makes it fit: small is put back.
    assert chosen.victim_names == ("big",) and chosen.free_after == int(1.5 * GIB)


def test_pinned_never_and_protected_only_when_allowed() -> None:
    pinned = res("pinned", 4, pinned=True)
    fresh = res("fresh", 4, resident=5, in_flight=1)
    assert plan(4, [pinned, fresh], min_residency_seconds=30) is None
    idle_fresh = res("fresh", 4, resident=5)  # just loaded but nobody uses it: fair game
    assert plan(4, [pinned, idle_fresh], min_residency_seconds=30).victim_names == ("fresh",)
    chosen = plan(4, [pinned, fresh], min_residency_seconds=30, allow_protected=True)
    assert chosen.victim_names == ("fresh",) and chosen.protected == ("fresh",)


def test_cheapest_device_wins_and_too_small_devices_are_skipped() -> None:
    devices = [gpu(0, 10), gpu(1, 10), gpu(2, 2)]
    busy = res("busy", 5, rate=5, reload=20, device="gpu:0")
    quiet = res("quiet", 5, rate=0.0, reload=20, device="gpu:1")
    chosen = plan(5, [busy, quiet], devices=devices)
    assert chosen.device_id == "gpu:1" and chosen.victim_names == ("quiet",)


def test_parked_victim_frees_only_what_parking_gives_back() -> None:
    parkable = res("parkable", 8, freed=6.5)
    chosen = plan(7, [parkable], free_gib=0.0)
    assert chosen is None  # 6.5 GiB freed < 7 needed
    assert plan(6, [parkable]).victim_names == ("parkable",)


def _demand(**kwargs) -> Demand:
    base = dict(name="w", queued=1, debt_seconds=0.0, slack_seconds=300.0, ready_in_seconds=2.0)
    base.update(kwargs)
    return Demand(**base)


def test_idle_victims_are_swapped_at_once() -> None:
    chosen = plan(2, [res("idle", 2, rate=0.0)])
    assert swap_verdict(_demand(), chosen, amortization=1.0, urgency_margin_seconds=2).go


def test_hot_victim_waits_for_demand_to_amortise_then_swaps() -> None:
    chosen = plan(2, [res("hot", 2, rate=2.0, reload=5)])  # cost: 5 * (0 + 2*5) = 50 s
    assert math.isclose(chosen.cost_seconds, 50.0)
    early = swap_verdict(_demand(queued=2, debt_seconds=10), chosen, amortization=1.0,
                         urgency_margin_seconds=2)
    assert not early.go and math.isclose(early.recheck_in, 20.0)  # (50 - 10) / 2 requests
    late = swap_verdict(_demand(queued=2, debt_seconds=51), chosen, amortization=1.0,
                        urgency_margin_seconds=2)
    assert late.go


def test_urgency_overrides_protection_and_amortisation() -> None:
    chosen = plan(2, [res("fresh", 2, rate=9, resident=1, in_flight=1)], min_residency_seconds=30,
                  allow_protected=True)
    relaxed = swap_verdict(_demand(slack_seconds=100), chosen, amortization=1.0, urgency_margin_seconds=2)
    assert not relaxed.go and "minimum residency" in relaxed.reason
    assert math.isclose(relaxed.recheck_in, 29.0)  # its window ends before the deadline nears
    urgent = swap_verdict(_demand(slack_seconds=3.5), chosen, amortization=1.0, urgency_margin_seconds=2)
    assert urgent.go and "swapping now" in urgent.reason  # its in-flight request finishes first


def test_a_deadline_no_swap_can_meet_does_not_make_it_urgent() -> None:
    # The swap takes 12 s: a waiter with 0.1 s left is lost either way, one with 15 s is not.
    assert reachable_slack([100.1, 130.0], now=100.0, ready_in_seconds=12.0) == 30.0
    assert reachable_slack([100.1], now=100.0, ready_in_seconds=12.0) == math.inf
    assert reachable_slack([], now=100.0, ready_in_seconds=12.0) == math.inf
    assert reachable_slack([112.0], now=100.0, ready_in_seconds=12.0) == 12.0  # just in time still counts
    # So a protected model that just loaded is not evicted for a request it cannot save.
    chosen = plan(2, [res("fresh", 2, rate=9, resident=1, queued=1)], min_residency_seconds=30,
                  allow_protected=True)
    lost = _demand(slack_seconds=reachable_slack([100.1], now=100.0, ready_in_seconds=12.0),
                   ready_in_seconds=12.0)
    verdict = swap_verdict(lost, chosen, amortization=1.0, urgency_margin_seconds=2)
    assert not verdict.go and "minimum residency" in verdict.reason


def test_urgency_does_not_evict_a_fresh_model_with_its_own_queue() -> None:
    # Just loaded with 40 of its own requests queued: evicting it for another model's
    # urgent request would send those 40 back to wait for yet another swap.
    busy = plan(2, [res("fresh", 2, rate=9, resident=1, queued=40)], min_residency_seconds=30,
                allow_protected=True)
    assert busy.protected_queue() == 40
    verdict = swap_verdict(_demand(queued=100, slack_seconds=3.5), busy, amortization=1.0,
                           urgency_margin_seconds=2)
    assert not verdict.go and "40 request(s) of its own queued" in verdict.reason
    assert math.isclose(verdict.recheck_in, 29.0)  # decided again when its window ends
    # Outside its window the same victim is weighed as usual: urgency swaps.
    settled = plan(2, [res("old", 2, rate=9, resident=100, queued=40)], min_residency_seconds=30)
    assert settled.protected_queue() == 0
    assert swap_verdict(_demand(queued=3, slack_seconds=3.5), settled, amortization=1.0,
                        urgency_margin_seconds=2).go


def test_explicit_loads_do_not_wait() -> None:
    chosen = plan(2, [res("hot", 2, rate=100)])
    assert swap_verdict(_demand(explicit=True, queued=0), chosen, amortization=1.0,
                        urgency_margin_seconds=2).go


def test_idle_unload_candidates() -> None:
    residents = [res("quiet", 1, idle=700), res("quieter", 1, idle=900), res("recent", 1, idle=100),
                 res("popular", 1, idle=700), res("pinned", 1, idle=999, pinned=True),
                 res("busy", 1, idle=999, in_flight=1), res("never", 1, idle=999)]
    qps = {"popular": 5.0}
    out = idle_unload_candidates(residents, idle_after_seconds=lambda n: 0 if n == "never" else 600,
                                 min_qps=0.5, qps=lambda n: qps.get(n, 0.0))
    assert [r.name for r, _ in out] == ["quieter", "quiet"]
    assert "idle 900s >= 600s" in out[0][1] and "0.00 qps < 0.50" in out[0][1]
    no_qps_rule = idle_unload_candidates(residents[:1], idle_after_seconds=lambda n: 600, min_qps=0,
                                         qps=lambda n: 99.0)
    assert [r.name for r, _ in no_qps_rule] == ["quiet"]
