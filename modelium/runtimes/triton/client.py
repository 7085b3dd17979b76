"""The KServe-v2 HTTP calls the Triton manager makes, and how Triton's answers are
classified.

Plain ``httpx`` rather than ``tritonclient[http]``: the project already depends on it,
it is natively async (tritonclient's sync client is gevent-based, its aio client pulls
aiohttp), and the calls needed (repository load/unload/index, model ready, metadata,
infer) are plain JSON. Triton's error bodies (``{"error": ...}``) are surfaced verbatim.

Errors are classified by **status code only**, never by the message (review finding 9:
user python models echo their input, so "not found" in a text proves nothing). What
tritonserver 2.51 answers, measured (``tests/e2e/test_triton_manager.py`` pins it):

* an unknown model, an unloaded one, one being unloaded, an unknown version: **404**
  ("Request for unknown model: 'x' is not found" / "... has no available versions");
* bad input (datatype, shape, unknown input name): **400**;
* a python model whose ``execute`` raises, or returns a ``TritonError`` without a code:
  **500**, whatever the text says; with a code, the code's status (``NOT_FOUND`` -> 404,
  ``UNAVAILABLE`` -> 503, ``INVALID_ARG`` -> 400).

So a 404 alone is not proof either: a model can answer 404 itself. On a 404 the model's
own readiness is asked (``GET /v2/models/NAME/ready``: 200 when READY, 400 otherwise);
only a model Triton does not report READY is :class:`ModelNotLoadedError` (which makes the
orchestrator count a crash and reload it). 400 is :class:`BadRequestError`; anything else
is :class:`RuntimeUnavailableError` (the request failed, the model is not lost).

Every call carries :attr:`TritonClient.headers` (Modelium's own server: the
``x-modelium-key`` it asks for, see :mod:`.access`; an external server: none).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from modelium.logs import current_request_id
from modelium.runtimes.base import ModelNotLoadedError, RuntimeUnavailableError
from modelium.runtimes.errors import BadRequestError

log = logging.getLogger(__name__)

INDEX_TIMEOUT = 10.0
READY_TIMEOUT = 5.0
#: Polling an external server's readiness: a refused connection costs microseconds.
READY_POLL_INTERVAL = 0.1
#: Unload returns at once; the model goes UNAVAILABLE 1-1.5 s later (measured): poll
#: often enough that the ledger frees its memory promptly.
INDEX_POLL_INTERVAL = 0.05
#: KServe v2 binary tensor extension: the length of the JSON header before the raw tensors.
HEADER_LENGTH = "Inference-Header-Content-Length"


def error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:2000] or f"HTTP {response.status_code}"
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return response.text[:2000]


def classify(name: str, status: int, message: str, *, model_ready: bool) -> Exception:
    """The error for a non-200 infer/metadata answer (see the module doc)."""
    if status == 404 and not model_ready:
        return ModelNotLoadedError(f"Triton: {message}")
    if status == 400:
        return BadRequestError(f"Triton rejected the request: {message}")
    if status == 404:
        return RuntimeUnavailableError(
            f"Triton answered 404 for {name} while reporting it READY (the model's own error): {message}")
    return RuntimeUnavailableError(f"Triton answered {status} for {name}: {message}")


class TritonClient:
    """Repository and model calls against one Triton; ``base_url`` is asked on every call
    (a restarted own server listens on new ports)."""

    def __init__(self, http: httpx.AsyncClient, base_url: Callable[[], str],
                 headers: Callable[[], dict[str, str]] = dict) -> None:
        self.http = http
        self._base_url = base_url
        self._headers = headers

    @property
    def base_url(self) -> str:
        return self._base_url()

    @property
    def headers(self) -> dict[str, str]:
        """Asked on every call, like the URL: a restarted own server has a new key. A call
        made on behalf of a request (an infer, or the load it triggered) carries its
        ``X-Request-ID`` too, so Triton's own logs can be matched to Modelium's."""
        request_id = current_request_id()
        return {**self._headers(), "X-Request-ID": request_id} if request_id else self._headers()

    async def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                      **kwargs: Any) -> httpx.Response:
        """One call to ``path`` with the server's headers (an infer, a metadata read);
        ``headers`` are added to them (never replacing the server's own)."""
        merged = {**(headers or {}), **self.headers}
        return await self.http.request(method, f"{self.base_url}{path}", headers=merged, **kwargs)

    async def infer_raw(self, name: str, body: bytes, header_length: int | None) -> httpx.Response:
        """``POST /v2/models/NAME/infer`` with a client's body as is (JSON, or binary
        tensors after a JSON header of ``header_length`` bytes); the answer unchecked."""
        headers = {"content-type": "application/json"} if header_length is None else {
            "content-type": "application/octet-stream", HEADER_LENGTH: str(header_length)}
        return await self.request("POST", f"/v2/models/{name}/infer", content=body, headers=headers)

    # ------------------------------------------------------------------ server

    async def server_ready(self) -> str | None:
        """None when ``GET /v2/health/ready`` answers 200, else what went wrong."""
        try:
            response = await self.http.get(f"{self.base_url}/v2/health/ready", headers=self.headers,
                                           timeout=READY_TIMEOUT)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return f"not ready (HTTP {response.status_code}: {error_text(response)})"
        return None

    async def wait_ready(self, timeout: float) -> None:
        """Wait for an external server to answer ready; RuntimeUnavailableError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (problem := await self.server_ready()) is not None:
            if time.monotonic() >= deadline:
                raise RuntimeUnavailableError(f"Triton at {self.base_url} is not ready: {problem}")
            await asyncio.sleep(READY_POLL_INTERVAL)

    async def metrics(self, url: str) -> str:
        """Prometheus text from Triton's metrics port (not restricted); "" when it fails."""
        try:
            response = await self.http.get(url, timeout=10.0)
        except httpx.HTTPError as exc:
            log.debug("Triton metrics unavailable: %s", exc)
            return ""
        return response.text if response.status_code == 200 else ""

    # ------------------------------------------------------------------ repository

    async def index(self) -> list[dict[str, Any]]:
        """``POST /v2/repository/index``; RuntimeUnavailableError when it cannot be had."""
        try:
            response = await self.http.post(f"{self.base_url}/v2/repository/index", json={},
                                            headers=self.headers, timeout=INDEX_TIMEOUT)
        except httpx.HTTPError as exc:
            raise RuntimeUnavailableError(f"Triton repository index failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise RuntimeUnavailableError(f"Triton repository index answered {response.status_code}: "
                                          f"{error_text(response)}")
        try:
            body = response.json()
        except ValueError as exc:
            raise RuntimeUnavailableError(f"Triton repository index is not JSON: {response.text[:200]}") from exc
        return body if isinstance(body, list) else []

    async def ready_models(self) -> set[str]:
        return {e["name"] for e in await self.index() if e.get("state") == "READY" and "name" in e}

    async def index_reason(self, name: str) -> str:
        """The index's reason for ``name`` ("" when none, or when the index fails)."""
        try:
            entries = await self.index()
        except RuntimeUnavailableError:
            return ""
        return next((str(e.get("reason") or "") for e in entries if e.get("name") == name), "")

    async def load(self, name: str, timeout: float) -> httpx.Response:
        """Explicit mode: returns when the load finished or failed."""
        return await self.http.post(f"{self.base_url}/v2/repository/models/{name}/load", json={},
                                    headers=self.headers, timeout=timeout)

    async def unload(self, name: str) -> httpx.Response:
        return await self.http.post(f"{self.base_url}/v2/repository/models/{name}/unload", json={},
                                    headers=self.headers)

    async def unload_quietly(self, name: str) -> None:
        """Cleanup after a failed load: unload and wait, logging (not raising) failures."""
        try:
            await self.unload(name)
            await self.wait_unavailable(name, 30.0)
        except Exception as exc:  # noqa: BLE001 - cleanup after a failure
            log.debug("cleanup unload of %s: %s", name, exc)

    async def wait_unavailable(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            entries = await self.index()
            state = next((e.get("state") for e in entries if e.get("name") == name), None)
            if state in (None, "UNAVAILABLE"):
                return
            if time.monotonic() >= deadline:
                raise RuntimeUnavailableError(f"Triton still reports {name} as {state} {timeout:.0f}s after unload")
            await asyncio.sleep(INDEX_POLL_INTERVAL)

    # ------------------------------------------------------------------ models

    async def model_ready(self, name: str) -> bool:
        """``GET /v2/models/NAME/ready``: True on 200, False on 400/404 ("Model version not
        ready"); RuntimeUnavailableError when Triton cannot be asked."""
        try:
            response = await self.http.get(f"{self.base_url}/v2/models/{name}/ready", headers=self.headers,
                                           timeout=READY_TIMEOUT)
        except httpx.HTTPError as exc:
            raise RuntimeUnavailableError(f"Triton readiness of {name} unknown: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 200:
            return True
        if response.status_code in (400, 404):
            return False
        raise RuntimeUnavailableError(f"Triton readiness of {name} answered {response.status_code}: "
                                      f"{error_text(response)}")

    async def check(self, name: str, response: httpx.Response) -> httpx.Response:
        """``response`` if it is a 200, else raise its classified error."""
        if response.status_code == 200:
            return response
        ready = await self.model_ready(name) if response.status_code == 404 else True
        raise classify(name, response.status_code, error_text(response), model_ready=ready)
