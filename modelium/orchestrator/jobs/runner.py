"""The job runner: accepts jobs, runs them in the background, keeps them across restarts.

* **Accepting** (:meth:`Jobs.submit`) is synchronous: the Idempotency-Key lookup, the
  bound on pending jobs and the insert happen with no await in between, so two
  submissions with one key can never both create a job. The row is committed before the
  answer, so an accepted job survives a ``kill -9``.
* **Running**: at most ``jobs.max_running`` jobs at once, at most
  ``jobs.max_running_per_model`` per model; the next one is the best queued job
  (priority, then submission order) whose model has room. A try calls the job's executor
  (``Orchestrator.predict`` for ``/predict``-style jobs) with the job's priority, so inside
  the model's queue it is ordered with synchronous requests by the same rule; because a
  model has ``orchestration.max_concurrent_requests`` slots and jobs take at most
  ``max_running_per_model`` of them, jobs never starve synchronous traffic. A try runs
  under the submitting request's id (:data:`modelium.logs.request_id_var`), so its log
  lines and the load it triggers carry it.
* **Failures**: busy or unavailable (429/503) are tried again after a back-off, up to
  ``jobs.max_attempts`` tries; anything else fails the job with the error the
  synchronous route would have answered.
* **Cancelling** a queued job means it never runs; a running one has its task cancelled,
  which cancels the runtime call upstream (the HTTP request to the runtime is closed).
* **Restart**: queued jobs stay queued; running ones ran when the daemon died and run
  again (the interrupted try counts as one).
* **Expiry**: finished jobs (and their results) are deleted ``jobs.result_ttl_seconds``
  after they finished, and beyond ``jobs.max_finished``.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from modelium.config.jobs_settings import JobsSettings
from modelium.logs import request_id_var
from modelium.metrics.jobs import JobMetrics
from modelium.orchestrator.admission import Priority
from modelium.orchestrator.jobs.failures import describe_failure
from modelium.orchestrator.jobs.records import (
    Job,
    JobFailure,
    JobState,
    fingerprint,
    new_job_id,
)
from modelium.orchestrator.jobs.store import JobStore

log = logging.getLogger(__name__)

Executor = Callable[[Job], Awaitable[Any]]
SWEEP_INTERVAL_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 60.0


class JobRequestError(Exception):
    """A submission or a call on a job that is refused: ``status`` and error ``type``."""

    def __init__(self, status: int, error_type: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message, self.extra = status, error_type, message, extra


class Jobs:
    def __init__(self, settings: JobsSettings, store: JobStore, metrics: JobMetrics | None = None, *,
                 executors: dict[str, Executor] | None = None,
                 queue_position: Callable[[str, str], int | None] = lambda model, request_id: None,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.executors: dict[str, Executor] = dict(executors or {})
        self._queue_position = queue_position
        self._wall = wall
        self._pending: dict[str, Job] = {}  # queued and running
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._seq = itertools.count()
        self._started = self._stopping = False
        self._timer: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.Task[None] | None = None
        if metrics is not None:
            metrics.set_view(self._pending_counts)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Take over what the store holds (queued stay queued, running run again), expire
        old results, and start running."""
        if self._started:
            return
        restored = interrupted = 0
        for job in self.store.unfinished():
            job.seq = next(self._seq)
            if job.state == JobState.RUNNING:
                interrupted += 1
                if job.attempts >= self.settings.max_attempts:
                    self._finish(job, JobState.FAILED, {
                        "type": "interrupted", "status": 500,
                        "message": f"the daemon stopped while this job ran, {job.attempts} times "
                                   "(jobs.max_attempts); not tried again"})
                    continue
                job.state = JobState.QUEUED
                job.error = {"type": "interrupted", "status": 503,
                             "message": "the daemon stopped while this job ran; it runs again"}
                self.store.save(job)
            self._pending[job.id] = job
            restored += 1
        if restored:
            log.info("jobs restored from the store: %d pending (%d were running)", restored, interrupted)
        self._started = True
        self.sweep()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="jobs sweeper",
                                                               context=contextvars.Context())
        self._pump()

    async def stop(self) -> None:
        """Stop running: running jobs stay ``running`` in the store and run again after
        the next start (as after a crash)."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        tasks = list(self._tasks.values()) + ([self._sweeper] if self._sweeper else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def sweep(self) -> int:
        """Delete expired finished jobs; returns how many."""
        gone = self.store.expire(self._wall() - self.settings.result_ttl_seconds, self.settings.max_finished)
        if gone:
            log.info("jobs expired: %d finished jobs deleted with their results", gone)
        return gone

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(SWEEP_INTERVAL_SECONDS, self.settings.result_ttl_seconds))
            try:
                self.sweep()
            except Exception:  # try again next time
                log.exception("expiring jobs failed")

    # ------------------------------------------------------------------ requests

    def submit(self, *, model: str, kind: str, payload: dict[str, Any], priority: Priority,
               request_id: str | None = None, scope: str = "", key: str | None = None) -> tuple[Job, bool]:
        """Accept a job, or find the one ``key`` already names; returns (job, created)."""
        if kind not in self.executors:
            raise JobRequestError(422, "invalid_request", f"jobs of kind {kind!r} cannot run here "
                                  f"(available: {', '.join(sorted(self.executors))})")
        now = self._wall()
        digest = fingerprint(model, kind, payload, priority)
        if key is not None:
            found = self.store.by_key(scope, key, now - self.settings.idempotency_seconds)
            if found is not None:
                if found.fingerprint != digest:
                    raise JobRequestError(
                        422, "idempotency_key_reused",
                        f"Idempotency-Key {key!r} was used for a different request (job {found.id}); "
                        "use a new key for a new request", job_id=found.id)
                return self._pending.get(found.id, found), False
        if len(self._pending) >= self.settings.max_pending:
            raise JobRequestError(429, "too_many_jobs", f"{len(self._pending)} jobs are pending, the limit "
                                  f"(jobs.max_pending); retry later", retry_after=self._retry_after())
        job = Job(new_job_id(), model, kind, payload, int(priority), now, request_id=request_id,
                  idempotency_scope=scope, idempotency_key=key, fingerprint=digest, seq=next(self._seq))
        self.store.save(job)
        self._pending[job.id] = job
        log.info("job %s accepted for %s (%s, priority %s)", job.id, model, kind, job.priority_name,
                 extra={"job": job.id, "model": model})
        self._pump()
        return job, True

    def get(self, job_id: str) -> Job | None:
        return self._pending.get(job_id) or self.store.get(job_id)

    def result(self, job_id: str) -> Any:
        return self.store.result(job_id)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a cancelled one is answered as is (idempotent)."""
        job = self._pending.get(job_id)
        if job is None:
            stored = self.store.get(job_id)
            if stored is None:
                raise JobRequestError(404, "job_not_found", f"no job {job_id!r} (it may have expired)")
            if stored.state == JobState.CANCELLED:
                return stored
            raise JobRequestError(409, "job_finished", f"job {job_id} already {stored.state.value}; "
                                  "nothing to cancel", state=stored.state.value)
        was = job.state
        self._finish(job, JobState.CANCELLED, None)
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()  # cancels the runtime call; its slot is freed as the task unwinds
        log.info("job %s cancelled (was %s)", job_id, was.value, extra={"job": job_id})
        return job

    def position(self, job: Job) -> tuple[str | None, int | None]:
        """Where the job waits: ("jobs", n) among the queued jobs of its model, ("model", n)
        in the model's own queue (a running try waiting for a load or a slot), else
        (None, None)."""
        if job.state == JobState.QUEUED:
            ahead = sorted((j for j in self._pending.values() if j.model == job.model and j.state == JobState.QUEUED),
                           key=_order)
            return "jobs", next((i + 1 for i, j in enumerate(ahead) if j.id == job.id), None)
        if job.state == JobState.RUNNING and job.request_id:
            place = self._queue_position(job.model, job.request_id)
            if place is not None:
                return "model", place
        return None, None

    # ------------------------------------------------------------------ running

    def _pump(self) -> None:
        """Start the best queued jobs while there is room (synchronous: no await)."""
        if not self._started or self._stopping:
            return
        now = self._wall()
        running = Counter(j.model for j in self._pending.values() if j.state == JobState.RUNNING)
        wake: float | None = None
        for job in sorted((j for j in self._pending.values() if j.state == JobState.QUEUED), key=_order):
            if len(self._tasks) >= self.settings.max_running:
                break
            if job.not_before > now:
                wake = job.not_before if wake is None else min(wake, job.not_before)
                continue
            if running[job.model] >= self.settings.max_running_per_model:
                continue
            running[job.model] += 1
            self._launch(job, now)
        if wake is not None:
            self._pump_later(wake - now)

    def _pump_later(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        if self._timer is not None and not self._timer.cancelled() and self._timer.when() <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._pump, context=contextvars.Context())

    def _launch(self, job: Job, now: float) -> None:
        job.state = JobState.RUNNING
        job.attempts += 1
        job.started_at = job.started_at or now
        self.store.save(job)
        context = contextvars.Context()  # the try runs under the submitter's request id
        context.run(request_id_var.set, job.request_id)
        self._tasks[job.id] = asyncio.get_running_loop().create_task(self._run(job), name=f"job {job.id}",
                                                                     context=context)

    async def _run(self, job: Job) -> None:
        try:
            executor = self.executors.get(job.kind)
            log.info("job %s: try %d on %s", job.id, job.attempts, job.model, extra={"job": job.id})
            try:
                if executor is None:
                    raise JobFailure(422, {"type": "invalid_request",
                                           "message": f"jobs of kind {job.kind!r} cannot run here"})
                result = await executor(job)
                text = json.dumps(result)
            except asyncio.CancelledError:
                raise  # cancelled (state already set) or the daemon stops (runs again after the restart)
            except JobFailure as failure:
                self._failed(job, failure)
            except Exception as exc:  # noqa: BLE001 - becomes the job's error
                self._failed(job, describe_failure(exc, job.request_id))
            else:
                self._succeeded(job, text)
        finally:
            self._tasks.pop(job.id, None)
            self._pump()

    def _succeeded(self, job: Job, text: str) -> None:
        if job.state != JobState.RUNNING:  # cancelled while its answer came back
            return
        size = len(text.encode())
        if size > self.settings.max_result_bytes:
            self._finish(job, JobState.FAILED, {
                "type": "result_too_large", "status": 500,
                "message": f"the result is {size} bytes, more than jobs.max_result_bytes "
                           f"({self.settings.max_result_bytes}); it was not stored"})
            return
        self._finish(job, JobState.SUCCEEDED, None, result=text)

    def _failed(self, job: Job, failure: JobFailure) -> None:
        if job.state != JobState.RUNNING:
            return
        error = {**failure.error, "status": failure.status, "attempt": job.attempts}
        if failure.retryable and job.attempts < self.settings.max_attempts:
            backoff = min(MAX_BACKOFF_SECONDS, failure.retry_after or 2.0 ** job.attempts)
            job.state, job.error = JobState.QUEUED, error
            job.not_before = self._wall() + backoff
            self.store.save(job)
            log.info("job %s: try %d failed (%s); again in %.0fs", job.id, job.attempts, failure, backoff,
                     extra={"job": job.id})
            return
        log.info("job %s failed: %s", job.id, failure, extra={"job": job.id})
        self._finish(job, JobState.FAILED, error)

    def _finish(self, job: Job, state: JobState, error: dict[str, Any] | None, *, result: str | None = None) -> None:
        job.state, job.error, job.finished_at = state, error, self._wall()
        if result is not None:
            self.store.save_result(job, result)
        else:
            self.store.save(job)
        self._pending.pop(job.id, None)
        if self.metrics is not None:
            self.metrics.observe(job.priority_name, state.value, job.finished_at - job.created_at)

    # ------------------------------------------------------------------ views

    def _pending_counts(self) -> dict[tuple[str, str], int]:
        return dict(Counter((j.state.value, j.priority_name) for j in self._pending.values()))

    def _retry_after(self) -> float:
        return 5.0

    def now(self) -> float:
        return self._wall()

    def pending(self) -> int:
        return len(self._pending)


def _order(job: Job) -> tuple[int, float, int]:
    return job.priority, job.created_at, job.seq
