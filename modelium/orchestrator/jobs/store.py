"""Jobs in the scheduler's SQLite database (``state_dir/modelium.db``), table ``jobs``.

One row per job: its JSON (``data``), the columns the queries need (state, times, the
idempotency key) and its result (``result``, JSON text, written once when it succeeded).
Every change is written before it is answered (WAL, ``synchronous=NORMAL``: a ``kill -9``
of the daemon loses nothing committed), so a job that was accepted is never lost.

Migration-safe: the table and indexes are created if missing, and columns a newer version
adds are added with ``ALTER TABLE ... ADD COLUMN`` to an existing database (an older
database keeps its rows; ``jobs_schema`` in ``meta`` records the version).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from modelium.orchestrator.jobs.records import Job, JobState

log = logging.getLogger(__name__)

JOBS_SCHEMA_VERSION = 1
#: Column -> type; a database missing one gets it added (the first version had them all).
COLUMNS = {
    "id": "TEXT PRIMARY KEY",
    "state": "TEXT NOT NULL DEFAULT 'queued'",
    "created": "REAL NOT NULL DEFAULT 0",
    "finished": "REAL",
    "idem_scope": "TEXT",
    "idem_key": "TEXT",
    "data": "TEXT NOT NULL DEFAULT '{}'",
    "result": "TEXT",
}
FINISHED = tuple(s.value for s in JobState if s.finished)


class JobStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute(f"CREATE TABLE IF NOT EXISTS jobs ({', '.join(f'{c} {t}' for c, t in COLUMNS.items())})")
        present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        for column, kind in COLUMNS.items():
            if column not in present:  # an older table: add what this version needs
                db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind.replace(' PRIMARY KEY', '')}")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_idem ON jobs (idem_scope, idem_key)")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, finished)")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('jobs_schema', ?)", (str(JOBS_SCHEMA_VERSION),))

    def save(self, job: Job) -> None:
        """Insert or update the job's row (never its result)."""
        self._db.execute(
            "INSERT INTO jobs (id, state, created, finished, idem_scope, idem_key, data) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET state = excluded.state, finished = excluded.finished, "
            "idem_key = excluded.idem_key, data = excluded.data",
            (job.id, job.state.value, job.created_at, job.finished_at, job.idempotency_scope,
             job.idempotency_key, json.dumps(job.to_row())))

    def save_result(self, job: Job, result_json: str) -> None:
        """The job (succeeded) and its result, in one statement."""
        self.save(job)
        self._db.execute("UPDATE jobs SET result = ? WHERE id = ?", (result_json, job.id))

    def get(self, job_id: str) -> Job | None:
        row = self._db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row[0]) if row else None

    def result(self, job_id: str) -> Any:
        row = self._db.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] is not None else None

    def by_key(self, scope: str, key: str, since: float) -> Job | None:
        """The newest job submitted with ``key`` by ``scope`` at or after ``since``."""
        row = self._db.execute(
            "SELECT data FROM jobs WHERE idem_scope = ? AND idem_key = ? AND created >= ? "
            "ORDER BY created DESC LIMIT 1", (scope, key, since)).fetchone()
        return _job(row[0]) if row else None

    def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first (what a restart must run)."""
        rows = self._db.execute(
            f"SELECT data FROM jobs WHERE state NOT IN ({', '.join('?' * len(FINISHED))}) ORDER BY created",
            FINISHED).fetchall()
        return [job for (data,) in rows if (job := _job(data)) is not None]

    def expire(self, finished_before: float, keep_at_most: int) -> int:
        """Delete finished jobs older than ``finished_before``, then the oldest beyond
        ``keep_at_most``; returns how many went."""
        marks = ", ".join("?" * len(FINISHED))
        gone = self._db.execute(f"DELETE FROM jobs WHERE state IN ({marks}) AND finished < ?",
                                (*FINISHED, finished_before)).rowcount
        gone += self._db.execute(
            f"DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN ({marks}) "
            "ORDER BY finished DESC LIMIT -1 OFFSET ?)", (*FINISHED, keep_at_most)).rowcount
        return gone

    def count(self, state: JobState | None = None) -> int:
        if state is None:
            return self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state.value,)).fetchone()[0]


def _job(data: str) -> Job | None:
    try:
        return Job.from_row(json.loads(data))
    except (ValueError, TypeError) as exc:
        log.warning("a stored job is unreadable (%s); skipped", exc)
        return None
