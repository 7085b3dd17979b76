"""What happens to a finished drop: validate, quarantine or file it, then (re)load it.

This is the callback the discovery watcher awaits for each complete folder in
``incoming/``. Validation happens *before* anything is moved into the repository, so a bad
drop never replaces a good model of the same name; a drop under an existing name is
staged and swapped in by the orchestrator's re-drop (:mod:`.replacement`), which keeps
the old version when the new one cannot load. The callback never waits for a load, so
one slow model never holds up the next drop or shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

from modelium.analysis import InvalidModelError, analyze_folder
from modelium.discovery import (
    file_into_repository,
    quarantine,
    sanitize_model_name,
    stage_in_repository,
    symlink_rejection_reason,
)
from modelium.orchestrator.orchestrator import Orchestrator

log = logging.getLogger(__name__)


class DropHandler:
    """Turns one complete drop into a registered model, or a quarantined folder."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator
        self._settings = orchestrator.settings
        self._metrics = orchestrator.metrics

    async def __call__(self, raw_name: str, drop: Path) -> None:
        try:
            name = sanitize_model_name(raw_name)
        except ValueError as exc:
            await self._reject(drop, _fallback_name(raw_name), str(exc), "bad-name")
            return
        reason = symlink_rejection_reason(drop)
        if reason is not None:
            await self._reject(drop, name, reason, "unsafe-symlink")
            return
        try:
            profile = await asyncio.to_thread(analyze_folder, drop, name)
        except InvalidModelError as exc:
            await self._reject(drop, name, str(exc), "invalid")
            return
        except OSError as exc:
            await self._reject(drop, name, f"unreadable: {exc}", "unreadable")
            return

        repository = self._settings.model_repository
        if name in self._orchestrator.table:
            staged = await asyncio.to_thread(stage_in_repository, drop, repository, name)
            self._metrics.count_drop("staged")
            log.info("re-drop %r of model %s staged at %s", raw_name, name, staged, extra={"model": name})
            self._orchestrator.replace_model(name, staged, dataclasses.replace(profile, path=str(staged)))
            return
        final = await asyncio.to_thread(file_into_repository, drop, repository, name)
        self._metrics.count_drop("filed")
        log.info("filed drop %r as model %s at %s", raw_name, name, final, extra={"model": name})
        await self._orchestrator.add_model(name, final, profile=dataclasses.replace(profile, path=str(final)))

    async def _reject(self, drop: Path, name: str, reason: str, reason_code: str) -> None:
        target = await asyncio.to_thread(quarantine, drop, self._settings.failed_dir, name, reason)
        self._metrics.count_drop("quarantined", reason_code)
        self._orchestrator.record_quarantine(name, reason, target)
        log.warning("quarantined drop %s -> %s: %s", drop.name, target, reason,
                    extra={"model": name, "reason_code": reason_code})


def _fallback_name(raw_name: str) -> str:
    """A folder name we can still quarantine under when the drop's name is unusable."""
    return "unnamed-" + str(abs(hash(raw_name)) % 10**8)
