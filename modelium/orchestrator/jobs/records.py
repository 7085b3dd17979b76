"""What a job is: its request, its state, its timings, and how a failure is described.

A job is one request (``/predict``-style, or a non-streamed OpenAI body) accepted now and
run later by :class:`~modelium.orchestrator.jobs.runner.Jobs`. States::

    queued ──► running ──► succeeded | failed
       ▲          │
       └──────────┘  a retryable failure (429/503) or a daemon stopped while it ran
    queued | running ──► cancelled   (DELETE /jobs/ID)

Everything here is plain data so it can be written to SQLite as JSON and read back after
a restart (:mod:`.store`).
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from modelium.orchestrator.admission import Priority


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


#: Kinds of job: what the payload holds and which executor runs it.
PREDICT = "predict"  # payload: {"inputs": ..., "parameters": {...}}
OPENAI = "openai"  # payload: {"kind": "completions" | "chat.completions", "body": {...}}


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex


def fingerprint(model: str, kind: str, payload: dict[str, Any], priority: Priority) -> str:
    """What makes two submissions 'the same request' for an Idempotency-Key."""
    canonical = json.dumps({"model": model, "kind": kind, "payload": payload, "priority": priority.name},
                           sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Job:
    id: str
    model: str
    kind: str
    payload: dict[str, Any]
    priority: int  # a Priority value (0 high, 1 normal, 2 low)
    created_at: float  # wall-clock seconds (persisted: survives restarts)
    request_id: str | None = None  # the submitting request's X-Request-ID: its runs log under it
    idempotency_scope: str = ""  # whose key it is (a digest of the caller's API key, or "")
    idempotency_key: str | None = None
    fingerprint: str = ""
    state: JobState = JobState.QUEUED
    attempts: int = 0  # tries started (an interrupted one counts)
    started_at: float | None = None  # the first try
    finished_at: float | None = None
    not_before: float = 0.0  # wall clock: a retry's back-off
    error: dict[str, Any] | None = None  # the failure (or the last retryable one while queued)
    seq: int = field(default=0, compare=False)  # order of submission within one process

    @property
    def priority_name(self) -> str:
        return Priority(self.priority).name.lower()

    def to_row(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data.pop("seq")
        return data

    @classmethod
    def from_row(cls, data: dict[str, Any]) -> Job:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "seq"}
        known["state"] = JobState(known.get("state", "queued"))
        return cls(**known)


class JobFailure(Exception):
    """A try failed: ``status`` is what the same failure answers on the synchronous route,
    ``error`` its ``{"type", "message"}``; ``retryable`` failures (busy, unavailable) are
    tried again after ``retry_after`` seconds, up to ``jobs.max_attempts`` tries."""

    def __init__(self, status: int, error: dict[str, Any], *, retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(error.get("message", f"HTTP {status}"))
        self.status = status
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after
