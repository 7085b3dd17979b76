"""Admission gates: limits, bounded priority queues, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelium.orchestrator import LoadTimeoutError, ModelFailedError, Priority, TooManyRequestsError
from modelium.orchestrator.admission import Admission


def admission(serving: dict[str, str | None], *, limit: int = 1, max_queued: int = 2) -> Admission:
    return Admission(serving_instance=lambda n: serving.get(n), limit_of=lambda n: limit,
                     queue_limit_of=lambda n: max_queued, clock=time.monotonic)


async def test_serving_model_admits_up_to_its_limit_then_queues_in_priority_order():
    serving = {"m": "m"}
    gate = admission(serving, limit=1, max_queued=3)
    first = await gate.acquire("m", deadline=time.monotonic() + 5)
    order: list[str] = []

    async def wait(label: str, priority: Priority) -> None:
        lease = await gate.acquire("m", deadline=time.monotonic() + 5, priority=priority)
        order.append(label)
        lease.release()

    tasks = [asyncio.ensure_future(wait(label, p)) for label, p in
             (("low", Priority.LOW), ("normal-1", Priority.NORMAL), ("high", Priority.HIGH))]
    await asyncio.sleep(0.01)
    assert gate.queued("m") == 3 and gate.in_flight("m") == 1
    with pytest.raises(TooManyRequestsError):
        await gate.acquire("m", deadline=time.monotonic() + 5)
    first.release()
    await asyncio.gather(*tasks)
    assert order == ["high", "normal-1", "low"]


async def test_waiting_ends_at_the_deadline_with_a_retry_after():
    gate = admission({"m": None})
    with pytest.raises(LoadTimeoutError) as info:
        await gate.acquire("m", deadline=time.monotonic() + 0.05, retry_after=lambda: 7.0)
    assert info.value.retry_after == 7.0 and gate.queued("m") == 0


async def test_a_model_becoming_ready_is_pumped_to_its_waiters():
    serving: dict[str, str | None] = {"m": None}
    gate = admission(serving, limit=2)
    waiters = [asyncio.ensure_future(gate.acquire("m", deadline=time.monotonic() + 5)) for _ in range(2)]
    await asyncio.sleep(0.01)
    serving["m"] = "m.REV2"
    gate.pump("m")
    leases = await asyncio.gather(*waiters)
    assert {lease.instance for lease in leases} == {"m.REV2"} and gate.in_flight("m", "m.REV2") == 2
    for lease in leases:
        lease.release()
        lease.release()  # idempotent
    assert gate.in_flight("m") == 0


async def test_a_cancelled_waiter_gives_back_a_slot_it_was_granted():
    serving: dict[str, str | None] = {"m": None}
    gate = admission(serving)
    waiter = asyncio.ensure_future(gate.acquire("m", deadline=time.monotonic() + 5))
    await asyncio.sleep(0.01)
    serving["m"] = "m"
    gate.pump("m")  # granted...
    waiter.cancel()  # ...but the client left before it ran
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.in_flight("m") == 0 and gate.queued("m") == 0


async def test_fail_hands_the_error_to_every_waiter():
    gate = admission({"m": None})
    waiters = [asyncio.ensure_future(gate.acquire("m", deadline=time.monotonic() + 5)) for _ in range(2)]
    await asyncio.sleep(0.01)
    gate.fail("m", ModelFailedError("model 'm' failed: needs 99 GiB"))
    for waiter in waiters:
        with pytest.raises(ModelFailedError, match="99 GiB"):
            await waiter


def test_priority_parsing():
    assert Priority.parse(None) is Priority.NORMAL and Priority.parse(" High ") is Priority.HIGH
    with pytest.raises(ValueError, match="high, normal or low"):
        Priority.parse("urgent")
