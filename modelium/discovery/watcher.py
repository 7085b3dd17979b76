"""Watch ``incoming/`` and hand each completely copied drop to a callback, once.

Two sources say "look at this drop":

* watchdog's Observer (a thread). Its events only mark a drop as "changed, re-check soon";
  they are never trusted to say a copy finished, because inotify is silent on many bind
  mounts, NFS and SMB shares, and it can overflow.
* a periodic rescan of ``incoming/`` every ``rescan_interval_seconds``, which alone is
  enough to find every drop (``use_events=False`` runs on it only).

Drops that are settling are polled every ``poll_interval_seconds``; completeness itself is
decided by :mod:`modelium.discovery.settle`. Filesystem walks run in a worker thread so a
large drop never stalls the event loop the rest of Modelium shares, and each walk has an
entry and time budget.

Nothing in one drop may stall the others or shutdown: complete drops are handed over
concurrently (up to ``max_concurrent_drops`` at once, each in its own task), so a drop
whose analysis takes its whole time budget holds up no other; :meth:`DropWatcher.stop`
cancels the hand-overs in flight (the callback kills what it started) and returns at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from .settle import (
    DEFAULT_SETTLE_SECONDS,
    MAX_SCAN_ENTRIES,
    SettleTracker,
    Snapshot,
    is_hidden,
    list_drops,
    scan_drop,
)

log = logging.getLogger(__name__)

OnComplete = Callable[[str, Path], Awaitable[None]]

# How long stop() waits for cancelled hand-overs to unwind, and for watchdog to stop.
_CANCEL_GRACE_SECONDS = 0.5
_OBSERVER_STOP_WAIT_SECONDS = 0.5
# Events caused by merely reading (including our own scans) say nothing about copying.
_IGNORED_EVENT_TYPES = frozenset({"opened", "closed_no_write"})


class DropWatcher:
    """Finds complete drops in ``incoming_dir`` and awaits ``on_complete(entry_name, path)``.

    Hand-over rules:

    * Each drop is handed over exactly once. Up to ``max_concurrent_drops`` are handed
      over at once, never the same name twice at a time; a complete drop waits for a free
      slot. ``entry_name`` is the raw name under ``incoming/`` (a folder, or a loose file,
      link or special file); turning it into a model name is the callback's business.
    * The callback is expected to move the drop out of ``incoming/`` (file or quarantine).
      If it raises, the error is logged and the watcher carries on.
    * If the drop is still there after the callback (it raised, or chose to leave it),
      it is not handed over again until its contents change; then it settles again and is
      handed over anew. This gives a user a way to retry without a restart, and avoids a
      tight retry loop on a drop that fails the same way every time.
    * A drop that disappears while settling is forgotten; a new folder with the same name
      later is a new drop.
    * :meth:`stop` cancels the hand-overs still running: a callback must let cancellation
      end it (and stop what it started, e.g. an analysis subprocess).
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
        max_concurrent_drops: int = 4,
        max_scan_entries: int = MAX_SCAN_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrent_drops < 1:
            raise ValueError(f"max_concurrent_drops must be >= 1, got {max_concurrent_drops}")
        self._incoming = Path(incoming_dir)
        self._on_complete = on_complete
        self._rescan_interval = rescan_interval_seconds
        self._poll_interval = poll_interval_seconds
        self._use_events = use_events
        self._max_in_flight = max_concurrent_drops
        self._max_scan_entries = max_scan_entries
        self._tracker = SettleTracker(settle_seconds=settle_seconds, clock=clock)
        self._candidates: set[str] = set()  # drops to look at on the next tick
        self._handed: dict[str, Snapshot] = {}  # still present after hand-over, as left
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._run_task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Watch until :meth:`stop` is called or the task is cancelled."""
        if self._running:
            raise RuntimeError("DropWatcher.run() is already running")
        self._running = True
        self._stopped.clear()
        self._run_task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        self._incoming.mkdir(parents=True, exist_ok=True)
        observer = self._start_observer(loop) if self._use_events else None
        try:
            await self._watch(loop)
        except asyncio.CancelledError:
            if not self._stop_requested.is_set():
                raise
            # stop() cut a scan short: that is how it returns at once.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            stopping = loop.time()
            cancelled = len(self._in_flight)
            await self._cancel_in_flight()
            if observer is not None:
                await _stop_observer_soon(observer)
            log.info("drop watcher stopped in %.2f s (%d hand-overs cancelled)",
                     loop.time() - stopping, cancelled)
            self._running = False
            self._run_task = None
            self._stop_requested.clear()
            self._stopped.set()

    async def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
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

    async def stop(self) -> None:
        """Stop watching and cancel the hand-overs in flight; returns once :meth:`run` has
        finished, which takes no longer than the callbacks take to honour cancellation."""
        if not self._running:
            return
        self._stop_requested.set()
        self._wake.set()
        if self._run_task is not None and self._run_task is not asyncio.current_task():
            self._run_task.cancel()  # do not wait for a scan in progress
        await self._stopped.wait()

    @property
    def in_flight(self) -> frozenset[str]:
        """Names of the drops being handed over right now."""
        return frozenset(self._in_flight)

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
            if name in self._in_flight:
                self._candidates.discard(name)  # looked at again once its hand-over ends
                continue
            await self._check(name)

    async def _check(self, name: str) -> None:
        path = self._incoming / name
        scan = await asyncio.to_thread(scan_drop, path, max_entries=self._max_scan_entries)
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
        if self._tracker.observe(name, scan) and len(self._in_flight) < self._max_in_flight:
            self._hand_over(name, path)
        # else: complete but every slot is busy; it stays a candidate and is handed over
        # on a later tick

    def _hand_over(self, name: str, path: Path) -> None:
        self._candidates.discard(name)
        self._tracker.forget(name)
        log.info("drop %r is complete; handing it over", name)
        task = asyncio.create_task(self._handle(name, path), name=f"drop:{name}")
        self._in_flight[name] = task

    async def _handle(self, name: str, path: Path) -> None:
        try:
            try:
                await self._on_complete(name, path)
            except Exception:
                log.exception("handling drop %r failed; it is retried only if it changes", name)
            left = await asyncio.to_thread(scan_drop, path, max_entries=self._max_scan_entries)
            if left is not None:
                self._handed[name] = left.snapshot
        finally:
            self._in_flight.pop(name, None)
            self._candidates.add(name)  # a drop waiting for this slot is looked at now
            self._wake.set()

    async def _cancel_in_flight(self) -> None:
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            # Callbacks honour cancellation at their next await; one that does not is
            # left to finish on its own rather than hold up shutdown.
            _, pending = await asyncio.wait(tasks, timeout=_CANCEL_GRACE_SECONDS)
            for task in pending:
                log.warning("drop %s did not stop when cancelled; leaving it", task.get_name())

    def _forget(self, name: str) -> None:
        self._candidates.discard(name)
        self._handed.pop(name, None)
        self._tracker.forget(name)


class _EventForwarder(FileSystemEventHandler):
    """Runs on the observer thread; forwards "drop X changed" to the event loop, nothing more.

    Events are coalesced: names collect in a set and the loop is woken once per batch,
    not once per event. Moving a folder of 30 000 files in makes watchdog emit 30 000
    events; one ``call_soon_threadsafe`` each would fill the loop's self-pipe, which is
    also the pipe that carries signals to asyncio, and a SIGTERM arriving then is lost.
    """

    def __init__(
        self,
        incoming: Path,
        loop: asyncio.AbstractEventLoop,
        notify: Callable[[str], None],
    ) -> None:
        self._incoming = str(incoming)
        self._loop = loop
        self._notify = notify
        self._lock = threading.Lock()
        self._pending: set[str] = set()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED_EVENT_TYPES:
            return
        names = {name for raw in (event.src_path, getattr(event, "dest_path", "")) if raw
                 for name in [self._drop_name(os.fsdecode(raw))] if name is not None}
        if not names:
            return
        with self._lock:
            wake = not self._pending
            self._pending |= names
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:
                return  # loop closed while shutting down

    def _deliver(self) -> None:
        """Loop thread: hand every name collected since the last wake-up to ``notify``."""
        with self._lock:
            names, self._pending = self._pending, set()
        for name in sorted(names):
            self._notify(name)

    def _drop_name(self, path: str) -> str | None:
        """Top-level folder under incoming/ that ``path`` belongs to, or None to ignore."""
        rel = os.path.relpath(path, self._incoming)
        if rel == "." or rel.startswith(".."):
            return None
        top = rel.split(os.sep, 1)[0]
        return None if is_hidden(top) else top


async def _stop_observer_soon(observer: BaseObserver) -> None:
    """Stop the observer from a thread of its own: in the middle of a burst of events
    (a big folder just moved in) stopping watchdog takes a few hundred ms, which must not
    block the event loop, and shutdown waits for it only briefly (its threads are daemon
    threads)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def work() -> None:
        try:
            _stop_observer(observer)
        finally:
            try:
                loop.call_soon_threadsafe(finish)
            except RuntimeError:
                pass  # the loop is gone already

    threading.Thread(target=work, name="watchdog-stop", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), _OBSERVER_STOP_WAIT_SECONDS)
    except TimeoutError:
        log.warning("watchdog observer still stopping; not waiting for it")


def _stop_observer(observer: BaseObserver) -> None:
    observer.stop()
    observer.join(timeout=5)
    if observer.is_alive():
        log.warning("watchdog observer thread did not stop within 5 s")
