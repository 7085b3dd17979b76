"""What happens to a finished drop: validate, quarantine or file it, then (re)load it.

This is the callback the discovery watcher awaits for each complete entry of
``incoming/``. What the entry is decides first (:mod:`modelium.discovery.entries`: a
folder or a loose ``.onnx`` is analysed; links, special files and other loose files are
quarantined with a reason). With ``discovery.allow_code: false`` a drop that carries code
(:mod:`.trust`) is quarantined too. Validation happens *before* anything is moved into the
repository, so a bad drop never replaces a good model of the same name; a drop under an
existing name is staged and swapped in by the orchestrator's re-drop
(:mod:`.replacement`), which keeps the old version when the new one cannot load.

Nothing in a drop is read in the daemon: the analysis runs in a child process with a
time budget (:mod:`modelium.analysis.isolated`), killed on timeout or when the watcher
cancels the hand-over at shutdown. The callback never waits for a load, so one slow
model never holds up the next drop or shutdown. The watcher hands over several drops at
once; drops that become the same model name are handled one after the other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from modelium.analysis import InvalidModelError, ModelProfile
from modelium.analysis.contents import MAX_FILES_PER_DROP
from modelium.analysis.isolated import DEFAULT_TIMEOUT_SECONDS, analyze_isolated
from modelium.discovery import (
    classify_entry,
    file_into_repository,
    quarantine,
    sanitize_model_name,
    stage_in_repository,
)
from modelium.discovery.entries import REJECT
from modelium.orchestrator.orchestrator import Orchestrator
from modelium.orchestrator.trust import dropped_code

log = logging.getLogger(__name__)

Analyze = Callable[[Path, str], Awaitable[ModelProfile]]


class DropHandler:
    """Turns one complete drop into a registered model, or a quarantined folder.

    ``analysis_timeout_seconds`` bounds one drop's analysis (its child is killed after);
    ``max_files_per_drop`` refuses drops with more entries. ``analyze`` replaces the
    isolated analysis (tests).
    """

    def __init__(
        self,
        orchestrator: Orchestrator,
        *,
        analysis_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_files_per_drop: int = MAX_FILES_PER_DROP,
        analyze: Analyze | None = None,
    ) -> None:
        self._orchestrator = orchestrator
        self._settings = orchestrator.settings
        self._metrics = orchestrator.metrics
        self._analyze: Analyze = analyze or (
            lambda path, name: analyze_isolated(path, name, timeout=analysis_timeout_seconds,
                                                max_files=max_files_per_drop))
        self._names: dict[str, asyncio.Lock] = {}

    async def __call__(self, raw_name: str, drop: Path) -> None:
        entry = classify_entry(drop)
        if entry.kind == REJECT:
            await self._reject(drop, _quarantine_name(raw_name), entry.reason, entry.reason_code)
            return
        try:
            name = sanitize_model_name(entry.model_name_source)
        except ValueError as exc:
            await self._reject(drop, _quarantine_name(raw_name), str(exc), "bad-name")
            return
        async with self._names.setdefault(name, asyncio.Lock()):  # one small lock per name
            await self._handle(raw_name, drop, name)

    async def _handle(self, raw_name: str, drop: Path, name: str) -> None:
        try:
            profile = await self._analyze(drop, name)
        except InvalidModelError as exc:
            await self._reject(drop, name, str(exc), "invalid")
            return
        except OSError as exc:
            await self._reject(drop, name, f"unreadable: {exc}", "unreadable")
            return
        if not self._settings.discovery.allow_code:
            code = await asyncio.to_thread(dropped_code, drop)
            if code:
                await self._reject(drop, name, "the drop carries code and discovery.allow_code is false: "
                                   + "; ".join(code[:10]), "code")
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
        # A name that is not UTF-8 reaches us surrogate-escaped; logs, REASON.txt and the
        # JSON of GET /status must not choke on it.
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
        try:
            target = await asyncio.to_thread(quarantine, drop, self._settings.failed_dir, name, reason)
        except OSError as exc:  # still a reason for the user, in /status and the decisions
            log.exception("could not quarantine drop %s", drop)
            reason = f"{reason} (it could not be moved to the failed folder: {exc}; it stays where it is)"
            target = drop
        self._metrics.count_drop("quarantined", reason_code)
        self._orchestrator.record_quarantine(name, reason, target)
        log.warning("quarantined drop %s -> %s: %s", drop.name, target, reason,
                    extra={"model": name, "reason_code": reason_code})


def _quarantine_name(raw_name: str) -> str:
    """The folder name a rejected entry is quarantined under: its sanitized name (a loose
    ``notes.txt`` keeps its extension), or a stable fallback when nothing usable is left."""
    try:
        return sanitize_model_name(raw_name)
    except ValueError:
        return "unnamed-" + hashlib.sha1(raw_name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
