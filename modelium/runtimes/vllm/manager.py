"""VllmManager: one supervised vLLM OpenAI server process per model instance.

vLLM cannot load or unload models at run time, so this manager maps the runtime interface
onto processes: ``load`` starts a server on a port of its own and returns when ``/health``
answers, ``unload`` stops it, ``loaded_models`` is the set of servers that became ready
and are still alive. The gateway talks OpenAI to :meth:`openai_base_url` directly
(streaming included); :meth:`infer` is only the ``POST /predict`` adapter (:mod:`.predict`).

Keys: each server gets its own random key (``auth.py``): in its environment
(``VLLM_API_KEY``), on every call this manager makes, and handed to the gateway through
:meth:`upstream_headers`; without it the server answers 401 on every path but ``/health``.

Names: servers, ports and log files are keyed by the *instance key* (``LoadRequest.name``:
``NAME`` or ``NAME.REVn`` for a re-dropped version running beside the old one); vLLM's
``--served-model-name`` is the public name (``request.public_name``), the one clients
send in OpenAI requests, so a new version answers under the same name.

What the orchestrator passes in ``LoadRequest.options`` (all optional, so tests can call
``load`` directly): ``vllm`` (a VllmModelSettings, already merged with the model's
override), ``gpu_memory_utilization`` (the share from ``memory.vllm_memory``),
``kv_cache_bytes`` and ``gpu_indices``. Absent ones are derived the same way here.

Parking (:attr:`Capability.PARK`): a server started with sleep mode (``park`` setting,
on a GPU) can sleep (level 1: weights to host RAM, ~1.6 GB kept on the GPU) and wake in
a fraction of a second. ``load`` of a model whose server is still alive reuses it only
when it is the same model on the same device: a sleeping one is woken (and when waking
fails it is stopped and a fresh one started), never reported "already running" asleep
(review finding 7).

Crashes: a server that dies after it was ready is noticed by :meth:`loaded_models` (or a
failed :meth:`infer`); its process group is swept, its port freed, and
:meth:`exit_reason` keeps "exited with code X; last log lines: ..." until the model is
loaded again. Restarting (with back-off) is the orchestrator's job.

Threads: :meth:`load` spawns the server on the calling thread, which must be the
long-lived event-loop thread (the parent-death signal fires when the spawning *thread*
exits). Never call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import httpx

from modelium.config.settings import VllmModelSettings
from modelium.runtimes.base import (
    AdoptionReport,
    Capability,
    LoadRequest,
    ModelNotLoadedError,
    RuntimeHealth,
    RuntimeLoadError,
    RuntimeManager,
    RuntimeUnavailableError,
)
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.vllm import predict
from modelium.runtimes.vllm.command import build_command, build_env
from modelium.runtimes.vllm.install import VllmInstall
from modelium.runtimes.vllm.memory import PARK_RESIDUE_BYTES, launch_plan
from modelium.runtimes.vllm.ports import NoFreePortError, PortAllocator
from modelium.runtimes.vllm.auth import new_api_key
from modelium.runtimes.vllm.server import LOG_TAIL_LINES, VllmServer, rotate_log
from modelium.runtimes.vllm.strays import INSTANCE_ENV, kill_strays

log = logging.getLogger(__name__)

PORT_RETRIES = 2  # another program took the port between our bind test and vLLM's bind
_PORT_TAKEN_MARKERS = ("Address already in use", "address already in use", "Errno 98")

# Loopback only; long reads (a long generation on a CPU), short connects (a refused
# connection means the server is gone and must be reported at once).
_CLIENT_TIMEOUT = httpx.Timeout(connect=5.0, read=900.0, write=60.0, pool=60.0)


class VllmManager(RuntimeManager):
    """Loads a model by starting a vLLM server for it; see the module doc."""

    name = "vllm"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.PARK})

    def __init__(
        self,
        *,
        python: Path,
        install: VllmInstall,
        base_port: int,
        state_dir: Path,
        default_settings: VllmModelSettings,
        extra_args: list[str],
        startup_timeout_seconds: float,
        port_span: int = 1000,
    ) -> None:
        self.python = Path(python)
        self.install = install
        self.state_dir = Path(state_dir)
        self.default_settings = default_settings
        self.extra_args = list(extra_args)
        self.startup_timeout_seconds = startup_timeout_seconds
        self.ports = PortAllocator(base_port, span=port_span)
        self.work_dir = self.state_dir / "vllm"
        self.log_dir = self.work_dir / "logs"
        self.cache_dir = self.work_dir / "cache"
        self._servers: dict[str, VllmServer] = {}
        self._exit_reasons: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._client: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the work folders and the one shared HTTP client. Idempotent."""
        for folder in (self.log_dir, self.cache_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(
                timeout=_CLIENT_TIMEOUT, trust_env=False,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )

    async def stop(self) -> None:
        """Stop every server (in parallel) and close the client."""
        servers = list(self._servers.items())
        self._servers.clear()
        if servers:
            await asyncio.gather(*(self._stop_server(server) for _, server in servers))
            log.info("stopped %d vLLM server(s): %s", len(servers), ", ".join(n for n, _ in servers))
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def adopt(self, known_models: dict[str, Path]) -> AdoptionReport:
        """Nothing is adopted: servers die with the daemon (parent-death signal). As a
        safety net, servers of this state dir still running from an earlier daemon (and
        their engine-core processes) are killed; their instance keys are reported as removed."""
        removed = await asyncio.to_thread(self._kill_strays)
        return AdoptionReport(adopted=(), removed=tuple(sorted(removed)))

    # ------------------------------------------------------------------ load / unload

    async def load(self, request: LoadRequest) -> None:
        name = request.name
        async with self._lock(name):
            current = self._servers.get(name)
            if current is not None:
                if await self._reuse(current, request):
                    return
                await self._retire(name, current)
            self._exit_reasons.pop(name, None)
            await self.start()
            last_error: RuntimeLoadError | None = None
            for _ in range(1 + PORT_RETRIES):
                try:
                    await self._start_server(request)
                    return
                except RuntimeLoadError as exc:
                    last_error = exc
                    if not any(marker in str(exc) for marker in _PORT_TAKEN_MARKERS):
                        raise
                    log.warning("vLLM server for %s lost its port to another program; retrying", name)
            assert last_error is not None
            raise last_error

    async def _reuse(self, server: VllmServer, request: LoadRequest) -> bool:
        """Whether the live ``server`` can serve ``request`` as it is (woken if asleep).
        A server of another folder, public name or device is never reused: after a
        refused wake the model may have been placed elsewhere (review finding 7)."""
        if not (server.ready and server.alive):
            return False
        wanted = (Path(request.model_dir), request.public_name, request.device.id)
        if (server.model_dir, server.served_name, server.device_id) != wanted:
            log.info("vLLM server for %s runs %s as %r on %s; restarting it for %s as %r on %s",
                     request.name, server.model_dir, server.served_name, server.device_id, *wanted)
            return False
        if server.sleep_mode and (server.parked or await server.asleep()):
            try:
                seconds = await server.wake()
            except Exception as exc:  # noqa: BLE001 - a server that cannot wake is replaced
                log.warning("waking the parked vLLM server for %s failed (%s); starting a fresh one",
                            request.name, exc)
                return False
            log.info("woke the parked vLLM server for %s in %.2fs", request.name, seconds)
            return True
        log.info("vLLM server for %s already running (port %d)", request.name, server.port)
        return True

    async def _retire(self, name: str, server: VllmServer) -> None:
        """Make way for a fresh server: a dead one is swept (its exit reason kept), a
        live one (asleep, or serving something else) is stopped."""
        if server.ready and not server.alive:
            await self._forget(name, server)
            return
        if self._servers.get(name) is server:
            del self._servers[name]
        await self._stop_server(server)

    async def _start_server(self, request: LoadRequest) -> None:
        name = request.name
        device_kind = request.device.kind
        if device_kind == "gpu" and self.install.device != "cuda":
            raise RuntimeLoadError(f"the vLLM at {self.python} is a CPU build; it cannot serve on {request.device.id}")
        if device_kind == "cpu" and self.install.device == "cuda":
            raise RuntimeLoadError(f"the vLLM at {self.python} is a CUDA build; it cannot serve on the CPU")
        plan = launch_plan(request.profile, request.device, request.options or {}, self.default_settings)
        try:
            port = self.ports.allocate()
        except NoFreePortError as exc:
            raise RuntimeLoadError(str(exc)) from exc
        try:
            command = build_command(
                self.python, request.model_dir, request.public_name, port, plan.settings,
                device_kind=device_kind, gpu_memory_utilization=plan.share, kv_cache_bytes=plan.kv_bytes,
                tensor_parallel_size=plan.tensor_parallel, extra_args=self.extra_args,
                model_dtype=request.profile.dtype,
            )
        except ValueError as exc:
            self.ports.release(port)
            raise RuntimeLoadError(f"cannot build the vLLM command for {name}: {exc}") from exc
        api_key = new_api_key()  # this server's own; in its environment, never on its argv
        env = build_env(os.environ, gpu_indices=plan.gpu_indices, cache_dir=self.cache_dir,
                        enable_sleep_mode=plan.sleep_mode, api_key=api_key)
        env[INSTANCE_ENV] = name
        log_path = self._log_path(name)
        rotate_log(log_path)
        server = VllmServer(name, command, env, log_path, port, client=self._client, cwd=self.work_dir,
                            served_name=request.public_name, model_dir=Path(request.model_dir),
                            device_id=request.device.id, device_kind=device_kind, sleep_mode=plan.sleep_mode,
                            api_key=api_key)
        try:
            server.start()  # on this (the event-loop) thread: see the module doc
        except OSError as exc:
            self.ports.release(port)
            raise RuntimeLoadError(f"cannot start vLLM ({self.python}) for {name}: {exc}") from exc
        self._servers[name] = server
        try:
            await server.wait_ready(self.startup_timeout_seconds)
        except BaseException as exc:  # includes cancellation: never leave a half-started server
            self._servers.pop(name, None)
            await asyncio.shield(self._stop_server(server))
            if isinstance(exc, RuntimeLoadError | asyncio.CancelledError):
                raise
            raise RuntimeLoadError(f"vLLM server for {name} failed to start: {exc!r}") from exc

    async def unload(self, name: str) -> None:
        async with self._lock(name):
            server = self._servers.pop(name, None)
            if server is not None:
                await self._stop_server(server)
                log.info("unloaded %s: vLLM server stopped (exit %s)", name, server.returncode)

    async def _stop_server(self, server: VllmServer) -> None:
        try:
            await asyncio.to_thread(server.stop)
        finally:
            self.ports.release(server.port)

    async def _forget(self, name: str, server: VllmServer) -> None:
        """A dead server: record why, sweep its group, free its port."""
        self._note_exit(name, server)
        if self._servers.get(name) is server:
            del self._servers[name]
        await self._stop_server(server)

    def _note_exit(self, name: str, server: VllmServer) -> None:
        if server.ready and name not in self._exit_reasons:
            self._exit_reasons[name] = (
                f"vLLM server for {name} exited with code {server.returncode}; "
                f"last log lines:\n{server.log_tail(LOG_TAIL_LINES)}"
            )
            log.warning("vLLM server for %s (pid %s) died with code %s", name, server.pid, server.returncode)

    # ------------------------------------------------------------------ state

    async def loaded_models(self) -> set[str]:
        """Servers that became ready and are alive (a parked one included: it is loaded);
        the process table is always known, so this never raises."""
        live: set[str] = set()
        for name, server in list(self._servers.items()):
            if not server.ready:
                continue  # still starting
            if server.alive:
                live.add(name)
            else:
                await self._forget(name, server)
        return live

    async def process_ids(self, name: str) -> list[int]:
        """The API server's pid (its engine core is a child: footprints count descendants)."""
        server = self._servers.get(name)
        return [server.pid] if server is not None and server.pid is not None and server.alive else []

    def openai_base_url(self, name: str) -> str | None:
        server = self._servers.get(name)
        return server.base_url if server is not None and server.ready and server.alive else None

    def upstream_headers(self, name: str) -> dict[str, str]:
        """``Authorization: Bearer <the server's own key>`` (see ``auth.py``)."""
        server = self._servers.get(name)
        return server.headers if server is not None else {}

    def server_port(self, name: str) -> int | None:
        server = self._servers.get(name)
        return server.port if server is not None else None

    def server_pid(self, name: str) -> int | None:
        server = self._servers.get(name)
        return server.pid if server is not None and server.alive else None

    def exit_reason(self, name: str) -> str | None:
        server = self._servers.get(name)
        if server is not None and server.ready and not server.alive:
            self._note_exit(name, server)  # noticed here first; loaded_models sweeps it
        return self._exit_reasons.get(name)

    async def health(self) -> RuntimeHealth:
        if not self.python.exists():
            return RuntimeHealth(False, f"vLLM interpreter {self.python} is gone")
        running = [n for n, s in self._servers.items() if s.ready and s.alive]
        return RuntimeHealth(
            True,
            f"vLLM {self.install.version} ({self.install.device}) at {self.python}; "
            f"{len(running)} server(s) running" + (f": {', '.join(sorted(running))}" if running else ""),
        )

    # ------------------------------------------------------------------ park / wake

    def park_residue_bytes(self, name: str) -> int | None:
        """~1.6 GB for a live server started with sleep mode on a GPU, else None."""
        server = self._servers.get(name)
        if server is None or not (server.ready and server.alive) or not server.sleep_mode:
            return None
        return PARK_RESIDUE_BYTES if server.device_kind == "gpu" else None

    async def park(self, name: str) -> float:
        """Sleep mode level 1 (GPU, ``park`` setting on): returns the seconds it took."""
        server = self._ready_server(name)
        if not server.sleep_mode:
            raise RuntimeError(f"{name} was not started with park enabled (GPU only)")
        return await server.park()

    async def wake(self, name: str) -> float:
        return await self._ready_server(name).wake()

    def is_parked(self, name: str) -> bool:
        server = self._servers.get(name)
        return bool(server is not None and server.parked)

    # ------------------------------------------------------------------ infer (/predict)

    async def infer(self, name: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        """``/predict`` for an LLM: -> {"generated_text", "num_generated_tokens",
        "finish_reason"} (a list of them for a list of inputs)."""
        server = self._ready_server(name)
        calls = predict.plan_calls(server.served_name, inputs, parameters)  # validates first
        answers = await asyncio.gather(*(self._post_completion(name, server, path, body) for path, body in calls.requests))
        return calls.outputs(answers)

    async def _post_completion(self, name: str, server: VllmServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._client is None:
            raise RuntimeUnavailableError("the vLLM manager is not started")
        try:
            response = await self._client.post(f"{server.base_url}{path}", json=body, headers=server.headers)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if not server.alive:
                await self._forget(name, server)
                raise ModelNotLoadedError(self._exit_reasons.get(name) or f"vLLM server for {name} is gone") from exc
            if isinstance(exc, httpx.ConnectError):
                raise ModelNotLoadedError(f"vLLM server for {name} refused the connection: {exc}") from exc
            raise RuntimeUnavailableError(f"vLLM server for {name}: {type(exc).__name__}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise RuntimeUnavailableError(f"vLLM server for {name} timed out: {type(exc).__name__}") from exc
        if response.status_code == 400 or response.status_code == 422:
            raise BadRequestError(f"vLLM rejected the request: {predict.error_message(response)}")
        if response.status_code == 404:
            raise ModelNotLoadedError(f"vLLM server for {name}: {predict.error_message(response)}")
        if response.status_code != 200:
            raise RuntimeUnavailableError(
                f"vLLM server for {name} answered {response.status_code}: {predict.error_message(response)}"
            )
        return response.json()

    # ------------------------------------------------------------------ helpers

    def _ready_server(self, name: str) -> VllmServer:
        server = self._servers.get(name)
        if server is None or not server.ready:
            raise ModelNotLoadedError(f"model {name!r} is not loaded in vLLM")
        if not server.alive:
            self._note_exit(name, server)
            raise ModelNotLoadedError(self._exit_reasons.get(name) or f"vLLM server for {name} is gone")
        return server

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _log_path(self, name: str) -> Path:
        return self.log_dir / f"{name.replace('/', '_')}.log"

    def _kill_strays(self) -> list[str]:
        return kill_strays(self.cache_dir / "vllm", (s.pid for s in self._servers.values() if s.pid is not None))

