"""The job runner over a real SQLite store with fake executors: idempotency, priorities,
concurrency bounds, cancelling queued and running jobs, retries, restart recovery,
result bounds and expiry, and a migration of an existing database."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from modelium.config.jobs_settings import JobsSettings
from modelium.metrics import ModeliumMetrics
from modelium.orchestrator import Priority, StateStore
from modelium.orchestrator.errors import LoadTimeoutError, UnknownModelError
from modelium.orchestrator.jobs import (
    PREDICT,
    JobFailure,
    JobRequestError,
    Jobs,
    JobState,
    JobStore,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Executor:
    """Records tries; ``gates[model]`` holds a try until set; ``fail`` raises per try."""

    def __init__(self) -> None:
        self.tries: list[tuple[str, Any]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []
        self.fail: list[Exception] = []
        self.result: Any = None

    async def __call__(self, job) -> Any:
        self.tries.append((job.model, job.payload["inputs"]))
        try:
            gate = self.gates.get(job.model)
            if gate is not None:
                await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(job.id)
            raise
        if self.fail:
            raise self.fail.pop(0)
        return self.result if self.result is not None else {"outputs": job.payload["inputs"]}


def make(db: Path, executor: Executor, clock: Clock, **settings: Any) -> tuple[Jobs, StateStore, ModeliumMetrics]:
    store = StateStore(db)
    metrics = ModeliumMetrics()
    jobs = Jobs(JobsSettings(**settings), JobStore(store.connection), metrics.jobs,
                executors={PREDICT: executor}, wall=clock)
    return jobs, store, metrics


def submit(jobs: Jobs, model: str = "m", inputs: Any = "x", priority: Priority = Priority.NORMAL, **kw: Any):
    return jobs.submit(model=model, kind=PREDICT, payload={"inputs": inputs, "parameters": {}},
                       priority=priority, **kw)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def run(coro) -> Any:
    return asyncio.run(coro)


def test_a_job_runs_and_its_result_is_stored(tmp_path):
    async def scenario():
        executor, clock = Executor(), Clock()
        jobs, store, metrics = make(tmp_path / "db", executor, clock)
        jobs.start()
        job, created = submit(jobs, inputs="hello", request_id="rid-1")
        assert created and job.state == JobState.RUNNING  # started at once: nothing else runs
        await settle()
        assert jobs.get(job.id).state == JobState.SUCCEEDED
        assert jobs.result(job.id) == {"outputs": "hello"}
        assert jobs.get(job.id).attempts == 1 and jobs.get(job.id).request_id == "rid-1"
        text = metrics.render()[0].decode()
        assert 'modelium_job_seconds_count{outcome="succeeded",priority="normal"} 1.0' in text
        await jobs.stop()
        store.close()

    run(scenario())


def test_same_key_is_the_same_job_and_a_different_body_is_refused(tmp_path):
    async def scenario():
        executor, clock = Executor(), Clock()
        jobs, store, _ = make(tmp_path / "db", executor, clock, idempotency_seconds=100)
        jobs.start()
        first, created = submit(jobs, inputs="a", key="k1")
        again, created_again = submit(jobs, inputs="a", key="k1")
        assert created and not created_again and again.id == first.id
        with pytest.raises(JobRequestError) as refused:
            submit(jobs, inputs="b", key="k1")
        assert refused.value.status == 422 and refused.value.error_type == "idempotency_key_reused"
        other_scope, created_other = submit(jobs, inputs="a", key="k1", scope="another-api-key")
        assert created_other and other_scope.id != first.id
        await settle()
        assert submit(jobs, inputs="a", key="k1")[0].id == first.id  # finished: still the same job
        clock.now += 101  # the key's window is over: a new job
        late, created_late = submit(jobs, inputs="b", key="k1")
        assert created_late and late.id != first.id
        await settle()
        assert [t for t in executor.tries] == [("m", "a"), ("m", "a"), ("m", "b")]
        await jobs.stop()
        store.close()

    run(scenario())


def test_priority_then_age_and_the_concurrency_bounds(tmp_path):
    async def scenario():
        executor, clock = Executor(), Clock()
        executor.gates["m"] = asyncio.Event()
        executor.gates["other"] = asyncio.Event()
        jobs, store, metrics = make(tmp_path / "db", executor, clock, max_running=2, max_running_per_model=1)
        jobs.start()
        first, _ = submit(jobs, inputs="first")
        low, _ = submit(jobs, inputs="low", priority=Priority.LOW)
        normal, _ = submit(jobs, inputs="normal")
        high, _ = submit(jobs, inputs="high", priority=Priority.HIGH)
        elsewhere, _ = submit(jobs, model="other", inputs="other")
        await settle()
        # one per model: "first" runs on m, "other" on other; the rest wait in order.
        assert set(jobs._tasks) == {first.id, elsewhere.id}
        assert [jobs.position(j) for j in (high, normal, low)] == [("jobs", 1), ("jobs", 2), ("jobs", 3)]
        text = metrics.render()[0].decode()
        assert 'modelium_jobs{priority="normal",state="running"} 2.0' in text
        assert 'modelium_jobs{priority="high",state="queued"} 1.0' in text
        executor.gates["m"].set()
        executor.gates["other"].set()
        await settle()
        assert [inputs for model, inputs in executor.tries if model == "m"] == ["first", "high", "normal", "low"]
        await jobs.stop()
        store.close()

    run(scenario())


def test_a_cancelled_queued_job_never_runs(tmp_path):
    async def scenario():
        executor, clock = Executor(), Clock()
        executor.gates["m"] = asyncio.Event()
        jobs, store, _ = make(tmp_path / "db", executor, clock)
        jobs.start()
        running, _ = submit(jobs, inputs="running")
        queued, _ = submit(jobs, inputs="queued")
        await settle()
        assert jobs.cancel(queued.id).state == JobState.CANCELLED
        assert jobs.cancel(queued.id).state == JobState.CANCELLED  # idempotent
        executor.gates["m"].set()
        await settle()
        assert executor.tries == [("m", "running")]
        with pytest.raises(JobRequestError) as finished:
            jobs.cancel(running.id)
        assert finished.value.status == 409
        with pytest.raises(JobRequestError) as unknown:
            jobs.cancel("job-nope")
        assert unknown.value.status == 404
        await jobs.stop()
        store.close()

    run(scenario())


def test_cancelling_a_running_job_cancels_its_try(tmp_path):
    async def scenario():
        executor, clock = Executor(), Clock()
        executor.gates["m"] = asyncio.Event()
        jobs, store, metrics = make(tmp_path / "db", executor, clock)
        jobs.start()
        job, _ = submit(jobs)
        await settle()
        assert jobs.get(job.id).state == JobState.RUNNING
        jobs.cancel(job.id)
        await settle()
        assert executor.cancelled == [job.id]
        assert jobs.get(job.id).state == JobState.CANCELLED and jobs.result(job.id) is None
        assert not jobs._tasks
        assert 'modelium_job_seconds_count{outcome="cancelled",priority="normal"} 1.0' in metrics.render()[0].decode()
        await jobs.stop()
        store.close()

    run(scenario())


def test_busy_is_retried_and_a_client_error_fails_at_once(tmp_path):
    async def scenario():
        executor, clock = Executor(), Clock()
        jobs, store, _ = make(tmp_path / "db", executor, clock, max_attempts=3)
        jobs.start()
        executor.fail = [LoadTimeoutError("still loading", retry_after=7)]
        job, _ = submit(jobs, inputs="retried")
        await settle()
        waiting = jobs.get(job.id)
        assert waiting.state == JobState.QUEUED and waiting.error["status"] == 503
        assert waiting.not_before == clock.now + 7
        clock.now += 8
        jobs._pump()
        await settle()
        assert jobs.get(job.id).state == JobState.SUCCEEDED and jobs.get(job.id).attempts == 2
        executor.fail = [UnknownModelError("model 'gone' is not known", known=[])]
        bad, _ = submit(jobs, inputs="bad")
        await settle()
        failed = jobs.get(bad.id)
        assert failed.state == JobState.FAILED and failed.error["status"] == 404 and failed.attempts == 1
        executor.fail = [JobFailure(503, {"type": "unavailable", "message": "x"}, retryable=True, retry_after=1)] * 3
        hopeless, _ = submit(jobs, inputs="hopeless")
        for _ in range(3):
            await settle()
            clock.now += 2
            jobs._pump()
        await settle()
        assert jobs.get(hopeless.id).state == JobState.FAILED and jobs.get(hopeless.id).attempts == 3
        await jobs.stop()
        store.close()

    run(scenario())


def test_a_restart_runs_what_was_accepted(tmp_path):
    db = tmp_path / "modelium.db"

    async def before_the_crash():
        executor, clock = Executor(), Clock()
        executor.gates["m"] = asyncio.Event()  # never set: the "daemon" dies mid-run
        jobs, store, _ = make(db, executor, clock, max_running_per_model=1)
        jobs.start()
        running, _ = submit(jobs, inputs="was running", key="k")
        queued, _ = submit(jobs, inputs="was queued")
        await settle()
        assert jobs.get(running.id).state == JobState.RUNNING
        # kill -9: nothing is stopped cleanly; the rows are what was committed.
        return running.id, queued.id

    running_id, queued_id = run(before_the_crash())

    async def after_the_restart():
        executor, clock = Executor(), Clock()
        jobs, store, _ = make(db, executor, clock)
        jobs.start()
        await settle()
        assert jobs.get(running_id).state == JobState.SUCCEEDED and jobs.get(running_id).attempts == 2
        assert jobs.get(queued_id).state == JobState.SUCCEEDED and jobs.get(queued_id).attempts == 1
        assert jobs.result(running_id) == {"outputs": "was running"}
        assert submit(jobs, inputs="was running", key="k")[0].id == running_id  # keys survive too
        await jobs.stop()
        store.close()

    run(after_the_restart())


def test_a_job_interrupted_too_often_fails(tmp_path):
    db = tmp_path / "modelium.db"

    async def start_and_crash(submit_one: bool) -> list[str]:
        executor, clock = Executor(), Clock()
        executor.gates["m"] = asyncio.Event()  # never set: it dies mid-run
        jobs, _store, _ = make(db, executor, clock, max_attempts=2)
        jobs.start()
        if submit_one:
            submit(jobs, inputs="poison")
        await settle()
        return [j.id for j in jobs._pending.values() if j.state == JobState.RUNNING]

    first = run(start_and_crash(True))
    assert run(start_and_crash(False)) == first  # the second try, interrupted too

    async def last():
        jobs, store, _ = make(db, Executor(), Clock(), max_attempts=2)
        jobs.start()
        job = jobs.get(first[0])
        assert job.state == JobState.FAILED and job.error["type"] == "interrupted" and job.attempts == 2
        store.close()

    run(last())


def test_stop_leaves_running_jobs_to_run_again(tmp_path):
    db = tmp_path / "modelium.db"

    async def first():
        executor, clock = Executor(), Clock()
        executor.gates["m"] = asyncio.Event()
        jobs, store, _ = make(db, executor, clock)
        jobs.start()
        job, _ = submit(jobs)
        await settle()
        await jobs.stop()  # a clean daemon stop
        assert executor.cancelled == [job.id]
        assert JobStore(store.connection).get(job.id).state == JobState.RUNNING
        store.close()
        return job.id

    job_id = run(first())

    async def second():
        jobs, store, _ = make(db, Executor(), Clock())
        jobs.start()
        await settle()
        assert jobs.get(job_id).state == JobState.SUCCEEDED
        store.close()

    run(second())


def test_results_are_bounded_and_expire(tmp_path):
    async def scenario():
        executor, clock = Executor(), Clock()
        jobs, store, _ = make(tmp_path / "db", executor, clock, max_result_bytes=1024, result_ttl_seconds=60,
                              max_finished=2)
        jobs.start()
        executor.result = {"outputs": "x" * 2000}
        big, _ = submit(jobs, inputs="big")
        await settle()
        assert jobs.get(big.id).state == JobState.FAILED and jobs.get(big.id).error["type"] == "result_too_large"
        assert jobs.result(big.id) is None
        executor.result = None
        ids = []
        for i in range(3):
            ids.append(submit(jobs, inputs=f"small {i}")[0].id)
            await settle()
            clock.now += 1
        assert jobs.sweep() == 2  # at most max_finished kept: "big" and "small 0" go
        assert jobs.get(big.id) is None and jobs.get(ids[0]) is None and jobs.get(ids[2]) is not None
        clock.now += 61
        assert jobs.sweep() == 2 and jobs.get(ids[2]) is None
        await jobs.stop()
        store.close()

    run(scenario())


def test_pending_jobs_are_bounded(tmp_path):
    async def scenario():
        executor, clock = Executor(), Clock()
        executor.gates["m"] = asyncio.Event()
        jobs, store, _ = make(tmp_path / "db", executor, clock, max_pending=2)
        jobs.start()
        submit(jobs, inputs="1")
        submit(jobs, inputs="2")
        with pytest.raises(JobRequestError) as full:
            submit(jobs, inputs="3")
        assert full.value.status == 429
        await jobs.stop()
        store.close()

    run(scenario())


def test_an_existing_database_is_migrated(tmp_path):
    db = tmp_path / "modelium.db"
    old = sqlite3.connect(db)  # a database from before jobs, plus a jobs table missing columns
    old.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    old.execute("INSERT INTO meta VALUES ('schema', '1')")
    old.execute("CREATE TABLE models (name TEXT PRIMARY KEY, data TEXT NOT NULL, updated REAL NOT NULL)")
    old.execute("INSERT INTO models VALUES ('kept', '{\"state\": \"ready\"}', 1.0)")
    old.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, data TEXT NOT NULL)")
    old.commit()
    old.close()
    store = StateStore(db)
    jobs_store = JobStore(store.connection)
    columns = {row[1] for row in store.connection.execute("PRAGMA table_info(jobs)")}
    assert {"created", "finished", "idem_scope", "idem_key", "result"} <= columns
    assert store.load() == {"kept": {"state": "ready"}}
    assert jobs_store.count() == 0
    store.close()
