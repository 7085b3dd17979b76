"""VllmManager: one supervised vLLM OpenAI server process per model.

vLLM cannot load or unload models at run time, so this manager maps the runtime interface
onto processes: ``load`` starts a server on a port of its own and returns when ``/health``
answers, ``unload`` stops it, ``loaded_models`` is the set of servers that became ready
and are still alive. The gateway talks OpenAI to :meth:`openai_base_url` directly
(streaming included); :meth:`infer` is only the ``POST /predict`` adapter, mapped onto
``/v1/completions`` (or ``/v1/chat/completions`` with ``chat: true``) and answering in
the same shape as the transformers predictor, so a client cannot tell which runtime
serves an LLM.

What the orchestrator passes in ``LoadRequest.options`` (all optional, so tests can call
``load`` directly): ``vllm`` (a VllmModelSettings, already merged with the model's
override), ``gpu_memory_utilization`` (the share from ``memory.vllm_memory``),
``kv_cache_bytes`` and ``gpu_indices``. Absent ones are derived the same way here.

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
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import psutil

from modelium.config.settings import VllmModelSettings
from modelium.runtimes.base import (
    AdoptionReport,
    LoadRequest,
    ModelNotLoadedError,
    RuntimeHealth,
    RuntimeLoadError,
    RuntimeManager,
    RuntimeUnavailableError,
)
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.vllm.command import API_SERVER_MODULE, build_command, build_env
from modelium.runtimes.vllm.install import VllmInstall
from modelium.runtimes.vllm.memory import effective_max_model_len, vllm_memory
from modelium.runtimes.vllm.ports import NoFreePortError, PortAllocator
from modelium.runtimes.vllm.server import LOG_TAIL_LINES, VllmServer

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 64
MAX_NEW_TOKENS_CAP = 32768
PORT_RETRIES = 2  # another program took the port between our bind test and vLLM's bind
_PORT_TAKEN_MARKERS = ("Address already in use", "address already in use", "Errno 98")

# Loopback only; long reads (a long generation on a CPU), short connects (a refused
# connection means the server is gone and must be reported at once).
_CLIENT_TIMEOUT = httpx.Timeout(connect=5.0, read=900.0, write=60.0, pool=60.0)


class VllmManager(RuntimeManager):
    """Loads a model by starting a vLLM server for it; see the module doc."""

    name = "vllm"

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
        their engine-core processes) are killed; their names are reported as removed."""
        removed = await asyncio.to_thread(self._kill_strays)
        return AdoptionReport(adopted=(), removed=tuple(sorted(removed)))

    # ------------------------------------------------------------------ load / unload

    async def load(self, request: LoadRequest) -> None:
        name = request.name
        async with self._lock(name):
            current = self._servers.get(name)
            if current is not None:
                if current.ready and current.alive:
                    log.info("vLLM server for %s already running (port %d)", name, current.port)
                    return
                await self._forget(name, current)  # dead: sweep it before starting anew
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

    async def _start_server(self, request: LoadRequest) -> None:
        name = request.name
        options = request.options or {}
        settings = _settings(options.get("vllm"), self.default_settings)
        if settings.max_model_len is not None:  # vLLM refuses more than the model's own
            settings = settings.model_copy(update={"max_model_len": effective_max_model_len(settings, request.profile)})
        device_kind = request.device.kind
        if device_kind == "gpu" and self.install.device != "cuda":
            raise RuntimeLoadError(f"the vLLM at {self.python} is a CPU build; it cannot serve on {request.device.id}")
        if device_kind == "cpu" and self.install.device == "cuda":
            raise RuntimeLoadError(f"the vLLM at {self.python} is a CUDA build; it cannot serve on the CPU")
        gpu_indices = list(options.get("gpu_indices") or
                           ([request.device.index] if device_kind == "gpu" and request.device.index is not None else []))
        share = options.get("gpu_memory_utilization")
        kv_bytes = options.get("kv_cache_bytes")
        if (device_kind == "gpu" and share is None) or kv_bytes is None:
            _, derived_share, derived_kv = vllm_memory(
                request.profile, settings, device_kind=device_kind,
                gpu_total_bytes=request.device.total_bytes if device_kind == "gpu" else None,
            )
            share = share if share is not None else derived_share
            kv_bytes = kv_bytes if kv_bytes is not None else derived_kv
        tensor_parallel = int(options.get("tensor_parallel_size") or max(1, len(gpu_indices)))

        try:
            port = self.ports.allocate()
        except NoFreePortError as exc:
            raise RuntimeLoadError(str(exc)) from exc
        try:
            command = build_command(
                self.python, request.model_dir, name, port, settings,
                device_kind=device_kind, gpu_memory_utilization=share, kv_cache_bytes=kv_bytes,
                tensor_parallel_size=tensor_parallel, extra_args=self.extra_args,
                model_dtype=request.profile.dtype,
            )
        except ValueError as exc:
            self.ports.release(port)
            raise RuntimeLoadError(f"cannot build the vLLM command for {name}: {exc}") from exc
        env = build_env(os.environ, gpu_indices=gpu_indices, cache_dir=self.cache_dir,
                        enable_sleep_mode=settings.park and device_kind == "gpu")
        log_path = self._log_path(name)
        _rotate(log_path)
        server = VllmServer(name, command, env, log_path, port, client=self._client, cwd=self.work_dir)
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
        live: set[str] = set()
        for name, server in list(self._servers.items()):
            if not server.ready:
                continue  # still starting
            if server.alive:
                live.add(name)
            else:
                await self._forget(name, server)
        return live

    def openai_base_url(self, name: str) -> str | None:
        server = self._servers.get(name)
        return server.base_url if server is not None and server.ready and server.alive else None

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

    async def park(self, name: str) -> float:
        """Sleep mode level 1 (GPU, ``park`` setting on): returns the seconds it took."""
        server = self._ready_server(name)
        if "--enable-sleep-mode" not in server.command:
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
        params = _validate_parameters(parameters)
        chat = params.pop("chat", False)
        if chat:
            conversations, single = _validate_conversations(inputs)
            if params.get("return_full_text"):
                raise BadRequestError("parameter 'return_full_text' cannot be used with chat")
            results = await asyncio.gather(*(
                self._post_completion(name, server, "/v1/chat/completions",
                                      {"model": name, "messages": messages, **_sampling(params)})
                for messages in conversations
            ))
            outputs = [_result(body["choices"][0], body, chat=True) for body in results]
        else:
            texts, single = _validate_inputs(inputs)
            body = await self._post_completion(
                name, server, "/v1/completions",
                {"model": name, "prompt": texts[0] if single else texts, "return_token_ids": True,
                 **_sampling(params)},
            )
            choices = sorted(body.get("choices", []), key=lambda c: c.get("index", 0))
            if len(choices) != len(texts):
                raise RuntimeUnavailableError(f"vLLM answered {len(choices)} choices for {len(texts)} prompts")
            outputs = [_result(choice, body if single else None) for choice in choices]
            if params.get("return_full_text"):
                for text, output in zip(texts, outputs, strict=True):
                    output["generated_text"] = text + output["generated_text"]
        return outputs[0] if single else outputs

    async def _post_completion(self, name: str, server: VllmServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._client is None:
            raise RuntimeUnavailableError("the vLLM manager is not started")
        try:
            response = await self._client.post(f"{server.base_url}{path}", json=body)
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
            raise BadRequestError(f"vLLM rejected the request: {_error_message(response)}")
        if response.status_code == 404:
            raise ModelNotLoadedError(f"vLLM server for {name}: {_error_message(response)}")
        if response.status_code != 200:
            raise RuntimeUnavailableError(
                f"vLLM server for {name} answered {response.status_code}: {_error_message(response)}"
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
        """Processes whose VLLM_CACHE_ROOT is ours but that no server of ours owns."""
        ours_root = str(self.cache_dir / "vllm")
        own_groups = {s.pid for s in self._servers.values() if s.pid is not None}
        strays: list[psutil.Process] = []
        names: list[str] = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.pid == os.getpid() or os.getpgid(proc.pid) in own_groups:
                    continue
                if proc.environ().get("VLLM_CACHE_ROOT") != ours_root:
                    continue
            except (psutil.Error, OSError):
                continue
            strays.append(proc)
            cmdline = proc.info.get("cmdline") or []
            if API_SERVER_MODULE in cmdline and "--served-model-name" in cmdline:
                index = cmdline.index("--served-model-name") + 1
                if index < len(cmdline):
                    names.append(cmdline[index])
        for proc in strays:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(strays, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        if strays:
            log.warning("killed %d vLLM process(es) left by an earlier run: %s",
                        len(strays), ", ".join(str(p.pid) for p in strays))
        return names


# ---------------------------------------------------------------------- request mapping


def _settings(value: Any, default: VllmModelSettings) -> VllmModelSettings:
    if value is None:
        return default
    if isinstance(value, VllmModelSettings):
        return value
    if isinstance(value, Mapping):
        return default.model_copy(update=dict(value))
    raise TypeError(f"options['vllm'] must be VllmModelSettings or a mapping, got {type(value).__name__}")


def _rotate(log_path: Path) -> None:
    """Keep the previous run's log as NAME.prev.log; the tail then shows this run only."""
    if log_path.exists():
        try:
            shutil.move(log_path, log_path.with_suffix(".prev.log"))
        except OSError:
            pass


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(f"parameter {name!r} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise BadRequestError(f"parameter {name!r} must be between {lo} and {hi}, got {value}")
    return value


def _check_float(name: str, value: Any, lo: float, hi: float, *, lo_inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequestError(f"parameter {name!r} must be a number, got {type(value).__name__}")
    value = float(value)
    if value != value or (value < lo if lo_inclusive else value <= lo) or value > hi:
        raise BadRequestError(f"parameter {name!r} must be in {'[' if lo_inclusive else '('}{lo}, {hi}], got {value}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequestError(f"parameter {name!r} must be a boolean, got {type(value).__name__}")
    return value


_PARAMETERS = {
    "max_new_tokens": lambda n, v: _check_int(n, v, 1, MAX_NEW_TOKENS_CAP),
    "temperature": lambda n, v: _check_float(n, v, 0.0, 100.0, lo_inclusive=True),
    "top_p": lambda n, v: _check_float(n, v, 0.0, 1.0, lo_inclusive=False),
    "do_sample": _check_bool,
    "return_full_text": _check_bool,
    "chat": _check_bool,
}


def _validate_parameters(parameters: Any) -> dict[str, Any]:
    """Same names as the transformers predictor's text-generation parameters."""
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise BadRequestError(f"parameters must be an object, got {type(parameters).__name__}")
    unknown = sorted(set(parameters) - set(_PARAMETERS))
    if unknown:
        raise BadRequestError(f"unknown parameter(s) for text-generation: {unknown}; accepted: {sorted(_PARAMETERS)}")
    return {key: _PARAMETERS[key](key, value) for key, value in parameters.items()}


def _sampling(params: Mapping[str, Any]) -> dict[str, Any]:
    """Greedy unless sampling is asked for, like the transformers predictor: passing
    temperature/top_p implies sampling, ``do_sample: false`` forces greedy."""
    body: dict[str, Any] = {"max_tokens": params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)}
    wants_sampling = "temperature" in params or "top_p" in params
    if params.get("do_sample", wants_sampling):
        body["temperature"] = params.get("temperature", 1.0)
        if "top_p" in params:
            body["top_p"] = params["top_p"]
    else:
        body["temperature"] = 0.0
    return body


def _validate_inputs(inputs: Any) -> tuple[list[str], bool]:
    if isinstance(inputs, str):
        return [inputs], True
    if isinstance(inputs, list) and inputs and all(isinstance(x, str) for x in inputs):
        return list(inputs), False
    raise BadRequestError("inputs must be a string or a non-empty list of strings")


def _validate_conversations(inputs: Any) -> tuple[list[list[dict[str, str]]], bool]:
    """chat inputs: one conversation (a list of {role, content}) or a list of them."""
    def is_message(m: Any) -> bool:
        return isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)

    if isinstance(inputs, list) and inputs and all(is_message(m) for m in inputs):
        return [[dict(m) for m in inputs]], True
    if (isinstance(inputs, list) and inputs and all(isinstance(c, list) and c for c in inputs)
            and all(is_message(m) for c in inputs for m in c)):
        return [[dict(m) for m in c] for c in inputs], False
    raise BadRequestError("with chat, inputs must be a list of {role, content} messages or a list of such lists")


def _result(choice: Mapping[str, Any], body: Mapping[str, Any] | None, *, chat: bool = False) -> dict[str, Any]:
    """One vLLM choice in the transformers predictor's shape. Token counts come from
    ``token_ids`` (asked for with ``return_token_ids``) or, for one prompt, the usage."""
    if chat:
        text = (choice.get("message") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
    token_ids = choice.get("token_ids")
    if isinstance(token_ids, list):
        count = len(token_ids)
    elif body is not None:
        count = int((body.get("usage") or {}).get("completion_tokens") or 0)
    else:
        count = 0
    return {
        "generated_text": text,
        "num_generated_tokens": count,
        "finish_reason": "length" if choice.get("finish_reason") == "length" else "stop",
    }


def _error_message(response: httpx.Response) -> str:
    """vLLM's message from ``{"error": {"message"}}`` or the older ``{"message"}``."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(data, Mapping):
        error = data.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if data.get("message"):
            return str(data["message"])
        if data.get("detail"):
            return str(data["detail"])
    return response.text[:500]
