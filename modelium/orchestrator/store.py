"""The one persisted state: what the user had and what was learnt, in SQLite.

One row per model, written at every transition (the table's listener) and when pins,
wants or measured costs change, so a ``kill -9`` loses at most the request counts of the
last control-loop tick. On start the orchestrator restores from it: pinned stays pinned,
unloaded stays unloaded, failed stays failed with its reason, what was loaded reloads
first (most used first), measured load times and footprints are used from the first
placement on, and a folder whose signature did not change is not analysed again.

stdlib ``sqlite3`` in WAL mode with ``synchronous=NORMAL``: a commit is an append to the
log (tens of microseconds), readers never block the writer, and a crash of the process
(not of the machine) loses nothing committed. The row is JSON so adding a field needs no
migration; ``schema`` in the ``meta`` table is for the day one does.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from modelium.analysis.profile import ModelProfile
from modelium.orchestrator.records import RESIDENT_STATES, Costs, ModelRecord, ModelState, Wanted

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "modelium.db"


class StateStore:
    """Rows of model state under ``state_dir`` (or in memory with ``path=None``)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path is not None else ":memory:",
                                   isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, "
                         "data TEXT NOT NULL, updated REAL NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        self._signatures: dict[str, str | None] = {}

    @property
    def connection(self) -> sqlite3.Connection:
        """The database, for the other tables kept in it (jobs: :mod:`.jobs.store`)."""
        return self._db

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> StateStore:
        return cls(Path(state_dir) / DB_NAME)

    def load(self) -> dict[str, dict[str, Any]]:
        rows = self._db.execute("SELECT name, data FROM models").fetchall()
        out: dict[str, dict[str, Any]] = {}
        for name, data in rows:
            try:
                out[name] = json.loads(data)
            except ValueError:
                log.warning("state of %s is unreadable; it starts afresh", name)
                continue
            self._signatures[name] = out[name].get("signature")
        return out

    def set_signature(self, name: str, signature: str | None) -> None:
        """The folder signature the record's profile was analysed from (saved with it)."""
        self._signatures[name] = signature

    def save(self, record: ModelRecord) -> None:
        data = snapshot(record)
        data["signature"] = self._signatures.get(record.name)
        self._db.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?)",
                         (record.name, json.dumps(data), time.time()))

    def delete(self, name: str) -> None:
        self._signatures.pop(name, None)
        self._db.execute("DELETE FROM models WHERE name = ?", (name,))

    def close(self) -> None:
        self._db.close()


def snapshot(record: ModelRecord) -> dict[str, Any]:
    """The persisted part of a record."""
    return {
        "path": str(record.path),
        "state": record.state.value,
        "resident": record.state in RESIDENT_STATES,
        "reason": record.reason,
        "pinned": record.pinned,
        "wanted": record.wanted.value,
        "revision": record.revision,
        "runtime": record.runtime,
        "device": record.device,
        "profile": record.profile.to_dict() if record.profile else None,
        "costs": record.costs.to_dict(),
        "requests": record.usage.requests,
        "last_used_wall": record.usage.last_used_wall,
        "load_count": record.load_count,
    }


def restore_into(record: ModelRecord, row: dict[str, Any]) -> None:
    """Apply what the user had (pins, wants, learnt costs) to a freshly registered record.
    The state itself is decided by the caller (a failed model stays failed, the rest
    start unloaded and are loaded by the restore plan)."""
    record.pinned = bool(row.get("pinned", record.pinned))
    try:
        record.wanted = Wanted(row.get("wanted", "auto"))
    except ValueError:
        record.wanted = Wanted.AUTO
    record.revision = int(row.get("revision") or 1)
    record.runtime = row.get("runtime")  # chosen again at the next load (the same, unless config changed)
    costs = row.get("costs") or {}
    record.costs = Costs(**{k: costs.get(k) for k in asdict(Costs()) if k in costs})
    record.usage.requests = int(row.get("requests") or 0)
    record.usage.last_used_wall = row.get("last_used_wall")
    record.load_count = int(row.get("load_count") or 0)


def cached_profile(row: dict[str, Any] | None, signature: str) -> ModelProfile | None:
    """The profile analysed last time, when the folder has not changed since."""
    if not row or row.get("signature") != signature or not row.get("profile"):
        return None
    data = dict(row["profile"])
    data["warnings"] = tuple(data.get("warnings") or ())
    try:
        return ModelProfile(**data)
    except TypeError:  # the profile's fields changed between versions: analyse again
        return None


def was_failed(row: dict[str, Any] | None) -> str | None:
    """The reason a model was failed with, if it was."""
    if row and row.get("state") == ModelState.FAILED.value:
        return row.get("reason") or "failed before the restart"
    return None
