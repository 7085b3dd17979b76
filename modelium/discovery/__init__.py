"""Drop-folder discovery: notice model folders copied into ``incoming/`` and file them.

Discovery only decides *when* a drop is complete and *where* it goes; whether a drop is a
valid model is decided by the callback the orchestrator passes to :class:`DropWatcher`.
"""

from .entries import Entry, classify_entry
from .filing import (
    REASON_FILE,
    commit_staged,
    file_into_repository,
    find_unsafe_symlinks,
    quarantine,
    stage_in_repository,
    symlink_rejection_reason,
)
from .names import MAX_NAME_LENGTH, sanitize_model_name
from .settle import (
    DEFAULT_SETTLE_SECONDS,
    READY_MARKER,
    DropScan,
    SettleTracker,
    Snapshot,
    is_complete,
    is_partial_name,
    list_drops,
    scan_drop,
)
from .watcher import DropWatcher, OnComplete

__all__ = [
    "DEFAULT_SETTLE_SECONDS",
    "MAX_NAME_LENGTH",
    "READY_MARKER",
    "REASON_FILE",
    "DropScan",
    "DropWatcher",
    "Entry",
    "OnComplete",
    "SettleTracker",
    "Snapshot",
    "classify_entry",
    "commit_staged",
    "file_into_repository",
    "find_unsafe_symlinks",
    "is_complete",
    "is_partial_name",
    "list_drops",
    "quarantine",
    "sanitize_model_name",
    "scan_drop",
    "stage_in_repository",
    "symlink_rejection_reason",
]
