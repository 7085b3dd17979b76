"""The ``jobs:`` section: asynchronous jobs (``POST /jobs``), how many run at once, how
long keys and results are kept, and how large a result may be."""

from __future__ import annotations

from pydantic import Field

from modelium.config.base import Section


class JobsSettings(Section):
    """Jobs are requests run in the background, persisted in ``state_dir/modelium.db``."""

    max_running: int = Field(
        default=4, ge=1,
        description="Jobs running at once, in all (each holds one request slot of its model "
        "while it runs, so synchronous traffic keeps the other slots).",
    )
    max_running_per_model: int = Field(
        default=1, ge=1,
        description="Jobs running at once for one model.",
    )
    max_pending: int = Field(
        default=1000, ge=1,
        description="Jobs accepted but not finished (queued or running); more get HTTP 429.",
    )
    idempotency_seconds: float = Field(
        default=86400.0, gt=0,
        description="How long an Idempotency-Key maps to its job (while the job is kept).",
    )
    result_ttl_seconds: float = Field(
        default=86400.0, gt=0,
        description="How long a finished job and its result are kept after it finished.",
    )
    max_finished: int = Field(
        default=10000, ge=1,
        description="Finished jobs kept at most (the oldest are deleted first).",
    )
    max_result_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024,
        description="Largest result (JSON bytes) a job may store; a larger one fails the job.",
    )
    max_attempts: int = Field(
        default=3, ge=1,
        description="Tries of one job when the model is busy or unavailable (429/503), and "
        "when the daemon stopped while it ran.",
    )
    wait_seconds: float = Field(
        default=3600.0, gt=0,
        description="How long one try waits in the model's queue (for a load, a swap or a "
        "slot); at most orchestration.scheduler.max_request_wait_seconds.",
    )
