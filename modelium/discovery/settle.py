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
import stat
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
    """One look at a drop: its snapshot plus the two flags that override settling.

    ``truncated``: the look stopped at its entry or time budget (a drop of tens of
    thousands of files); the snapshot covers what was seen, which is enough to tell a
    copy in progress from a finished one, and such a drop is refused once handed over.
    """

    snapshot: Snapshot
    has_partial: bool
    ready: bool
    truncated: bool = False


# A settle scan looks at no more entries than this, and for no longer (seconds): the
# watcher scans settling drops every poll, so one huge drop must stay cheap. Keep the
# entry budget above the analysis' per-drop file limit, so a drop that is accepted is
# always seen whole.
MAX_SCAN_ENTRIES = 25_000
MAX_SCAN_SECONDS = 2.0


def list_drops(incoming: Path) -> dict[str, Path]:
    """Map entry name -> path for every candidate drop directly under ``incoming``.

    Every entry counts: folders, and also loose files, links and special files, which the
    drop callback turns into a model (a loose ``.onnx``) or a quarantine with a reason
    rather than silence. Hidden entries are left alone entirely so tools can stage there
    (e.g. ``rsync --temp-dir``, our own temp dirs).
    """
    try:
        names = os.listdir(incoming)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {name: incoming / name for name in names if not is_hidden(name)}


def scan_drop(drop: Path, *, max_entries: int = MAX_SCAN_ENTRIES,
              max_seconds: float = MAX_SCAN_SECONDS) -> DropScan | None:
    """Snapshot ``drop``; None if it is gone.

    A folder is walked (iteratively, never following links, within ``max_entries`` and
    ``max_seconds``); anything else (a loose file, a link, a FIFO) is its own snapshot,
    from ``lstat`` alone. Hidden files and folders inside a drop do not count towards the
    snapshot (tools keep caches and lock files there), but they are still checked for
    partial-file names so an rsync temp file ``.model.bin.a1B2c3`` keeps the drop open.
    Special files count by name only (their size and times say nothing about a copy, and
    a FIFO someone writes to must not keep a drop from settling). Files that vanish
    mid-walk are skipped: the resulting snapshot differs from the next one anyway, which
    restarts the settle timer.
    """
    try:
        top = os.lstat(drop)
    except OSError:
        return None
    if not stat.S_ISDIR(top.st_mode):
        size, mtime = (top.st_size, top.st_mtime_ns) if stat.S_ISREG(top.st_mode) else (0, 0)
        return DropScan(Snapshot(1, size, mtime, frozenset({drop.name})),
                        has_partial=is_partial_name(drop.name), ready=False)
    deadline = time.monotonic() + max_seconds
    file_count = total_size = newest = seen = 0
    names: set[str] = set()
    has_partial = truncated = False
    stack: list[tuple[str, str, bool]] = [(str(drop), "", False)]
    while stack and not truncated:
        folder, rel_dir, in_hidden_dir = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            continue  # vanished, or unreadable: the analysis will say so
        for entry in entries:
            seen += 1
            if seen > max_entries or time.monotonic() > deadline:
                truncated = True
                break
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            name = entry.name
            rel = name if not rel_dir else f"{rel_dir}/{name}"
            hidden = in_hidden_dir or is_hidden(name)
            if stat.S_ISDIR(st.st_mode):
                stack.append((entry.path, rel, hidden))
                continue
            if is_partial_name(name):
                has_partial = True
            if hidden:
                continue
            names.add(rel)
            file_count += 1
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                total_size += st.st_size
                newest = max(newest, st.st_mtime_ns)
    if not drop.is_dir():
        return None
    return DropScan(
        snapshot=Snapshot(file_count, total_size, newest, frozenset(names)),
        has_partial=has_partial,
        ready=os.path.isfile(drop / READY_MARKER),
        truncated=truncated,
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
