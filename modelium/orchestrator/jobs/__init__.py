"""Background jobs: accepted now, run later at a priority, kept across restarts in the
scheduler's SQLite store. See :mod:`.runner` for the rules."""

from modelium.orchestrator.jobs.records import (
    OPENAI,
    PREDICT,
    Job,
    JobFailure,
    JobState,
)
from modelium.orchestrator.jobs.runner import Executor, JobRequestError, Jobs
from modelium.orchestrator.jobs.store import JobStore

__all__ = ["OPENAI", "PREDICT", "Executor", "Job", "JobFailure", "JobRequestError", "JobState", "JobStore", "Jobs"]
