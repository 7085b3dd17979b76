"""Job routes: submit a request now, fetch its result later.

* ``POST /jobs`` with ``{"model", "inputs", "parameters", "priority"}`` (like
  ``/predict``) or ``{"openai": {"kind": "completions" | "chat.completions", "body":
  {...}}, "priority"}`` (a non-streamed OpenAI body; its ``model`` names the model):
  ``202`` with the job and ``Location: /jobs/ID``. ``priority`` is high, normal (default)
  or low; anything else is a 422 naming the allowed values. With an ``Idempotency-Key``
  header (1-255 visible ASCII characters) the same key (from the same API key) within
  ``jobs.idempotency_seconds`` answers the same job (``200``, ``Idempotent-Replayed:
  true``); the same key with a different body is a ``422`` (``idempotency_key_reused``,
  as the IETF Idempotency-Key draft recommends).
* ``GET /jobs/ID``: state (queued, running, succeeded, failed, cancelled), attempts,
  timings and, while it waits, its ``position`` (``queue``: ``jobs`` among the queued
  jobs of its model, or ``model`` in the model's own queue).
* ``GET /jobs/ID/result``: ``200`` with the result once succeeded; ``409`` while it is not
  finished (``job_not_finished``, with ``Retry-After``), or when it failed or was cancelled
  (``job_failed`` / ``job_cancelled``, with the job's error); ``404`` when unknown or expired.
* ``DELETE /jobs/ID``: cancel (queued: never runs; running: cancelled upstream); ``409``
  when it already finished.

Transport only: the rules live in :mod:`modelium.orchestrator.jobs`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelium.gateway.auth import presented_key
from modelium.gateway.errors import error_response, map_error
from modelium.gateway.limits import check_batch
from modelium.gateway.request_ids import REQUEST_ID_HEADER, current_request_id
from modelium.orchestrator import Orchestrator, Priority
from modelium.orchestrator.jobs import (
    OPENAI,
    PREDICT,
    Job,
    JobFailure,
    JobRequestError,
    JobState,
)

IDEMPOTENCY_HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
NOT_FINISHED_RETRY_AFTER = "1"
OPENAI_PATHS = {"completions": "/v1/completions", "chat.completions": "/v1/chat/completions"}


class OpenAIJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["completions", "chat.completions"] = Field(description="which OpenAI route the body is for")
    body: dict[str, Any] = Field(description="the OpenAI request body (not streamed)")


class JobRequest(BaseModel):
    """``POST /jobs``: a /predict request (``model`` + ``inputs``) or an OpenAI body."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="the model (for OpenAI jobs: body.model)")
    inputs: str | list[str] | dict[str, Any] | None = Field(default=None, description="as for /predict")
    parameters: dict[str, Any] = Field(default_factory=dict, description="as for /predict")
    openai: OpenAIJob | None = Field(default=None, description="an OpenAI completions or chat body")
    priority: Literal["high", "normal", "low"] = Field(default="normal", description="the job's priority")

    @model_validator(mode="after")
    def _one_request(self) -> JobRequest:
        if (self.inputs is None) == (self.openai is None):
            raise ValueError('give either "inputs" (a /predict request) or "openai" (an OpenAI body), not both')
        if self.openai is not None:
            named = self.openai.body.get("model")
            if not isinstance(named, str) or not named:
                raise ValueError("openai.body.model: field required (the model's name)")
            if self.model is not None and self.model != named:
                raise ValueError(f"model {self.model!r} and openai.body.model {named!r} differ")
            if self.openai.body.get("stream"):
                raise ValueError("openai.body.stream: jobs are not streamed (the result is fetched later)")
            if self.parameters:
                raise ValueError("parameters: not used with openai (put them in openai.body)")
            self.model = named
        elif self.model is None:
            raise ValueError("model: field required")
        return self


def add_job_routes(app: FastAPI, orchestrator: Orchestrator, *, dependencies: Sequence[Any] = ()) -> None:
    """Register the job routes; OpenAI jobs run through this app's own OpenAI routes."""
    deps = list(dependencies)
    jobs = orchestrator.jobs
    gateway = orchestrator.settings.gateway
    jobs.executors[OPENAI] = openai_executor(app, orchestrator)

    @app.post("/jobs", dependencies=deps, status_code=202)
    async def submit(body: JobRequest, request: Request) -> Any:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None and not (1 <= len(key) <= MAX_KEY_LENGTH and all("!" <= c <= "~" for c in key)):
            return error_response(422, "invalid_request",
                                  f"header Idempotency-Key must be 1-{MAX_KEY_LENGTH} visible ASCII characters")
        try:
            orchestrator.get(body.model or "")
            if body.openai is None:
                check_batch("inputs", body.inputs, gateway.max_batch_items)
                kind, payload = PREDICT, {"inputs": body.inputs, "parameters": body.parameters}
            else:
                check_batch("prompt", body.openai.body.get("prompt"), gateway.max_batch_items)
                check_batch("messages", body.openai.body.get("messages"), gateway.max_batch_items)
                kind, payload = OPENAI, {"kind": body.openai.kind, "body": body.openai.body}
            job, created = jobs.submit(model=body.model or "", kind=kind, payload=payload,
                                       priority=Priority.parse(body.priority), request_id=current_request_id(),
                                       scope=_scope(request, gateway.api_keys), key=key)
        except JobRequestError as exc:
            return _refused(exc)
        except Exception as exc:  # noqa: BLE001 - mapped like /predict
            return map_error(exc)
        headers = {"Location": f"/jobs/{job.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(status_code=202 if created else 200, content=_view(jobs, job), headers=headers)

    @app.get("/jobs/{job_id}", dependencies=deps)
    async def get_job(job_id: str) -> Any:
        job = jobs.get(job_id)
        return _view(jobs, job) if job is not None else _unknown(job_id)

    @app.get("/jobs/{job_id}/result", dependencies=deps)
    async def job_result(job_id: str) -> Any:
        job = jobs.get(job_id)
        if job is None:
            return _unknown(job_id)
        if job.state == JobState.SUCCEEDED:
            return {"id": job.id, "object": "job.result", "model": job.model, "state": job.state.value,
                    "request_id": job.request_id, "result": jobs.result(job_id)}
        if not job.state.finished:
            return error_response(409, "job_not_finished", f"job {job.id} is {job.state.value}; "
                                  "its result is not there yet", state=job.state.value,
                                  headers={"Retry-After": NOT_FINISHED_RETRY_AFTER})
        return error_response(409, f"job_{job.state.value}", f"job {job.id} {job.state.value}; it has no result",
                              state=job.state.value, job_error=job.error)

    @app.delete("/jobs/{job_id}", dependencies=deps)
    async def cancel_job(job_id: str) -> Any:
        try:
            return _view(jobs, jobs.cancel(job_id))
        except JobRequestError as exc:
            return _refused(exc)


def openai_executor(app: FastAPI, orchestrator: Orchestrator):
    """Run an OpenAI job through this app's own ``/v1/...`` route, in process (no socket):
    the same validation, relay, metrics and errors as a synchronous call, at the job's
    priority. Cancelling the job cancels the call, which closes the upstream request."""
    settings = orchestrator.settings

    async def run(job: Job) -> Any:
        wait = min(settings.jobs.wait_seconds, settings.orchestration.scheduler.max_request_wait_seconds)
        headers = {"X-Priority": job.priority_name, "X-Max-Wait-Seconds": str(wait)}
        if job.request_id:
            headers[REQUEST_ID_HEADER] = job.request_id
        if settings.gateway.api_keys:  # the daemon calling itself; the key never leaves the process
            headers["Authorization"] = f"Bearer {settings.gateway.api_keys[0]}"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://modelium-jobs", timeout=None) as client:
            response = await client.post(OPENAI_PATHS[job.payload["kind"]], json=job.payload["body"], headers=headers)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code >= 400:
            error = answer.get("error") if isinstance(answer, dict) else None
            if not isinstance(error, dict):
                error = {"type": "upstream_error", "message": str(error or response.text[:2000])}
            retry_after = response.headers.get("retry-after")
            raise JobFailure(response.status_code, error, retryable=response.status_code in (429, 503),
                             retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None)
        return answer

    return run


def _scope(request: Request, api_keys: Sequence[str]) -> str:
    """Whose Idempotency-Key it is: keys of different API keys never collide."""
    if not api_keys:
        return ""
    return hashlib.sha256(presented_key(request).encode()).hexdigest()[:16]


def _view(jobs: Any, job: Job) -> dict[str, Any]:
    queue, position = jobs.position(job)
    end = job.finished_at
    return {
        "id": job.id, "object": "job", "model": job.model, "kind": job.kind, "priority": job.priority_name,
        "state": job.state.value, "attempts": job.attempts, "request_id": job.request_id,
        "idempotency_key": job.idempotency_key,
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": end,
        "queued_seconds": round((job.started_at or end or jobs.now()) - job.created_at, 3),
        "run_seconds": round((end or jobs.now()) - job.started_at, 3) if job.started_at else None,
        "queue": queue, "position": position, "error": job.error,
        "result_url": f"/jobs/{job.id}/result",
    }


def _unknown(job_id: str) -> JSONResponse:
    return error_response(404, "job_not_found", f"no job {job_id!r} (unknown, or expired after jobs.result_ttl_seconds)")


def _refused(exc: JobRequestError) -> JSONResponse:
    extra = dict(exc.extra)
    headers = None
    retry_after = extra.pop("retry_after", None)
    if retry_after is not None:
        headers = {"Retry-After": str(int(retry_after))}
    return error_response(exc.status, exc.error_type, exc.message, headers=headers, **extra)
