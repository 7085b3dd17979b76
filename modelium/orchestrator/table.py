"""The model table and its state machine.

Every state change goes through :meth:`ModelTable.set_state`, which rejects transitions
that are not in :data:`TRANSITIONS` (a bug then fails loudly instead of leaving a record
half-way, e.g. LOADING with no load running) and tells the listeners (the state store
persists the record; metrics follow the states).

    ANALYZED/UNLOADED -> LOADING -> READY -> DRAINING -> UNLOADING -> UNLOADED
                                     READY/DRAINING -> UNLOADING -> PARKED -> LOADING (wake)
    LOADING -> FAILED (load error) | UNLOADED (given up: shutdown, rolled back)
    READY/DRAINING/PARKED -> UNLOADED (the runtime lost it) | FAILED (crash loop)
    DRAINING -> READY (the room it was draining for is no longer needed)
    FAILED/UNLOADED/ANALYZED -> ANALYZED (re-analysed: retry, re-drop)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from modelium.orchestrator.errors import UnknownModelError
from modelium.orchestrator.records import ModelRecord, ModelState

S = ModelState
TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    S.DISCOVERED: frozenset({S.ANALYZED, S.FAILED}),
    S.ANALYZED: frozenset({S.ANALYZED, S.LOADING, S.UNLOADED, S.FAILED}),
    S.UNLOADED: frozenset({S.UNLOADED, S.ANALYZED, S.LOADING, S.FAILED}),
    S.LOADING: frozenset({S.READY, S.UNLOADED, S.FAILED, S.UNLOADING}),
    S.READY: frozenset({S.DRAINING, S.UNLOADING, S.UNLOADED, S.FAILED}),
    S.DRAINING: frozenset({S.READY, S.UNLOADING, S.UNLOADED, S.FAILED}),
    S.UNLOADING: frozenset({S.UNLOADED, S.PARKED}),
    S.PARKED: frozenset({S.LOADING, S.UNLOADING, S.UNLOADED, S.FAILED}),
    S.FAILED: frozenset({S.FAILED, S.ANALYZED, S.UNLOADED}),
}

Listener = Callable[[ModelRecord, ModelState], None]


class IllegalTransition(RuntimeError):
    """A state change the lifecycle does not allow (a bug in the orchestrator)."""


class ModelTable:
    """name -> record, and the only way to change a record's state."""

    def __init__(self) -> None:
        self._records: dict[str, ModelRecord] = {}
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """``listener(record, old_state)`` runs after every change (also for ``touch``)."""
        self._listeners.append(listener)

    # --------------------------------------------------------------- access

    def get(self, name: str) -> ModelRecord:
        record = self._records.get(name)
        if record is None:
            raise UnknownModelError(name, sorted(self._records))
        return record

    def find(self, name: str) -> ModelRecord | None:
        return self._records.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[ModelRecord]:
        return iter([self._records[n] for n in sorted(self._records)])

    def __len__(self) -> int:
        return len(self._records)

    def in_states(self, *states: ModelState) -> list[ModelRecord]:
        return [r for r in self if r.state in states]

    # --------------------------------------------------------------- changes

    def put(self, record: ModelRecord) -> ModelRecord:
        """Add a record (or replace one that is not resident: a re-registered folder)."""
        self._records[record.name] = record
        self.touch(record, record.state)
        return record

    def set_state(self, record: ModelRecord, state: ModelState, reason: str | None = None) -> None:
        old = record.state
        if state not in TRANSITIONS[old]:
            raise IllegalTransition(f"{record.name}: {old.value} -> {state.value} is not allowed")
        record.state = state
        record.reason = reason
        record.updated_at = time.time()
        self.touch(record, old)

    def touch(self, record: ModelRecord, old: ModelState | None = None) -> None:
        """Tell the listeners a record changed without a state change (pin, costs...)."""
        for listener in self._listeners:
            listener(record, old if old is not None else record.state)
