"""Watch ``incoming/`` and hand each completely copied drop to a callback, once.

Two sources say "look at this drop":

* watchdog's Observer (a thread). Its events only mark a drop as "changed, re-check soon";
  they are never trusted to say a copy finished, because inotify is silent on many bind
  mounts, NFS and SMB shares, and it can overflow.
* a periodic rescan of ``incoming/`` every ``rescan_interval_seconds``, which alone is
  enough to find every drop (``use_events=False`` runs on it only).

Drops that are settling are polled every ``poll_interval_seconds``; completeness itself is
decided by :mod:`modelium.discovery.settle`. Filesystem walks run in a worker thread so a
large drop never stalls the event loop the rest of Modelium shares.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from .settle import (
    DEFAULT_SETTLE_SECONDS,
    SettleTracker,
    Snapshot,
    is_hidden,
    list_drops,
    scan_drop,
)

log = logging.getLogger(__name__)

OnComplete = Callable[[str, Path], Awaitable[None]]

# Events caused by merely reading (including our own scans) say nothing about copying.
_IGNORED_EVENT_TYPES = frozenset({"opened", "closed_no_write"})


class DropWatcher:
    """Finds complete drops in ``incoming_dir`` and awaits ``on_complete(folder_name, path)``.

    Hand-over rules:

    * Each drop is handed over exactly once, and drops are handed over one at a time, so
      the callback need not be re-entrant. ``folder_name`` is the raw folder name; turning it
      into a model name is the callback's business.
    * The callback is expected to move the drop out of ``incoming/`` (file or quarantine).
      If it raises, the error is logged and the watcher carries on.
    * If the folder is still there after the callback (it raised, or chose to leave it),
      it is not handed over again until its contents change; then it settles again and is
      handed over anew. This gives a user a way to retry without a restart, and avoids a
      tight retry loop on a drop that fails the same way every time.
    * A drop that disappears while settling is forgotten; a new folder with the same name
      later is a new drop.
    """

    def __init__(
        self,
        incoming_dir: Path,
        on_complete: OnComplete,
        *,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        rescan_interval_seconds: float = 5.0,
        poll_interval_seconds: float = 0.5,
        use_events: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._incoming = Path(incoming_dir)
        self._on_complete = on_complete
        self._rescan_interval = rescan_interval_seconds
        self._poll_interval = poll_interval_seconds
        self._use_events = use_events
        self._tracker = SettleTracker(settle_seconds=settle_seconds, clock=clock)
        self._candidates: set[str] = set()  # drops to look at on the next tick
        self._handed: dict[str, Snapshot] = {}  # still present after hand-over, as left
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False

    async def run(self) -> None:
        """Watch until :meth:`stop` is called or the task is cancelled."""
        if self._running:
            raise RuntimeError("DropWatcher.run() is already running")
        self._running = True
        self._stopped.clear()
        loop = asyncio.get_running_loop()
        self._incoming.mkdir(parents=True, exist_ok=True)
        observer = self._start_observer(loop) if self._use_events else None
        try:
            next_rescan = loop.time()
            while not self._stop_requested.is_set():
                if loop.time() >= next_rescan:
                    await self._rescan()
                    next_rescan = loop.time() + self._rescan_interval
                await self._check_candidates()
                until_rescan = max(0.0, next_rescan - loop.time())
                if self._candidates:
                    # Settling drops are polled at a fixed tick; events may not cut it short,
                    # or a busy copy would make us re-walk the drop on every write.
                    waiter, timeout = self._stop_requested, min(self._poll_interval, until_rescan)
                else:
                    self._wake.clear()
                    waiter, timeout = self._wake, until_rescan
                try:
                    await asyncio.wait_for(waiter.wait(), timeout=timeout)
                except TimeoutError:
                    pass
        finally:
            if observer is not None:
                _stop_observer(observer)
            self._running = False
            self._stop_requested.clear()
            self._stopped.set()

    async def stop(self) -> None:
        """Ask :meth:`run` to finish and wait until it has (including a running callback)."""
        if not self._running:
            return
        self._stop_requested.set()
        self._wake.set()
        await self._stopped.wait()

    # -- internals ---------------------------------------------------------------------

    def _mark_changed(self, name: str) -> None:
        """Loop-thread side of a filesystem event: look at ``name`` soon."""
        self._candidates.add(name)
        self._wake.set()

    def _start_observer(self, loop: asyncio.AbstractEventLoop) -> BaseObserver | None:
        handler = _EventForwarder(self._incoming, loop, self._mark_changed)
        observer = Observer()
        try:
            observer.schedule(handler, str(self._incoming), recursive=True)
            observer.start()
        except OSError:
            # e.g. inotify watch limit reached; rescanning still finds everything.
            log.warning("filesystem events unavailable for %s; relying on rescans",
                        self._incoming, exc_info=True)
            return None
        return observer

    async def _rescan(self) -> None:
        drops = await asyncio.to_thread(list_drops, self._incoming)
        for name in set(self._handed) - drops.keys():
            del self._handed[name]
        # Handed-over drops are included so that a change to one is noticed without events.
        self._candidates.update(drops)

    async def _check_candidates(self) -> None:
        for name in sorted(self._candidates):
            if self._stop_requested.is_set():
                return
            await self._check(name)

    async def _check(self, name: str) -> None:
        path = self._incoming / name
        scan = await asyncio.to_thread(scan_drop, path)
        if scan is None:
            self._forget(name)
            return
        handed = self._handed.get(name)
        if handed is not None:
            if scan.snapshot == handed:
                self._candidates.discard(name)
                return
            log.info("drop %r changed after it was handed over; treating it as a new drop", name)
            del self._handed[name]
            self._tracker.forget(name)
        if self._tracker.observe(name, scan):
            await self._hand_over(name, path)

    async def _hand_over(self, name: str, path: Path) -> None:
        self._candidates.discard(name)
        self._tracker.forget(name)
        log.info("drop %r is complete; handing it over", name)
        try:
            await self._on_complete(name, path)
        except Exception:
            log.exception("handling drop %r failed; it is retried only if it changes", name)
        left = await asyncio.to_thread(scan_drop, path)
        if left is not None:
            self._handed[name] = left.snapshot

    def _forget(self, name: str) -> None:
        self._candidates.discard(name)
        self._handed.pop(name, None)
        self._tracker.forget(name)


class _EventForwarder(FileSystemEventHandler):
    """Runs on the observer thread; forwards "drop X changed" to the event loop, nothing more."""

    def __init__(
        self,
        incoming: Path,
        loop: asyncio.AbstractEventLoop,
        notify: Callable[[str], None],
    ) -> None:
        self._incoming = str(incoming)
        self._loop = loop
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED_EVENT_TYPES:
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            name = self._drop_name(os.fsdecode(raw)) if raw else None
            if name is None:
                continue
            try:
                self._loop.call_soon_threadsafe(self._notify, name)
            except RuntimeError:
                return  # loop closed while shutting down

    def _drop_name(self, path: str) -> str | None:
        """Top-level folder under incoming/ that ``path`` belongs to, or None to ignore."""
        rel = os.path.relpath(path, self._incoming)
        if rel == "." or rel.startswith(".."):
            return None
        top = rel.split(os.sep, 1)[0]
        return None if is_hidden(top) else top


def _stop_observer(observer: BaseObserver) -> None:
    observer.stop()
    observer.join(timeout=5)
    if observer.is_alive():
        log.warning("watchdog observer thread did not stop within 5 s")
