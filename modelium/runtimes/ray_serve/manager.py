"""RayServeManager: serve transformers models as Ray Serve apps, one app per model.

Two modes:

* ``address="auto"`` (the embedded default): start a private, loopback-only Ray cluster
  owned by Modelium (see :mod:`.cluster`), connect to it and start Serve on
  ``127.0.0.1:http_port``. :meth:`stop` deletes the apps, shuts Serve and the cluster down,
  and verifies no Ray process is left.
* ``address="host:port"``: join an existing cluster. :meth:`stop` deletes only the apps this
  manager loaded or adopted; the cluster and Serve keep running.

Apps: name = model name, route prefix ``/<name>``, one deployment ``modelium-<name>``
running :class:`.deployment.ModelReplica`. The ``modelium-`` deployment name is how
Modelium recognises its own apps on a shared cluster; the replica also carries a
fingerprint (model folder + :func:`.signature.folder_signature`) so :meth:`adopt` can tell
whether an app left by an earlier run still matches the repository.

Process-global state: ``ray.init`` connects the whole process to one cluster, so one
process hosts at most one cluster connection. A second manager in the same process may
join the cluster the process is already connected to (it then shares the connection and
never shuts it down); any other combination raises RuntimeUnavailableError.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

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
from modelium.runtimes.ray_serve.cluster import (
    LOOPBACK_ENV,
    ClusterStartError,
    PrivateRayCluster,
    count_nvml_gpus,
    port_is_free,
)
from modelium.runtimes.ray_serve.deployment import ModelReplica
from modelium.runtimes.ray_serve.signature import folder_signature

log = logging.getLogger(__name__)

NAMESPACE = "modelium"
DEPLOYMENT_PREFIX = "modelium-"
FINGERPRINT_VERSION = 1
STATUS_POLL_SECONDS = 0.25
STATUS_TIMEOUT_SECONDS = 30.0
FINGERPRINT_TIMEOUT_SECONDS = 15.0
CLUSTER_STOP_TIMEOUT_SECONDS = 15.0
STOP_APPS_TIMEOUT_SECONDS = 15.0
DRIVER_GCS_TIMEOUT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
DRIVER_GCS_TIMEOUT_SECONDS = 365 * 24 * 3600
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def deployment_name(model: str) -> str:
    return DEPLOYMENT_PREFIX + model


def _import_ray(loopback: bool) -> tuple[Any, Any]:
    """Import ray and ray.serve with the loopback settings in force.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when ``ray`` is imported; if something
    imported ray earlier, the constant is patched too (services.py reads the attribute at
    call time), else ``ray.init("127.0.0.1:P")`` would dial the eth0 address instead.
    """
    if loopback:
        os.environ.update(LOOPBACK_ENV)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A Ray driver whose GCS stays unreachable for this long exits the whole process
    # (default 60 s): a crashed cluster must make the runtime unhealthy, not kill the daemon.
    os.environ.setdefault(DRIVER_GCS_TIMEOUT_ENV, str(DRIVER_GCS_TIMEOUT_SECONDS))
    import ray
    from ray import serve

    if loopback:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    return ray, serve


def _reassert_python_signal_handlers() -> None:
    """Undo the C-level SIGTERM/SIGINT handlers ``ray.init`` installs (absl's failure
    handler: prints a stack trace on every SIGTERM before chaining to Python's).

    Re-setting the handler Python already has puts Python's own C trampoline back, so
    ``loop.add_signal_handler`` callbacks (the daemon's clean shutdown) run quietly.
    Only possible on the main thread; elsewhere this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if handler is not None:
            signal.signal(signum, handler)


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in _LOOPBACK_HOSTS


def _short_error(message: str) -> str:
    """The last meaningful line of a Ray traceback ("ExcType: what went wrong")."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")) and ":" in line:
            return line
    return lines[-1] if lines else message


class RayServeManager(RuntimeManager):
    """Loads each model as its own Ray Serve app; see the module docstring."""

    name = "ray_serve"

    def __init__(
        self,
        *,
        address: str = "auto",
        http_port: int = 8010,
        gcs_port: int = 6390,
        num_cpus: int | None = None,
        temp_dir: Path | None = None,
        start_timeout_seconds: float = 120.0,
        load_timeout_seconds: float = 600.0,
    ) -> None:
        self.address = address
        self.http_port = http_port
        self.gcs_port = gcs_port
        self.num_cpus = num_cpus
        self.temp_dir = Path(temp_dir) if temp_dir is not None else None
        self.start_timeout_seconds = start_timeout_seconds
        self.load_timeout_seconds = load_timeout_seconds
        self.private = address == "auto"
        self.cluster: PrivateRayCluster | None = None
        self._ray: Any = None
        self._serve: Any = None
        self._owns_connection = False
        self._started = False
        self._start_lock = asyncio.Lock()
        self._handles: dict[str, Any] = {}
        self._ours: set[str] = set()  # apps this manager loaded or adopted

    # ------------------------------------------------------------------ lifecycle

    @property
    def gcs_address(self) -> str:
        return self.cluster.address if self.cluster else self.address

    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                if self._cluster_alive():
                    return
                # The private cluster died under us: clean up and start a fresh one.
                log.warning("ray_serve: the private Ray cluster died; restarting it")
                await self._teardown()
            loopback = self.private or _is_loopback(self.address)
            self._ray, self._serve = await asyncio.to_thread(_import_ray, loopback)
            try:
                if self.private:
                    await self._start_private_cluster()
                await asyncio.to_thread(self._connect)
                _reassert_python_signal_handlers()
                await asyncio.to_thread(
                    self._serve.start, http_options={"host": "127.0.0.1", "port": self.http_port}
                )
            except BaseException:
                await self._teardown()
                raise
            self._started = True
            log.info("ray_serve runtime up: %s", await self._describe())

    async def _start_private_cluster(self) -> None:
        if not port_is_free(self.http_port):
            raise RuntimeUnavailableError(f"Ray Serve HTTP port {self.http_port} on 127.0.0.1 is in use")
        num_gpus = await asyncio.to_thread(count_nvml_gpus)
        self.cluster = PrivateRayCluster(
            gcs_port=self.gcs_port,
            num_cpus=self.num_cpus,
            num_gpus=num_gpus,
            temp_dir=self.temp_dir,
            reserved_ports=(self.http_port,),
        )
        try:
            # Spawned on this (the event loop's) thread: the parent-death signal is tied
            # to the spawning thread, and the loop thread lives as long as the daemon.
            self.cluster.spawn()
            started = time.monotonic()
            await asyncio.to_thread(self.cluster.wait_ready, self.start_timeout_seconds)
            log.info("private Ray cluster ready in %.1fs", time.monotonic() - started)
        except ClusterStartError as exc:
            raise RuntimeUnavailableError(str(exc)) from exc

    def _connect(self) -> None:
        ray = self._ray
        target = self.gcs_address
        if ray.is_initialized():
            current = ray.get_runtime_context().gcs_address
            if self.private or current != target:
                raise RuntimeUnavailableError(
                    f"this process is already connected to the Ray cluster at {current}; "
                    f"a process can only hold one Ray connection (wanted {target})"
                )
            self._owns_connection = False  # share the connection another manager made
            return
        try:
            ray.init(address=target, namespace=NAMESPACE, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises a zoo of types here
            raise RuntimeUnavailableError(f"cannot connect to Ray at {target}: {exc}") from exc
        self._owns_connection = True

    def _cluster_alive(self) -> bool:
        """False when our private cluster's ``ray start`` has exited (joined: always True)."""
        return self.cluster is None or self.cluster.is_running()

    async def stop(self) -> None:
        async with self._start_lock:
            if self._serve is None:
                return
            try:
                if self._started and self._cluster_alive() and self._ray.is_initialized():
                    await asyncio.wait_for(self._delete_apps(await self._apps_to_delete()), STOP_APPS_TIMEOUT_SECONDS)
                    if self.private:
                        await asyncio.wait_for(asyncio.to_thread(self._serve.shutdown), STOP_APPS_TIMEOUT_SECONDS)
            except Exception:  # noqa: BLE001 - keep going: the processes must still stop
                log.exception("ray_serve: deleting apps failed; stopping the cluster anyway")
            finally:
                await self._teardown()

    async def _teardown(self) -> None:
        """Disconnect (if the connection is ours) and stop the private cluster (if any).

        Normal order: disconnect, then stop the cluster (the driver must not watch its GCS
        die). If the cluster already crashed, its leftovers are killed first: ray.shutdown
        against a dead GCS takes ~15 s.
        """
        self._started = False
        self._handles.clear()
        self._ours.clear()
        crashed = self.cluster is not None and not self.cluster.is_running()
        if crashed:
            await self._stop_cluster()
        if self._owns_connection and self._ray is not None and self._ray.is_initialized():
            try:
                await asyncio.to_thread(self._ray.shutdown)
            except Exception:  # noqa: BLE001
                log.exception("ray.shutdown failed")
        self._owns_connection = False
        await self._stop_cluster()

    async def _stop_cluster(self) -> None:
        if self.cluster is None or self.cluster.process is None:
            return
        crashed = not self.cluster.is_running()
        killed = await asyncio.to_thread(self.cluster.stop, CLUSTER_STOP_TIMEOUT_SECONDS)
        if killed:
            log.warning("ray_serve: had to SIGKILL %d Ray processes: %s", len(killed), killed)
        if crashed:
            log.warning("ray_serve: keeping %s (Ray's logs) for a post-mortem", self.cluster.temp_dir)
        else:
            self.cluster.remove_temp_dir()

    async def _apps_to_delete(self) -> list[str]:
        if not self.private:
            return sorted(self._ours)
        status = await self._status()
        return sorted(self._ours | set(self._our_apps(status)))

    async def _delete_apps(self, names: list[str]) -> None:
        if names:
            results = await asyncio.gather(
                *(asyncio.to_thread(self._serve.delete, n) for n in names), return_exceptions=True
            )
            for name, result in zip(names, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("ray_serve: deleting app %s failed: %s", name, result)

    # ------------------------------------------------------------------ models

    def _require_started(self) -> None:
        if not self._started or self._ray is None or not self._ray.is_initialized():
            raise RuntimeUnavailableError("the Ray Serve runtime is not running")
        if not self._cluster_alive():
            raise RuntimeUnavailableError(self._cluster_exit_detail())

    def _cluster_exit_detail(self) -> str:
        assert self.cluster is not None
        code = self.cluster.process.returncode if self.cluster.process else None
        return f"the private Ray cluster exited (code {code}); see {self.cluster.log_path}"

    async def _status(self, timeout: float = STATUS_TIMEOUT_SECONDS) -> Any:
        """serve.status() off the loop, bounded: a dead cluster must not hang callers."""
        if not self._cluster_alive():
            raise RuntimeUnavailableError(self._cluster_exit_detail())
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._serve.status), timeout)
        except TimeoutError as exc:
            raise RuntimeUnavailableError(f"Ray Serve did not answer within {timeout:.0f}s at {self.gcs_address}") from exc

    @staticmethod
    def _our_apps(status: Any) -> dict[str, Any]:
        """name -> ApplicationStatusOverview for the apps Modelium made."""
        return {
            name: app
            for name, app in status.applications.items()
            if deployment_name(name) in app.deployments
        }

    async def load(self, request: LoadRequest) -> None:
        self._require_started()
        serve = self._serve
        name = request.name
        options = request.options or {}
        task = options.get("task") or request.profile.task
        model_dir = Path(request.model_dir).resolve()
        try:
            signature = await asyncio.to_thread(folder_signature, model_dir)
        except FileNotFoundError as exc:
            raise RuntimeLoadError(f"model folder {model_dir} does not exist") from exc
        fingerprint = {
            "version": FINGERPRINT_VERSION,
            "model_dir": str(model_dir),
            "signature": signature,
            "task": task,
            "device": request.device.id,
        }
        actor_options: dict[str, Any] = {"num_cpus": 0, "num_gpus": 0}
        if request.device.kind == "gpu":
            # Ray cannot pick a GPU id; pinning CUDA_VISIBLE_DEVICES can (and overrides
            # Ray's own GPU bookkeeping, which is why num_gpus stays 0).
            actor_options["runtime_env"] = {"env_vars": {"CUDA_VISIBLE_DEVICES": str(request.device.index)}}
            device = "cuda:0"
        else:
            device = "cpu"
        timeout = float(options.get("load_timeout_seconds") or self.load_timeout_seconds)
        app = serve.deployment(ModelReplica).options(
            name=deployment_name(name),
            num_replicas=int(options.get("num_replicas") or 1),
            ray_actor_options=actor_options,
            max_ongoing_requests=int(options.get("max_ongoing_requests") or 32),
            graceful_shutdown_wait_loop_s=0.3,
            graceful_shutdown_timeout_s=5.0,
            # A constructor that fails (corrupt weights) fails the same way every time:
            # give up at once instead of after Serve's default 20 tries (the orchestrator
            # retries failed loads with back-off).
            max_constructor_retry_count=1,
        ).bind(str(model_dir), task, device, fingerprint)

        self._handles.pop(name, None)
        self._ours.add(name)
        started = time.monotonic()
        try:
            await asyncio.to_thread(
                serve.run_many,
                [serve.RunTarget(target=app, name=name, route_prefix="/" + name)],
                wait_for_ingress_deployment_creation=False,
                wait_for_applications_running=False,
            )
            await self._wait_running(name, timeout)
        except BaseException as exc:
            self._ours.discard(name)
            await self._delete_quietly(name)
            if isinstance(exc, RuntimeLoadError):
                raise
            if isinstance(exc, Exception):
                raise RuntimeLoadError(f"Ray Serve could not deploy {name!r}: {_short_error(str(exc))}") from exc
            raise
        log.info("ray_serve: %s RUNNING after %.1fs (task %s, %s)", name, time.monotonic() - started, task, device)

    async def _wait_running(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "NOT_STARTED"
        while True:
            status = await self._status()
            app = status.applications.get(name)
            if app is not None:
                last = str(app.status.value if hasattr(app.status, "value") else app.status)
                if last == "RUNNING":
                    return
                if last == "DEPLOY_FAILED":
                    raise RuntimeLoadError(self._failure_message(name, app))
            if time.monotonic() >= deadline:
                raise RuntimeLoadError(f"model {name!r} did not become ready in Ray Serve within {timeout:.0f}s (last status {last})")
            await asyncio.sleep(STATUS_POLL_SECONDS)

    @staticmethod
    def _failure_message(name: str, app: Any) -> str:
        deployment = app.deployments.get(deployment_name(name))
        detail = (deployment.message if deployment is not None else "") or app.message or "no detail"
        return f"Ray Serve replica for {name!r} failed to start: {_short_error(detail)}"

    async def _delete_quietly(self, name: str) -> None:
        try:
            await asyncio.shield(asyncio.to_thread(self._serve.delete, name))
        except Exception:  # noqa: BLE001
            log.exception("ray_serve: could not delete app %s after a failed load", name)

    async def unload(self, name: str) -> None:
        self._handles.pop(name, None)
        if not self._started or not self._cluster_alive():
            self._ours.discard(name)
            return  # nothing runs: nothing to unload
        self._ours.discard(name)
        status = await self._status()
        if name not in self._our_apps(status):
            return  # unknown (or not ours): nothing to do
        started = time.monotonic()
        await asyncio.to_thread(self._serve.delete, name)
        log.info("ray_serve: deleted %s in %.1fs", name, time.monotonic() - started)

    async def _handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            from ray.serve.exceptions import RayServeException

            try:
                handle = await asyncio.to_thread(self._serve.get_app_handle, name)
            except RayServeException as exc:
                raise ModelNotLoadedError(f"model {name!r} is not loaded in Ray Serve") from exc
            self._handles[name] = handle
        return handle

    async def infer(self, name: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        self._require_started()
        handle = await self._handle(name)
        try:
            return await handle.predict.remote(inputs, parameters)
        except Exception as exc:  # noqa: BLE001 - classified below
            raise await self._classify(name, exc) from exc

    async def _classify(self, name: str, exc: Exception) -> Exception:
        """Turn a Ray/Serve exception into the runtime-agnostic error the gateway maps."""
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BadRequestError):
            return BadRequestError(cause.message)
        if isinstance(exc, BadRequestError):
            return BadRequestError(getattr(exc, "message", None) or _short_error(str(exc)))
        ray = self._ray
        if ray is None or not ray.is_initialized():
            return RuntimeUnavailableError(f"Ray is not connected: {_short_error(str(exc))}")
        try:
            status = await self._status(10)
        except Exception as status_exc:  # noqa: BLE001 - the cluster itself is unreachable
            return RuntimeUnavailableError(f"Ray Serve is unreachable: {status_exc}")
        app = self._our_apps(status).get(name)
        if app is None:
            self._handles.pop(name, None)
            return ModelNotLoadedError(f"model {name!r} is not loaded in Ray Serve")
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

        if isinstance(exc, (RayActorError, DeploymentUnavailableError, ReplicaUnavailableError)):
            return ModelNotLoadedError(f"model {name!r} lost its Ray Serve replica: {_short_error(str(exc))}")
        # Anything else (a bug in the model code, an OOM...) is a server error: keep the
        # last line of the replica's traceback, not the whole thing.
        return RuntimeError(f"model {name!r} failed in Ray Serve: {_short_error(str(exc))}")

    async def loaded_models(self) -> set[str]:
        if not self._started or not self._cluster_alive():
            return set()
        status = await self._status()
        return {name for name, app in self._our_apps(status).items() if app.status == "RUNNING"}

    async def _describe(self) -> str:
        status = await self._status()
        ours = self._our_apps(status)
        running = sum(1 for app in ours.values() if app.status == "RUNNING")
        where = f"private Ray cluster at {self.gcs_address}" if self.private else f"Ray cluster at {self.gcs_address}"
        return f"{where}, {len(ours)} apps ({running} running), Serve HTTP on 127.0.0.1:{self.http_port}"

    async def health(self) -> RuntimeHealth:
        if not self._started:
            return RuntimeHealth(False, "Ray Serve runtime not started")
        if not self._cluster_alive():
            return RuntimeHealth(False, self._cluster_exit_detail())
        try:
            return RuntimeHealth(True, await asyncio.wait_for(self._describe(), 15))
        except Exception as exc:  # noqa: BLE001
            return RuntimeHealth(False, f"Ray Serve unreachable at {self.gcs_address}: {type(exc).__name__}: {exc}")

    async def adopt(self, known_models: dict[str, Path]) -> AdoptionReport:
        self._require_started()
        status = await self._status()
        adopted: list[str] = []
        removed: list[str] = []
        for name, app in sorted(self._our_apps(status).items()):
            path = known_models.get(name)
            why = await self._adoption_blocker(name, app, path)
            if why is None:
                adopted.append(name)
                self._ours.add(name)
                log.info("ray_serve: adopted %s (still serving %s)", name, path)
            else:
                self._handles.pop(name, None)
                await asyncio.to_thread(self._serve.delete, name)
                removed.append(name)
                log.info("ray_serve: removed stale app %s: %s", name, why)
        return AdoptionReport(adopted=tuple(adopted), removed=tuple(removed))

    async def _adoption_blocker(self, name: str, app: Any, path: Path | None) -> str | None:
        """Why the app cannot be kept, or None when it matches the repository folder."""
        if path is None:
            return "not in the repository"
        if app.status != "RUNNING":
            return f"app status is {app.status}"
        try:
            handle = await self._handle(name)
            fingerprint = await asyncio.wait_for(handle.fingerprint.remote(), FINGERPRINT_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - an app we cannot ask is an app we cannot vouch for
            return f"could not read its fingerprint: {type(exc).__name__}"
        resolved = Path(path).resolve()
        if not isinstance(fingerprint, dict) or fingerprint.get("version") != FINGERPRINT_VERSION:
            return "unknown fingerprint format"
        if fingerprint.get("model_dir") != str(resolved):
            return f"serves {fingerprint.get('model_dir')}, the repository has {resolved}"
        try:
            current = await asyncio.to_thread(folder_signature, resolved)
        except FileNotFoundError:
            return f"{resolved} is gone"
        if fingerprint.get("signature") != current:
            return "the folder changed since the app was deployed"
        return None


__all__ = ["RayServeManager", "deployment_name", "folder_signature"]
