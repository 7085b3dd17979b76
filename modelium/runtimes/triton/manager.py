"""TritonManager: drives one Triton Inference Server in explicit model-control mode.

Which server:

* ``endpoint=None`` (setting ``triton.endpoint: auto``): Modelium starts and supervises its
  own ``tritonserver`` (:class:`~modelium.runtimes.triton.server.TritonServer`) on free
  loopback ports, with the model repository ``state_dir/triton/models``.
* ``endpoint="host:port"``: a running server that Modelium only drives over HTTP. That
  server must see the same repository at the same path (``--model-repository`` pointing
  at ``state_dir/triton/models``, e.g. a bind mount at the same path in the container) and
  run with ``--model-control-mode=explicit``; Modelium writes the entries, the server
  loads them. Such a server is never stopped by Modelium; only the models this manager
  loaded (or adopted) are unloaded by :meth:`stop`.

Client: plain ``httpx`` against Triton's KServe-v2 HTTP/JSON API (:mod:`.client`, which
also classifies Triton's answers by status code); tensors are mapped by :mod:`.codec`.
The own server refuses every API but health without its ``x-modelium-key`` header, which
the client sends on every call (:mod:`.access`); an external server gets no header.

Load: the entry is written by ``model_repo.write_model_entry`` (config.pbtxt + ``1/``),
then ``POST /v2/repository/models/NAME/load``; in explicit mode that call returns when the
load finished or failed, and a failure's message is Triton's own (e.g. the python
model's exception). Unload: ``POST .../unload`` returns at once; the model really goes
(stub process gone, memory freed) ~1-1.5 s later, so :meth:`unload` polls
``POST /v2/repository/index`` until the model is UNAVAILABLE or absent.

Crashes: if the own server dies, :meth:`loaded_models` is empty and :meth:`exit_reason`
says why (exit code + log tail) for each model that was loaded; the next :meth:`load`
restarts the server first (:meth:`restart_server`, once however many loads saw it die),
and the orchestrator's crash handling loads the lost models again one by one. An index
call that fails while the server lives (a slow answer, an unreachable external server) is
*not* a crash: :meth:`loaded_models` raises RuntimeUnavailableError ("cannot tell").

Processes: each python-backend model instance is a stub process under tritonserver whose
argv[1] is ``REPOSITORY/NAME/VERSION/model.py`` (seen with 2.51; argv[8] is the instance
name ``NAME_GROUP_INDEX``); :meth:`process_ids` finds a model's stubs by that path.
Models of other backends live inside the server process and have no pids of their own.

Threads: the own server is spawned on the calling thread, which must be the event-loop
thread (parent-death signal); never call :meth:`start`/:meth:`load` via ``to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from modelium.runtimes.base import (
    AdoptionReport,
    Capability,
    LoadRequest,
    ModelNotLoadedError,
    RuntimeHealth,
    RuntimeLoadError,
    RuntimeManager,
    RuntimeUnavailableError,
    V2Answer,
)
from modelium.runtimes.triton import codec, model_repo
from modelium.runtimes.triton.client import HEADER_LENGTH, TritonClient, error_text
from modelium.runtimes.triton.install import TritonInstall
from modelium.runtimes.triton.server import LOG_TAIL_LINES, TritonServer

log = logging.getLogger(__name__)

UNLOAD_TIMEOUT = 120.0
_CLIENT_TIMEOUT = httpx.Timeout(connect=5.0, read=900.0, write=60.0, pool=60.0)


class TritonManager(RuntimeManager):
    """Loads models into one Triton server; see the module doc."""

    name = "triton"
    #: Triton is a KServe v2 server: the gateway's /v2 routes pass through to it.
    capabilities = frozenset({Capability.KSERVE_V2})

    def __init__(
        self,
        *,
        install: TritonInstall | None,
        state_dir: Path,
        endpoint: str | None,
        startup_timeout_seconds: float,
        load_timeout_seconds: float = 300.0,
        metrics_endpoint: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        if endpoint is None and install is None:
            raise ValueError("an own Triton server needs a TritonInstall")
        self.install = install
        self.state_dir = Path(state_dir)
        self.work_dir = self.state_dir / "triton"
        self.repository = self.work_dir / "models"
        self.endpoint = endpoint
        self.startup_timeout_seconds = startup_timeout_seconds
        self.load_timeout_seconds = load_timeout_seconds
        self.metrics_endpoint = metrics_endpoint
        self.extra_args = list(extra_args or [])
        self._server: TritonServer | None = None
        self._client: TritonClient | None = None
        self._loaded: set[str] = set()  # loaded (or adopted) by this manager
        self._metadata: dict[str, dict[str, Any]] = {}
        self._exit_reasons: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._server_lock = asyncio.Lock()
        self.restarts = 0

    # ------------------------------------------------------------------ facts

    @property
    def own_server(self) -> bool:
        return self.endpoint is None

    @property
    def server(self) -> TritonServer | None:
        return self._server

    @property
    def base_url(self) -> str:
        if self.endpoint is not None:
            return self.endpoint if "://" in self.endpoint else f"http://{self.endpoint}"
        if self._server is None or self._server.ports is None:
            raise RuntimeUnavailableError("the Triton server is not started")
        return self._server.base_url

    def _server_dead(self) -> bool:
        return self.own_server and self._server is not None and self._server.ready and not self._server.alive

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the repository and client; start the own server (or check the external
        one answers ready). Idempotent."""
        self.repository.mkdir(parents=True, exist_ok=True)
        if self._client is None or self._client.http.is_closed:
            http = httpx.AsyncClient(
                timeout=_CLIENT_TIMEOUT, trust_env=False,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
            self._client = TritonClient(http, lambda: self.base_url,  # headers: see .access
                                        lambda: self._server.headers if self._server is not None else {})
        async with self._server_lock:
            if self.own_server:
                if self._server is None or not self._server.alive:
                    await self._start_server()
            else:
                await self._require_client().wait_ready(self.startup_timeout_seconds)

    async def _start_server(self) -> None:
        """Start a fresh own server (the old one, if any, must be dead or stopped)."""
        assert self.install is not None
        old = self._server
        if old is not None:
            await asyncio.to_thread(old.stop)
        server = TritonServer(self.install, self.work_dir, repository=self.repository, extra_args=self.extra_args)
        self._server = server
        self._metadata.clear()
        try:
            server.start()  # on the event-loop thread: see the module doc
        except OSError as exc:
            raise RuntimeUnavailableError(f"cannot start {self.install.executable}: {exc}") from exc
        try:
            await server.wait_ready(self.startup_timeout_seconds)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(server.stop))
            raise

    async def restart_server(self, seen: TritonServer | None = None) -> bool:
        """Replace the own server the caller saw die (``seen``; None: whatever server is
        current) with a fresh one; returns whether this call restarted it.

        Re-checked under the server lock: when ``seen`` is no longer the current server,
        or the current one is alive, another caller already restarted it and this is a
        no-op, so N concurrent loads that all saw the same crash cause one restart, not N
        (each costing downtime). Models the dead server had are lost (their exit reasons
        are recorded); the orchestrator loads them again."""
        if not self.own_server:
            raise RuntimeError("an external Triton server is not restarted by Modelium")
        async with self._server_lock:
            current = self._server
            if seen is not None and current is not seen:
                return False  # already replaced
            if current is not None and current.alive:
                return False  # not dead (anymore): nothing to restart
            self._note_server_exit()
            self.restarts += 1
            log.warning("restarting tritonserver (restart #%d)", self.restarts)
            await self._start_server()
            return True

    async def stop(self) -> None:
        """Own server: stop it and every stub (nothing unloaded first: the processes go).
        External server: unload what this manager loaded. Then close the client."""
        if self.own_server:
            # Close our keep-alive connections first: tritonserver's SIGTERM handler waits
            # (up to --exit-timeout-secs) for open HTTP connections to go away.
            await self._close_client()
            server, self._server = self._server, None
            if server is not None:
                await asyncio.to_thread(server.stop)
                if server.survivors:
                    log.error("tritonserver left processes behind: %s", server.survivors)
        else:
            for name in sorted(self._loaded):
                try:
                    await self.unload(name)
                except Exception as exc:  # noqa: BLE001 - best effort on shutdown
                    log.warning("could not unload %s from Triton at %s: %s", name, self.endpoint, exc)
        self._loaded.clear()
        self._metadata.clear()
        await self._close_client()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.http.aclose()

    async def adopt(self, known_models: dict[str, Path]) -> AdoptionReport:
        """External server: models already READY there whose name is known are adopted.
        Own server: a fresh server has nothing loaded, nothing to adopt."""
        if self.own_server:
            return AdoptionReport()
        await self.start()
        ready = await self._require_client().ready_models()
        adopted = sorted(name for name in ready if name in known_models)
        self._loaded.update(adopted)
        return AdoptionReport(adopted=tuple(adopted), removed=())

    # ------------------------------------------------------------------ load / unload

    async def load(self, request: LoadRequest) -> None:
        name = request.name
        async with self._lock(name):
            seen = self._server
            if self._server_dead():
                await self.restart_server(seen)
            await self.start()
            if name in self._loaded:  # model_repo must not rewrite an entry Triton has loaded
                await self._unload_locked(name)
            self._exit_reasons.pop(name, None)
            self._metadata.pop(name, None)
            try:
                await asyncio.to_thread(self._write_entry, request)
            except Exception as exc:  # noqa: BLE001 - any failure to write is the model's reason
                raise RuntimeLoadError(f"cannot write the Triton model entry for {name}: {exc}") from exc
            client = self._require_client()
            try:
                response = await client.load(name, self.load_timeout_seconds)
            except httpx.TimeoutException as exc:
                await self._unload_quietly(name)
                raise RuntimeLoadError(f"Triton did not load {name} within {self.load_timeout_seconds:.0f}s") from exc
            except httpx.HTTPError as exc:
                raise RuntimeLoadError(f"Triton load of {name} failed: {self._gone_detail(exc)}") from exc
            if response.status_code != 200:
                message = error_text(response)
                reason = await client.index_reason(name)
                if reason and reason not in message:
                    message = f"{message} ({reason})"
                await self._unload_quietly(name)
                raise RuntimeLoadError(f"Triton failed to load {name}: {message}")
            if name not in await client.ready_models():
                reason = await client.index_reason(name)
                await self._unload_quietly(name)
                raise RuntimeLoadError(f"Triton did not make {name} READY: {reason or 'no reason given'}")
            self._loaded.add(name)
            log.info("Triton loaded %s", name)

    def _write_entry(self, request: LoadRequest) -> Path:
        return model_repo.write_model_entry(
            self.repository, request.name, request.model_dir, request.profile,
            device_kind=request.device.kind, gpu_index=request.device.index,
            task=request.options.get("task") or request.profile.task,
            # A full install's onnxruntime backend runs ONNX natively (brain: same fact).
            native_onnx=self.own_server and "onnxruntime" in self.install.backends,
        )

    async def unload(self, name: str) -> None:
        """Unload and wait until the index says UNAVAILABLE (or the model is absent)."""
        async with self._lock(name):
            await self._unload_locked(name)

    async def _unload_locked(self, name: str) -> None:
        self._metadata.pop(name, None)
        self._loaded.discard(name)
        if self.own_server and (self._server is None or not self._server.alive):
            return  # nothing runs: nothing to unload
        if self._client is None:
            return
        client = self._require_client()
        try:
            response = await client.unload(name)
        except httpx.HTTPError as exc:
            if self._server_dead():
                return
            raise RuntimeUnavailableError(f"Triton unload of {name} failed: {exc}") from exc
        if response.status_code != 200:
            log.info("Triton unload of %s answered %d: %s", name, response.status_code, error_text(response))
        started = time.monotonic()
        await client.wait_unavailable(name, UNLOAD_TIMEOUT)
        log.info("Triton unloaded %s (UNAVAILABLE after %.2fs)", name, time.monotonic() - started)

    async def _unload_quietly(self, name: str) -> None:
        if self._client is not None:
            await self._client.unload_quietly(name)

    # ------------------------------------------------------------------ state

    async def repository_index(self) -> list[dict[str, Any]]:
        """The raw ``POST /v2/repository/index`` answer (name, version, state, reason)."""
        return await self._require_client().index()

    async def loaded_models(self) -> set[str]:
        """Models this manager loaded that Triton reports READY. ``set()`` only when they
        are really gone (the own server exited, or nothing was loaded); an index call that
        fails or times out while the server lives, or an unreachable external server,
        raises RuntimeUnavailableError (review finding 2b: one slow index call must not
        mark every Triton model crashed). A load that completes while the index call is
        pending counts as live: it was seen READY by that load."""
        if self.own_server and (self._server is None or not self._server.alive):
            self._note_server_exit()
            return set()
        if self._client is None:
            if self._loaded:
                raise RuntimeUnavailableError("the Triton manager is not started")
            return set()
        before = set(self._loaded)
        try:
            ready = await self._client.ready_models()
        except RuntimeUnavailableError:
            if self._server_dead():  # died during the call: the models are gone
                self._note_server_exit()
                return set()
            raise
        after = self._loaded
        return (ready & before & after) | (after - before)

    async def process_ids(self, name: str) -> list[int]:
        """The python-backend stubs of ``name`` (one per model instance); ``[]`` for an
        external server (not our processes) or a model inside the server process."""
        server = self._server
        if not self.own_server or server is None or not server.alive or name not in self._loaded:
            return []
        return await asyncio.to_thread(server.stub_pids, self.repository / name)

    def exit_reason(self, name: str) -> str | None:
        if self._server_dead():
            self._note_server_exit()
        return self._exit_reasons.get(name)

    def _note_server_exit(self) -> None:
        server = self._server
        if server is None or server.alive or not self._loaded:
            return
        why = (f"tritonserver (pid {server.pid}) exited with code {server.returncode}; "
               f"last log lines:\n{server.log_tail(LOG_TAIL_LINES)}")
        for name in self._loaded:
            self._exit_reasons.setdefault(name, why)
        log.warning("tritonserver died with code %s; lost: %s", server.returncode, ", ".join(sorted(self._loaded)))
        self._loaded.clear()
        self._metadata.clear()

    async def health(self) -> RuntimeHealth:
        where = f"own tritonserver ({self.install.executable})" if self.own_server and self.install \
            else f"Triton at {self.endpoint}"
        if self.own_server and (self._server is None or not self._server.alive):
            state = "not started" if self._server is None else f"exited with code {self._server.returncode}"
            return RuntimeHealth(False, f"{where}: {state}")
        if self._client is None:
            return RuntimeHealth(False, f"{where}: manager not started")
        problem = await self._client.server_ready()
        if problem is not None:
            return RuntimeHealth(False, f"{where}: {problem}")
        return RuntimeHealth(True, f"{where} at {self.base_url}; {len(self._loaded)} model(s) loaded")

    async def metrics_text(self) -> str:
        """Triton's Prometheus metrics (inference counts, queue/compute time, GPU memory)."""
        if self.own_server:
            if self._server is None or not self._server.alive:
                return ""
            url = self._server.metrics_url
        elif self.metrics_endpoint:
            url = self.metrics_endpoint if "://" in self.metrics_endpoint else f"http://{self.metrics_endpoint}/metrics"
        else:
            return ""
        client = self._client
        return await client.metrics(url) if client is not None and not client.http.is_closed else ""

    # ------------------------------------------------------------------ infer

    async def model_metadata(self, name: str) -> dict[str, Any]:
        cached = self._metadata.get(name)
        if cached is not None:
            return cached
        response = await self._request("GET", name, f"/v2/models/{name}")
        metadata = response.json()
        self._metadata[name] = metadata
        return metadata

    async def infer(self, name: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        if name not in self._loaded:
            raise ModelNotLoadedError(self._exit_reasons.get(name) or f"model {name!r} is not loaded in Triton")
        request = codec.infer_body(name, inputs, parameters, await self.model_metadata(name))
        response = await self._request("POST", name, f"/v2/models/{name}/infer", json=request.body)
        return codec.decode_outputs(response.json(), request)

    async def v2_metadata(self, name: str) -> dict[str, Any]:
        """Triton's own metadata of a loaded model (cached until it is unloaded)."""
        if name not in self._loaded:
            raise ModelNotLoadedError(self._exit_reasons.get(name) or f"model {name!r} is not loaded in Triton")
        return await self.model_metadata(name)

    async def v2_infer(self, name: str, body: bytes, header_length: int | None) -> V2Answer:
        """A client's v2 infer body relayed to Triton byte for byte (JSON or binary
        tensors, with the server's key added); Triton's answer classified like
        :meth:`infer`'s."""
        if name not in self._loaded:
            raise ModelNotLoadedError(self._exit_reasons.get(name) or f"model {name!r} is not loaded in Triton")
        response = await self._call(name, lambda client: client.infer_raw(name, body, header_length))
        raw_length = response.headers.get(HEADER_LENGTH)
        return V2Answer(response.content, response.headers.get("content-type", "application/json"),
                        int(raw_length) if raw_length and raw_length.isdigit() else None)

    async def _request(self, method: str, name: str, path: str, **kwargs: Any) -> httpx.Response:
        """One model call; Triton's answer classified by :meth:`TritonClient.check`."""
        return await self._call(name, lambda client: client.request(method, path, **kwargs))

    async def _call(self, name: str,
                    call: Callable[[TritonClient], Awaitable[httpx.Response]]) -> httpx.Response:
        """One model call (``call(client)`` gives Triton's response): a dead server, or one
        that died under the call, is ModelNotLoadedError, other transport failures
        RuntimeUnavailableError, the answer classified by :meth:`TritonClient.check`."""
        if self._server_dead():
            self._note_server_exit()
            raise ModelNotLoadedError(self._exit_reasons.get(name) or "tritonserver is gone")
        client = self._require_client()
        try:
            response = await call(client)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if self._server_dead():
                self._note_server_exit()
                raise ModelNotLoadedError(self._exit_reasons.get(name) or "tritonserver is gone") from exc
            raise RuntimeUnavailableError(f"Triton: {type(exc).__name__}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise RuntimeUnavailableError(f"Triton timed out on {name}: {type(exc).__name__}") from exc
        return await client.check(name, response)

    # ------------------------------------------------------------------ helpers

    def _gone_detail(self, exc: Exception) -> str:
        if self._server_dead():
            assert self._server is not None
            return (f"tritonserver exited with code {self._server.returncode}; "
                    f"last log lines:\n{self._server.log_tail()}")
        return f"{type(exc).__name__}: {exc}"

    def _require_client(self) -> TritonClient:
        if self._client is None or self._client.http.is_closed:
            raise RuntimeUnavailableError("the Triton manager is not started")
        return self._client

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

