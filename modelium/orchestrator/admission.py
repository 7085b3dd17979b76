"""Admission: who may talk to a model now, and who waits in its queue.

Each model has a gate: at most ``limit`` requests in flight, and a bounded queue of
waiters ordered by priority (high, normal, low), first come first served within one. A
request is let in at once when the model is serving (``serving_instance`` names the
runtime instance), a slot is free and nobody is queued ahead of it; otherwise it queues
(or is refused with TooManyRequestsError when the queue is full) and waits, up to its
deadline, for :meth:`Admission.pump` to hand it a slot. Pumping happens whenever a slot
is released or the model becomes ready.

A slot is a :class:`Lease` on one runtime instance, so a re-dropped model's old version
can finish its in-flight requests (``in_flight(instance)``) while new ones go to the new
version. Admission knows nothing of model states beyond ``serving_instance``; it never
loads or evicts anything (the scheduler reads its queues as demand).
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from modelium.logs import current_request_id
from modelium.orchestrator.errors import LoadTimeoutError, TooManyRequestsError


class Priority(enum.IntEnum):
    HIGH = 0
    NORMAL = 1
    LOW = 2

    @classmethod
    def parse(cls, value: str | None) -> Priority:
        if value is None or value == "":
            return cls.NORMAL
        try:
            return cls[value.strip().upper()]
        except KeyError:
            raise ValueError(f"priority must be high, normal or low, got {value!r}") from None


@dataclass(order=True)
class Waiter:
    priority: int
    seq: int
    enqueued_at: float = field(compare=False)
    deadline: float = field(compare=False)
    future: asyncio.Future[Lease] = field(compare=False, repr=False)
    #: The request waiting (its X-Request-ID): a load it triggers logs under it.
    request_id: str | None = field(default=None, compare=False)

    @property
    def live(self) -> bool:
        return not self.future.done()


class Lease:
    """One admitted request: released exactly once (``release`` is idempotent)."""

    def __init__(self, admission: Admission, name: str, instance: str, waited: float) -> None:
        self._admission = admission
        self.name = name
        self.instance = instance
        self.waited_seconds = waited
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._admission._release(self)


class _Gate:
    def __init__(self, limit: int, queue_limit: int) -> None:
        self.limit = limit
        self.queue_limit = queue_limit
        self.queue: list[Waiter] = []
        self.in_flight: dict[str, int] = {}

    @property
    def busy(self) -> int:
        return sum(self.in_flight.values())

    def live_waiters(self) -> list[Waiter]:
        return [w for w in self.queue if w.live]


class Admission:
    """Per-model gates; see the module doc.

    ``serving_instance(name)``: the instance requests for ``name`` go to now, or None while
    it cannot take requests. ``on_change(name)``: called when a queue grows or a slot frees
    (the scheduler reads both). ``limit_of(name)`` and ``queue_limit_of(name)`` bound each
    gate: requests in flight, and requests waiting (for a slot, a load or room alike).
    """

    def __init__(
        self,
        *,
        serving_instance: Callable[[str], str | None],
        limit_of: Callable[[str], int],
        queue_limit_of: Callable[[str], int],
        clock: Callable[[], float],
        on_change: Callable[[str], None] = lambda name: None,
        on_wait: Callable[[str, float], None] = lambda name, seconds: None,
    ) -> None:
        self._serving_instance = serving_instance
        self._limit_of = limit_of
        self._queue_limit_of = queue_limit_of
        self._clock = clock
        self.on_change = on_change
        self._on_wait = on_wait
        self._gates: dict[str, _Gate] = {}
        self._seq = itertools.count()

    def _gate(self, name: str) -> _Gate:
        gate = self._gates.get(name)
        if gate is None:
            gate = self._gates[name] = _Gate(self._limit_of(name), self._queue_limit_of(name))
        return gate

    # --------------------------------------------------------------- requests

    async def acquire(self, name: str, *, deadline: float, priority: Priority = Priority.NORMAL,
                      retry_after: Callable[[], float] | None = None) -> Lease:
        """A slot on ``name``; waits in its queue until ``deadline`` (monotonic), then
        raises LoadTimeoutError. Cancellation (the client left) gives the slot back."""
        gate = self._gate(name)
        now = self._clock()
        instance = self._serving_instance(name)
        if instance is not None and gate.busy < gate.limit and not gate.live_waiters():
            gate.in_flight[instance] = gate.in_flight.get(instance, 0) + 1
            return Lease(self, name, instance, 0.0)
        waiting = gate.live_waiters()
        if len(waiting) >= gate.queue_limit:
            gate.queue = waiting
            heapq.heapify(gate.queue)
            raise TooManyRequestsError(
                f"model {name!r} is at its limit of {gate.limit} concurrent requests with "
                f"{len(waiting)} more waiting; retry later",
                retry_after=retry_after() if retry_after else None,
            )
        waiter = Waiter(int(priority), next(self._seq), now, deadline,
                        asyncio.get_running_loop().create_future(), current_request_id())
        heapq.heappush(gate.queue, waiter)
        self.on_change(name)
        try:
            await asyncio.wait({waiter.future}, timeout=max(0.0, deadline - now))
        except BaseException:
            self._abandon(waiter)
            raise
        if not waiter.future.done():
            waiter.future.cancel()
            self.on_change(name)
            raise LoadTimeoutError(
                f"model {name!r} did not become available within {deadline - now:.0f}s "
                "(waiting for it to load or for room on its device); retry shortly",
                retry_after=retry_after() if retry_after else None,
            )
        return waiter.future.result()  # a lease, or the error fail() set

    def _abandon(self, waiter: Waiter) -> None:
        """The waiting request went away: give back a slot it was granted meanwhile."""
        if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
            waiter.future.result().release()
        else:
            waiter.future.cancel()

    def pump(self, name: str) -> None:
        """Hand free slots to the best waiters while the model serves."""
        gate = self._gates.get(name)
        if gate is None:
            return
        instance = self._serving_instance(name)
        while instance is not None and gate.busy < gate.limit and gate.queue:
            waiter = heapq.heappop(gate.queue)
            if not waiter.live:
                continue
            gate.in_flight[instance] = gate.in_flight.get(instance, 0) + 1
            waited = self._clock() - waiter.enqueued_at
            waiter.future.set_result(Lease(self, name, instance, waited))
            self._on_wait(name, waited)

    def fail(self, name: str, error: Exception) -> None:
        """Every waiter of ``name`` gets ``error`` (the model failed, or can never fit)."""
        gate = self._gates.get(name)
        if gate is None:
            return
        for waiter in gate.queue:
            if waiter.live:
                waiter.future.set_exception(error)
        gate.queue = []

    def _release(self, lease: Lease) -> None:
        gate = self._gate(lease.name)
        count = gate.in_flight.get(lease.instance, 0) - 1
        if count > 0:
            gate.in_flight[lease.instance] = count
        else:
            gate.in_flight.pop(lease.instance, None)
        self.pump(lease.name)
        self.on_change(lease.name)

    # --------------------------------------------------------------- what the scheduler reads

    def queued(self, name: str) -> int:
        gate = self._gates.get(name)
        return len(gate.live_waiters()) if gate else 0

    def waiters(self, name: str) -> list[Waiter]:
        gate = self._gates.get(name)
        return gate.live_waiters() if gate else []

    def position(self, name: str, request_id: str) -> int | None:
        """1-based place in ``name``'s queue of the request ``request_id`` (None: not queued)."""
        ahead = sorted(self.waiters(name))
        return next((i + 1 for i, w in enumerate(ahead) if w.request_id == request_id), None)

    def depth_by_priority(self, name: str) -> dict[Priority, int]:
        """Live waiters of ``name`` per priority (every priority present, 0 when none)."""
        depth = dict.fromkeys(Priority, 0)
        for waiter in self.waiters(name):
            depth[Priority(waiter.priority)] += 1
        return depth

    def in_flight(self, name: str, instance: str | None = None) -> int:
        gate = self._gates.get(name)
        if gate is None:
            return 0
        return gate.busy if instance is None else gate.in_flight.get(instance, 0)

    def limit(self, name: str) -> int:
        return self._gate(name).limit

    def demanded(self) -> list[str]:
        """Models with at least one live waiter."""
        return [name for name, gate in self._gates.items() if any(w.live for w in gate.queue)]

    def forget(self, name: str) -> None:
        """Drop an idle gate (its model was removed); a busy one stays until drained."""
        gate = self._gates.get(name)
        if gate is not None and not gate.busy and not gate.live_waiters():
            del self._gates[name]
