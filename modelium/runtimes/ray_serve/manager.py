"""RayServeManager: serve transformers models as Ray Serve apps, one app per model.

Two modes:

* ``address="auto"`` (the embedded default): start a private, loopback-only Ray cluster
  owned by Modelium (see :mod:`.cluster`), connect to it and start Serve on
  ``127.0.0.1:http_port``. :meth:`stop` deletes the apps, shuts Serve and the cluster down,
  and verifies no Ray process is left.
* ``address="host:port"``: join an existing cluster. :meth:`stop` deletes only the apps this
  manager loaded or adopted; the cluster and Serve keep running.

Apps: name = the instance key (the model's name, or ``NAME.REVn`` for a re-dropped version
loaded beside the old one), route prefix ``/<key>``, one deployment ``modelium-<key>``
running :class:`.deployment.ModelReplica` (pure helpers in :mod:`.driver`, adoption checks
in :mod:`.adoption`). The ``modelium-`` deployment name is how
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
import time
from pathlib import Path
from typing import Any

from modelium.logs import current_request_id
from modelium.runtimes.base import (
    AdoptionReport,
    LoadRequest,
    ModelNotLoadedError,
    RuntimeHealth,
    RuntimeLoadError,
    RuntimeManager,
    RuntimeUnavailableError,
)
from modelium.runtimes.ray_serve import auth
from modelium.runtimes.ray_serve.adoption import adoption_blocker, make_fingerprint
from modelium.runtimes.ray_serve.cluster import ClusterStartError, PrivateRayCluster, count_nvml_gpus, port_is_free
from modelium.runtimes.ray_serve.deployment import ModelReplica
from modelium.runtimes.ray_serve.driver import (
    LIVE_APP_STATUSES,
    bad_request_in,
    classify_replica_error,
    delete_apps,
    delete_quietly,
    deployment_name,
    failure_message,
    import_ray,
    is_loopback,
    our_apps,
    reassert_python_signal_handlers,
    replica_pids,
    running_replicas,
    short_error,
    status_name,
    tag_serve_request,
)
from modelium.runtimes.ray_serve.signature import folder_signature

log = logging.getLogger(__name__)

NAMESPACE = "modelium"
STATUS_POLL_SECONDS = 0.1  # waiting for RUNNING: one serve.status RPC (in a thread) per poll
STATUS_TIMEOUT_SECONDS = 30.0
CLUSTER_STOP_TIMEOUT_SECONDS = 15.0
STOP_APPS_TIMEOUT_SECONDS = 15.0
PIDS_TIMEOUT_SECONDS = 10.0


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
            loopback = self.private or is_loopback(self.address)
            self._ray, self._serve = await asyncio.to_thread(import_ray, loopback)
            try:
                if self.private:
                    await self._start_private_cluster()
                await asyncio.to_thread(self._connect)
                reassert_python_signal_handlers()
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
        if self.cluster is not None:
            auth.use_in_driver(self.cluster.auth_token)  # the private cluster's token (see .auth)
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
                    await asyncio.wait_for(delete_apps(self._serve, await self._apps_to_delete()), STOP_APPS_TIMEOUT_SECONDS)
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
        if self.cluster is not None:
            auth.forget_in_driver(self.cluster.auth_token)
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
        return sorted(self._ours | set(our_apps(status)))

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
        """serve.status() off the loop, bounded: a dead cluster must not hang callers.
        Any failure is RuntimeUnavailableError ("cannot tell right now")."""
        if not self._cluster_alive():
            raise RuntimeUnavailableError(self._cluster_exit_detail())
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._serve.status), timeout)
        except TimeoutError as exc:
            raise RuntimeUnavailableError(f"Ray Serve did not answer within {timeout:.0f}s at {self.gcs_address}") from exc
        except Exception as exc:  # noqa: BLE001 - Ray raises a zoo of types (RaySystemError, gRPC...)
            raise RuntimeUnavailableError(f"Ray Serve status failed at {self.gcs_address}: "
                                          f"{type(exc).__name__}: {short_error(str(exc))}") from exc

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
        fingerprint = make_fingerprint(model_dir, signature, task, request.device.id)
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
            await delete_quietly(self._serve, name)
            if isinstance(exc, RuntimeLoadError):
                raise
            if isinstance(exc, Exception):
                raise RuntimeLoadError(f"Ray Serve could not deploy {name!r}: {short_error(str(exc))}") from exc
            raise
        log.info("ray_serve: %s RUNNING after %.1fs (task %s, %s)", name, time.monotonic() - started, task, device)

    async def _wait_running(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "NOT_STARTED"
        while True:
            status = await self._status()
            app = status.applications.get(name)
            if app is not None:
                last = status_name(app.status)
                if last == "RUNNING":
                    return
                if last == "DEPLOY_FAILED":
                    raise RuntimeLoadError(failure_message(name, app))
            if time.monotonic() >= deadline:
                raise RuntimeLoadError(f"model {name!r} did not become ready in Ray Serve within {timeout:.0f}s (last status {last})")
            await asyncio.sleep(STATUS_POLL_SECONDS)

    async def unload(self, name: str) -> None:
        self._handles.pop(name, None)
        if not self._started or not self._cluster_alive():
            self._ours.discard(name)
            return  # nothing runs: nothing to unload
        self._ours.discard(name)
        status = await self._status()
        if name not in our_apps(status):
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
        request_id = current_request_id()
        if request_id:
            tag_serve_request(request_id)
        try:
            return await handle.predict.remote(inputs, parameters)
        except Exception as exc:  # noqa: BLE001 - classified below
            raise await self._classify(name, exc) from exc

    async def _classify(self, name: str, exc: Exception) -> Exception:
        """Turn a Ray/Serve exception into the runtime-agnostic error the gateway maps:
        a client mistake stays a BadRequestError; otherwise Serve is asked whether the
        app still exists (see :func:`.driver.classify_replica_error`)."""
        bad = bad_request_in(exc)
        if bad is not None:
            return bad
        ray = self._ray
        if ray is None or not ray.is_initialized():
            return RuntimeUnavailableError(f"Ray is not connected: {short_error(str(exc))}")
        try:
            status = await self._status(10)
        except RuntimeUnavailableError as status_exc:  # the cluster itself is unreachable
            return RuntimeUnavailableError(f"Ray Serve is unreachable: {status_exc}")
        if name not in our_apps(status):
            self._handles.pop(name, None)
            return ModelNotLoadedError(f"model {name!r} is not loaded in Ray Serve")
        return classify_replica_error(name, exc)

    async def loaded_models(self) -> set[str]:
        """Our apps that hold their replicas: RUNNING, and the transient DEPLOYING /
        UNHEALTHY / NOT_STARTED (Serve is starting or repairing replicas); absent,
        DEPLOY_FAILED and DELETING apps are gone. ``set()`` when nothing runs (not started,
        or the private cluster exited: its replicas died with it); a failing
        ``serve.status`` while the cluster lives raises RuntimeUnavailableError."""
        if not self._started or not self._cluster_alive():
            return set()
        try:
            status = await self._status()
        except RuntimeUnavailableError:
            if not self._cluster_alive():  # died during the call
                return set()
            raise
        return {name for name, app in our_apps(status).items() if status_name(app.status) in LIVE_APP_STATUSES}

    async def process_ids(self, name: str) -> list[int]:
        """PIDs of the app's replica actors (:func:`.driver.replica_pids`: each replica
        asked for its own until every RUNNING one answered). ``[]`` for a cluster that is
        not on this machine (its pids are another host's) or an app that is not ours or
        not running."""
        if not (self.private or is_loopback(self.address)) or not self._started or not self._cluster_alive():
            return []
        app = our_apps(await self._status()).get(name)
        expected = running_replicas(app, name) if app is not None else 0
        if expected == 0:
            return []
        return await replica_pids(await self._handle(name), name, expected, PIDS_TIMEOUT_SECONDS)

    async def _describe(self) -> str:
        status = await self._status()
        ours = our_apps(status)
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
        for name, app in sorted(our_apps(status).items()):
            path = known_models.get(name)
            why = await adoption_blocker(status_name(app.status), path, lambda n=name: self._fingerprint(n))
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

    async def _fingerprint(self, name: str) -> Any:
        return await (await self._handle(name)).fingerprint.remote()


__all__ = ["RayServeManager", "deployment_name", "folder_signature"]
