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

Client: plain ``httpx`` against Triton's KServe-v2 HTTP/JSON API rather than
``tritonclient[http]``: the project already depends on httpx, its client is natively
async (tritonclient's sync client is gevent-based, its aio client pulls aiohttp), and the
handful of calls needed (load, unload, index, metadata, infer, health, metrics) are plain
JSON; Triton's error bodies (``{"error": ...}``) are surfaced verbatim.

Load: the entry is written by ``model_repo.write_model_entry`` (config.pbtxt + ``1/``),
then ``POST /v2/repository/models/NAME/load``; in explicit mode that call returns when the
load finished or failed, and a failure's message is Triton's own (e.g. the python
model's exception). Unload: ``POST .../unload`` returns at once; the model really goes
(stub process gone, memory freed) ~1-1.5 s later, so :meth:`unload` polls
``POST /v2/repository/index`` until the model is UNAVAILABLE or absent.

Crashes: if the own server dies, :meth:`loaded_models` is empty and :meth:`exit_reason`
says why (exit code + log tail) for each model that was loaded; the next :meth:`load`
restarts the server first (:meth:`restart_server`), and the orchestrator's crash handling
loads the lost models again one by one.

Threads: the own server is spawned on the calling thread, which must be the event-loop
thread (parent-death signal); never call :meth:`start`/:meth:`load` via ``to_thread``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

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
from modelium.runtimes.triton.install import TritonInstall
from modelium.runtimes.triton.server import LOG_TAIL_LINES, TritonServer

log = logging.getLogger(__name__)

UNLOAD_TIMEOUT = 120.0
INDEX_POLL_INTERVAL = 0.1
_CLIENT_TIMEOUT = httpx.Timeout(connect=5.0, read=900.0, write=60.0, pool=60.0)

#: Triton datatype -> numpy dtype (BYTES handled apart).
_NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BF16": np.float32,
}
#: Inputs of the python-backend HF models that model_repo writes.
TEXT_INPUT = "TEXT"
PARAMETERS_INPUT = "PARAMETERS"
_NOT_LOADED_MARKERS = ("unknown model", "is not ready", "is not found", "not found")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:2000] or f"HTTP {response.status_code}"
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return response.text[:2000]


class TritonManager(RuntimeManager):
    """Loads models into one Triton server; see the module doc."""

    name = "triton"

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
        self._client: httpx.AsyncClient | None = None
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
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(
                timeout=_CLIENT_TIMEOUT, trust_env=False,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
        async with self._server_lock:
            if self.own_server:
                if self._server is None or not self._server.alive:
                    await self._start_server()
            else:
                await self._wait_external_ready()

    async def _wait_external_ready(self) -> None:
        assert self._client is not None
        deadline = time.monotonic() + self.startup_timeout_seconds
        last = ""
        while True:
            try:
                response = await self._client.get(f"{self.base_url}/v2/health/ready", timeout=5.0)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {_error_text(response)}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise RuntimeUnavailableError(f"Triton at {self.endpoint} is not ready: {last}")
            await asyncio.sleep(0.5)

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

    async def restart_server(self) -> None:
        """Replace a dead (or live) own server with a fresh one. Models it had are lost
        (their exit reasons are recorded); the orchestrator loads them again."""
        if not self.own_server:
            raise RuntimeError("an external Triton server is not restarted by Modelium")
        async with self._server_lock:
            self._note_server_exit()
            self.restarts += 1
            log.warning("restarting tritonserver (restart #%d)", self.restarts)
            await self._start_server()

    async def stop(self) -> None:
        """Own server: stop it and every stub (nothing unloaded first: the processes go).
        External server: unload what this manager loaded. Then close the client."""
        if self.own_server:
            # Close our keep-alive connections first: tritonserver's SIGTERM handler waits
            # (up to --exit-timeout-secs) for open HTTP connections to go away.
            if self._client is not None:
                await self._client.aclose()
                self._client = None
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
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def adopt(self, known_models: dict[str, Path]) -> AdoptionReport:
        """External server: models already READY there whose name is known are adopted.
        Own server: a fresh server has nothing loaded, nothing to adopt."""
        if self.own_server:
            return AdoptionReport()
        await self.start()
        ready = await self._ready_in_index()
        adopted = sorted(name for name in ready if name in known_models)
        self._loaded.update(adopted)
        return AdoptionReport(adopted=tuple(adopted), removed=())

    # ------------------------------------------------------------------ load / unload

    async def load(self, request: LoadRequest) -> None:
        name = request.name
        async with self._lock(name):
            if self._server_dead():
                await self.restart_server()
            await self.start()
            if name in self._loaded:  # model_repo must not rewrite an entry Triton has loaded
                await self._unload_locked(name)
            self._exit_reasons.pop(name, None)
            self._metadata.pop(name, None)
            try:
                await asyncio.to_thread(self._write_entry, request)
            except RuntimeLoadError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to write is the model's reason
                raise RuntimeLoadError(f"cannot write the Triton model entry for {name}: {exc}") from exc
            client = self._require_client()
            try:
                response = await client.post(f"{self.base_url}/v2/repository/models/{name}/load",
                                             json={}, timeout=self.load_timeout_seconds)
            except httpx.TimeoutException as exc:
                await self._unload_quietly(name)
                raise RuntimeLoadError(f"Triton did not load {name} within {self.load_timeout_seconds:.0f}s") from exc
            except httpx.HTTPError as exc:
                raise RuntimeLoadError(f"Triton load of {name} failed: {self._gone_detail(exc)}") from exc
            if response.status_code != 200:
                message = _error_text(response)
                reason = await self._index_reason(name)
                if reason and reason not in message:
                    message = f"{message} ({reason})"
                await self._unload_quietly(name)
                raise RuntimeLoadError(f"Triton failed to load {name}: {message}")
            if name not in await self._ready_in_index():
                reason = await self._index_reason(name)
                await self._unload_quietly(name)
                raise RuntimeLoadError(f"Triton did not make {name} READY: {reason or 'no reason given'}")
            self._loaded.add(name)
            log.info("Triton loaded %s", name)

    def _write_entry(self, request: LoadRequest) -> Path:
        try:
            from modelium.runtimes.triton import model_repo
        except ImportError:
            return _copy_own_config_entry(self.repository, request.name, request.model_dir)
        return model_repo.write_model_entry(
            self.repository, request.name, request.model_dir, request.profile,
            device_kind=request.device.kind, gpu_index=request.device.index,
            task=request.options.get("task") or request.profile.task,
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
            response = await client.post(f"{self.base_url}/v2/repository/models/{name}/unload", json={})
        except httpx.HTTPError as exc:
            if self._server_dead():
                return
            raise RuntimeUnavailableError(f"Triton unload of {name} failed: {exc}") from exc
        if response.status_code != 200:
            log.info("Triton unload of %s answered %d: %s", name, response.status_code, _error_text(response))
        started = time.monotonic()
        await self._wait_unavailable(name, UNLOAD_TIMEOUT)
        log.info("Triton unloaded %s (UNAVAILABLE after %.2fs)", name, time.monotonic() - started)

    async def _wait_unavailable(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            entries = await self._index()
            state = next((e.get("state") for e in entries if e.get("name") == name), None)
            if state in (None, "UNAVAILABLE"):
                return
            if time.monotonic() >= deadline:
                raise RuntimeUnavailableError(f"Triton still reports {name} as {state} {timeout:.0f}s after unload")
            await asyncio.sleep(INDEX_POLL_INTERVAL)

    async def _unload_quietly(self, name: str) -> None:
        try:
            client = self._require_client()
            await client.post(f"{self.base_url}/v2/repository/models/{name}/unload", json={})
            await self._wait_unavailable(name, 30.0)
        except Exception as exc:  # noqa: BLE001 - cleanup after a failure
            log.debug("cleanup unload of %s: %s", name, exc)

    # ------------------------------------------------------------------ state

    async def _index(self) -> list[dict[str, Any]]:
        client = self._require_client()
        try:
            response = await client.post(f"{self.base_url}/v2/repository/index", json={}, timeout=10.0)
        except httpx.HTTPError as exc:
            raise RuntimeUnavailableError(f"Triton repository index failed: {self._gone_detail(exc)}") from exc
        if response.status_code != 200:
            raise RuntimeUnavailableError(f"Triton repository index answered {response.status_code}: "
                                          f"{_error_text(response)}")
        body = response.json()
        return body if isinstance(body, list) else []

    async def _ready_in_index(self) -> set[str]:
        return {e["name"] for e in await self._index() if e.get("state") == "READY" and "name" in e}

    async def _index_reason(self, name: str) -> str:
        try:
            entries = await self._index()
        except RuntimeUnavailableError:
            return ""
        return next((str(e.get("reason") or "") for e in entries if e.get("name") == name), "")

    async def repository_index(self) -> list[dict[str, Any]]:
        """The raw ``POST /v2/repository/index`` answer (name, version, state, reason)."""
        return await self._index()

    async def loaded_models(self) -> set[str]:
        if self.own_server and (self._server is None or not self._server.alive):
            self._note_server_exit()
            return set()
        if self._client is None:
            return set()
        try:
            ready = await self._ready_in_index()
        except RuntimeUnavailableError as exc:
            if self._server_dead():
                self._note_server_exit()
            else:
                log.warning("Triton index unavailable: %s", exc)
            return set()
        return ready & self._loaded

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
        try:
            response = await self._client.get(f"{self.base_url}/v2/health/ready", timeout=5.0)
        except httpx.HTTPError as exc:
            return RuntimeHealth(False, f"{where}: {type(exc).__name__}: {exc}")
        if response.status_code != 200:
            return RuntimeHealth(False, f"{where}: not ready (HTTP {response.status_code})")
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
        client = self._require_client()
        try:
            response = await client.get(url, timeout=10.0)
        except httpx.HTTPError as exc:
            log.debug("Triton metrics unavailable: %s", exc)
            return ""
        return response.text if response.status_code == 200 else ""

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
        metadata = await self.model_metadata(name)
        declared_inputs = metadata.get("inputs") or []
        text_mode = isinstance(inputs, str) or (
            isinstance(inputs, list) and inputs and all(isinstance(x, str) for x in inputs))
        send_parameters = bool(parameters)
        if text_mode:
            spec = _text_input(declared_inputs)
            if spec is None:
                raise BadRequestError(
                    f"model {name} takes named tensors {[i.get('name') for i in declared_inputs]}, not text; "
                    'send inputs as {"INPUT_NAME": nested list}')
            texts = [inputs] if isinstance(inputs, str) else list(inputs)
            rank = max(1, len(spec.get("shape") or [-1]))
            shape = [len(texts)] + [1] * (rank - 1)
            tensors = [{"name": spec["name"], "shape": shape, "datatype": "BYTES", "data": texts}]
            params_spec = next((i for i in declared_inputs if i.get("name") == PARAMETERS_INPUT
                                and i.get("datatype") == "BYTES"), None)
            if parameters and params_spec is not None:  # the generated HF models: JSON per row
                p_rank = max(1, len(params_spec.get("shape") or [-1]))
                # one copy per row: Triton wants every input of a batched request at one batch size
                tensors.append({"name": PARAMETERS_INPUT, "shape": [len(texts)] + [1] * (p_rank - 1),
                                "datatype": "BYTES", "data": [json.dumps(parameters)] * len(texts)})
                send_parameters = False
        elif isinstance(inputs, dict):
            tensors = _named_tensors(name, inputs, declared_inputs)
        else:
            raise BadRequestError("inputs must be a string, a list of strings, or {\"INPUT_NAME\": nested list}")
        body: dict[str, Any] = {"inputs": tensors}
        if send_parameters:
            bad = [k for k, v in parameters.items() if not isinstance(v, str | int | float | bool)]
            if bad:
                raise BadRequestError(f"Triton parameters must be scalars (string, number, bool): {bad}")
            body["parameters"] = dict(parameters)
        response = await self._request("POST", name, f"/v2/models/{name}/infer", json=body)
        outputs = {out["name"]: out for out in response.json().get("outputs", [])}
        if text_mode:
            return _text_outputs(outputs, single=isinstance(inputs, str))
        return {out_name: _output_array(out) for out_name, out in outputs.items()}

    async def _request(self, method: str, name: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._server_dead():
            self._note_server_exit()
            raise ModelNotLoadedError(self._exit_reasons.get(name) or "tritonserver is gone")
        client = self._require_client()
        try:
            response = await client.request(method, f"{self.base_url}{path}", **kwargs)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if self._server_dead():
                self._note_server_exit()
                raise ModelNotLoadedError(self._exit_reasons.get(name) or "tritonserver is gone") from exc
            raise RuntimeUnavailableError(f"Triton: {type(exc).__name__}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise RuntimeUnavailableError(f"Triton timed out on {name}: {type(exc).__name__}") from exc
        if response.status_code == 200:
            return response
        message = _error_text(response)
        if response.status_code == 404 or any(m in message.lower() for m in _NOT_LOADED_MARKERS):
            raise ModelNotLoadedError(f"Triton: {message}")
        if response.status_code == 400:
            raise BadRequestError(f"Triton rejected the request: {message}")
        raise RuntimeUnavailableError(f"Triton answered {response.status_code} for {name}: {message}")

    # ------------------------------------------------------------------ helpers

    def _gone_detail(self, exc: Exception) -> str:
        if self._server_dead():
            assert self._server is not None
            return (f"tritonserver exited with code {self._server.returncode}; "
                    f"last log lines:\n{self._server.log_tail()}")
        return f"{type(exc).__name__}: {exc}"

    def _require_client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            raise RuntimeUnavailableError("the Triton manager is not started")
        return self._client

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())


def _named_tensors(model: str, inputs: dict[str, Any], declared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {spec["name"]: spec for spec in declared}
    unknown = sorted(set(inputs) - set(by_name))
    if unknown:
        raise BadRequestError(f"model {model} has no input(s) {unknown}; its inputs are {sorted(by_name)}")
    tensors = []
    for input_name, value in inputs.items():
        datatype = by_name[input_name]["datatype"]
        try:
            if datatype == "BYTES":
                array = np.asarray(value, dtype=object)
                if array.size and not all(isinstance(x, str) for x in array.flat):
                    raise ValueError("BYTES inputs must be strings")
                data = [str(x) for x in array.flat]
            else:
                array = np.asarray(value, dtype=_NUMPY_TYPES[datatype])
                data = array.reshape(-1).tolist()
        except KeyError as exc:
            raise BadRequestError(f"input {input_name}: datatype {datatype} is not supported over JSON") from exc
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequestError(f"input {input_name} is not a valid {datatype} tensor: {exc}") from exc
        tensors.append({"name": input_name, "shape": list(array.shape), "datatype": datatype, "data": data})
    return tensors


def _text_input(declared: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The BYTES input text goes to: ``TEXT`` (the generated HF models, which may also take
    an optional ``PARAMETERS``), else the model's only input when it is BYTES."""
    for spec in declared:
        if spec.get("name") == TEXT_INPUT and spec.get("datatype") == "BYTES":
            return spec
    if len(declared) == 1 and declared[0].get("datatype") == "BYTES":
        return declared[0]
    return None


def _output_array(output: dict[str, Any]) -> Any:
    data = output.get("data", [])
    shape = output.get("shape") or [len(data)]
    if output.get("datatype") == "BYTES":
        return np.asarray(data, dtype=object).reshape(shape).tolist()
    return np.asarray(data).reshape(shape).tolist()


def _text_outputs(outputs: dict[str, dict[str, Any]], *, single: bool) -> Any:
    """The generated python-backend models answer one BYTES tensor of JSON per item."""
    decoded: dict[str, list[Any]] = {}
    for out_name, out in outputs.items():
        items = list(np.asarray(out.get("data", []), dtype=object).reshape(-1)) \
            if out.get("datatype") == "BYTES" else None
        if items is None:
            decoded[out_name] = _output_array(out)
            continue
        parsed = []
        for item in items:
            try:
                parsed.append(json.loads(item))
            except (TypeError, ValueError):
                parsed.append(item)
        decoded[out_name] = parsed
    if len(decoded) == 1:
        (values,) = decoded.values()
        if isinstance(values, list) and single and len(values) == 1:
            return values[0]
        return values
    if single:
        return {k: (v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in decoded.items()}
    return decoded


def _copy_own_config_entry(repository: Path, name: str, source_dir: Path) -> Path:
    """Fallback while ``model_repo`` is absent: a folder with its own config.pbtxt is
    copied as given, with its ``name`` set to NAME."""
    import re

    config = Path(source_dir) / "config.pbtxt"
    if not config.exists():
        raise RuntimeLoadError(f"{source_dir} has no config.pbtxt and model_repo is not available")
    dest = Path(repository) / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source_dir, dest)
    text = (dest / "config.pbtxt").read_text()
    if re.search(r'^\s*name\s*:', text, flags=re.M):
        text = re.sub(r'^(\s*)name\s*:\s*"[^"]*"', rf'\1name: "{name}"', text, count=1, flags=re.M)
    else:
        text = f'name: "{name}"\n' + text
    (dest / "config.pbtxt").write_text(text)
    return dest
