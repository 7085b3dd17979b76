"""Decide when a drop in ``incoming/`` has finished being copied.

There is no portable "copy finished" signal: ``cp``, ``rsync``, Samba and browsers all write
files one by one, sometimes with pauses. So a drop counts as complete when either

* the user (or their tooling) put a ``.ready`` marker file at its top, or
* its snapshot (file count, total size, newest mtime, set of names) has not changed for
  ``settle_seconds``,

and in both cases only if no file in it looks like a partial download or a copy tool's temp
file. Everything here is pure (filesystem reads plus an injectable clock) so it can be tested
without the watcher.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

READY_MARKER = ".ready"
DEFAULT_SETTLE_SECONDS = 2.0

# ".incomplete" is what huggingface-cli uses for blobs still downloading.
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".incomplete")
# rsync writes "NAME" as ".NAME.XXXXXX" (mkstemp-style random suffix) and renames at the end.
_RSYNC_TEMP = re.compile(r"^\..+\.[A-Za-z0-9]{6}$")


def is_partial_name(name: str) -> bool:
    """True for file names that mean "a copy is still in progress" (editor/rsync/browser temps)."""
    if name == READY_MARKER:
        return False
    lowered = name.lower()
    return (
        lowered.endswith(PARTIAL_SUFFIXES)
        or name.startswith(".~")
        or name.endswith("~")
        or _RSYNC_TEMP.match(name) is not None
    )


def is_hidden(name: str) -> bool:
    return name.startswith(".")


@dataclass(frozen=True)
class Snapshot:
    """What a drop looks like right now; two equal snapshots mean "nothing happened between"."""

    file_count: int
    total_size: int
    newest_mtime_ns: int
    names: frozenset[str]


@dataclass(frozen=True)
class DropScan:
    """One look at a drop: its snapshot plus the two flags that override settling."""

    snapshot: Snapshot
    has_partial: bool
    ready: bool


def list_drops(incoming: Path) -> dict[str, Path]:
    """Map folder name -> path for every candidate drop directly under ``incoming``.

    Only real directories count: plain files and symlinks at the top level are ignored (a
    symlinked folder would be filed as a link, not as the model), and hidden entries are left
    alone entirely so tools can stage there (e.g. ``rsync --temp-dir``, our own temp dirs).
    """
    drops: dict[str, Path] = {}
    try:
        entries = list(os.scandir(incoming))
    except FileNotFoundError:
        return drops
    for entry in entries:
        if is_hidden(entry.name):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                drops[entry.name] = Path(entry.path)
        except OSError:
            continue  # vanished between listing and stat
    return drops


def scan_drop(drop: Path) -> DropScan | None:
    """Snapshot ``drop``; None if it is gone (or is no longer a directory).

    Hidden files and folders inside the drop do not count towards the snapshot (tools keep
    caches and lock files there), but they are still checked for partial-file names so an
    rsync temp file ``.model.bin.a1B2c3`` keeps the drop open. Files that vanish mid-walk
    are skipped: the resulting snapshot differs from the next one anyway, which restarts the
    settle timer.
    """
    if not drop.is_dir() or drop.is_symlink():
        return None
    file_count = 0
    total_size = 0
    newest = 0
    names: set[str] = set()
    has_partial = False
    for dirpath, dirnames, filenames in os.walk(drop, followlinks=False):
        rel_dir = os.path.relpath(dirpath, drop)
        in_hidden_dir = rel_dir != "." and any(is_hidden(p) for p in Path(rel_dir).parts)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            if is_partial_name(name):
                has_partial = True
            if in_hidden_dir or is_hidden(name):
                continue
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            names.add(rel)
            file_count += 1
            total_size += st.st_size
            newest = max(newest, st.st_mtime_ns)
    if not drop.is_dir():
        return None
    return DropScan(
        snapshot=Snapshot(file_count, total_size, newest, frozenset(names)),
        has_partial=has_partial,
        ready=(drop / READY_MARKER).is_file(),
    )


def is_complete(scan: DropScan, stable_for: float, settle_seconds: float) -> bool:
    """Apply the completeness rules to one scan.

    An empty drop never completes by settling alone: ``mkdir`` often comes well before the
    first byte is copied. With a ``.ready`` marker it completes anyway and validation will
    reject it, which tells the user something went wrong.
    """
    if scan.has_partial:
        return False
    if scan.ready:
        return True
    if scan.snapshot.file_count == 0:
        return False
    return stable_for >= settle_seconds


@dataclass
class _Seen:
    snapshot: Snapshot
    unchanged_since: float


@dataclass
class SettleTracker:
    """Remembers each drop's last snapshot and since when it has been unchanged."""

    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    clock: Callable[[], float] = time.monotonic
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def observe(self, name: str, scan: DropScan) -> bool:
        """Record a new scan of drop ``name`` and say whether it is complete now.

        The first observation of a drop always starts its settle timer, so a drop is never
        declared settled on the strength of a single look.
        """
        now = self.clock()
        seen = self._seen.get(name)
        if seen is None or seen.snapshot != scan.snapshot:
            self._seen[name] = seen = _Seen(scan.snapshot, now)
        return is_complete(scan, now - seen.unchanged_since, self.settle_seconds)

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._seen
