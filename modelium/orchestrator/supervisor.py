"""Honest supervision: a model is lost only when its runtime knows it is gone.

Each control-loop tick compares what the table believes is live with what every runtime
reports. The snapshot of load generations is taken *before* awaiting the runtime: a
model that finished loading (or was reloaded) while the runtime answered has a newer
generation and is not judged on a stale answer (review finding 2a). A runtime that cannot
answer raises RuntimeUnavailableError and its models are *unknown* this tick, never lost
(2b). What counts as a crash is decided by the managers from process exits and status
codes only; a client's bad request is a 4xx for that client and nothing more.

A request that finds its model gone (ModelNotLoadedError) does not declare the crash
itself either: :meth:`Supervisor.confirm_lost` asks the runtime, and only its "not there"
makes it a crash.
"""

from __future__ import annotations

import logging

from modelium.orchestrator.context import Context
from modelium.orchestrator.records import LIVE_STATES, ModelRecord
from modelium.orchestrator.scheduler import Scheduler
from modelium.runtimes.base import RuntimeUnavailableError

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, ctx: Context, scheduler: Scheduler) -> None:
        self.ctx = ctx
        self.scheduler = scheduler
        self.unknown: dict[str, str] = {}  # runtime -> why its models are unknown now

    async def reconcile(self) -> None:
        """One pass over every runtime; see the module doc."""
        for runtime, manager in self.ctx.managers.items():
            snapshot = self._snapshot(runtime)
            if not snapshot:
                continue
            try:
                live = await manager.loaded_models()
            except RuntimeUnavailableError as exc:
                self._note_unknown(runtime, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - same: unknown, not gone
                self._note_unknown(runtime, f"{type(exc).__name__}: {exc}")
                continue
            if self.unknown.pop(runtime, None) is not None:
                log.info("%s answers again; its models are checked again", runtime)
            for record, generation in snapshot:
                if record.instance in live or not self._unchanged(record, generation):
                    continue
                why = manager.exit_reason(record.instance) or (
                    f"{runtime} no longer serves it (crashed or removed)")
                self.scheduler.on_lost(record, why)

    async def confirm_lost(self, record: ModelRecord, generation: int, hint: str) -> bool:
        """A request saw ``record`` gone. True (try again) when its runtime confirms it no
        longer has the model (handled as a crash here) or when it was already reloaded or
        handled meanwhile; False when the runtime still has it or cannot tell."""
        manager = self.ctx.managers.get(record.runtime or "")
        if manager is None:
            return False
        if not self._unchanged(record, generation):
            return True
        instance = record.instance
        try:
            live = await manager.loaded_models()
        except Exception as exc:  # noqa: BLE001 - cannot tell: not a crash
            log.warning("could not confirm that %s is gone (%s): %s", record.name, hint, exc)
            return False
        if not self._unchanged(record, generation):
            return True
        if instance in live:
            return False
        self.scheduler.on_lost(record, manager.exit_reason(instance) or hint)
        return True

    def _snapshot(self, runtime: str) -> list[tuple[ModelRecord, int]]:
        return [(r, r.generation) for r in self.ctx.table
                if r.runtime == runtime and r.state in LIVE_STATES]

    def _unchanged(self, record: ModelRecord, generation: int) -> bool:
        return (self.ctx.table.find(record.name) is record and record.generation == generation
                and record.state in LIVE_STATES)

    def _note_unknown(self, runtime: str, why: str) -> None:
        if self.unknown.get(runtime) != why:
            log.warning("%s cannot tell which models it serves (%s); not treating them as lost",
                        runtime, why)
            self.ctx.decide(runtime, "reconcile", "unknown", f"{runtime} did not answer: {why}")
        self.unknown[runtime] = why
