"""This process as a Ray driver: importing Ray so it stays on loopback, undoing the
signal handlers ``ray.init`` installs, and reading Serve's answers (app statuses, Ray
tracebacks). Kept apart from the manager so its load/unload logic reads on its own.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import threading
import time
from typing import Any

from modelium.runtimes.base import ModelNotLoadedError
from modelium.runtimes.errors import BadRequestError
from modelium.runtimes.ray_serve.cluster import LOOPBACK_ENV

log = logging.getLogger(__name__)

DEPLOYMENT_PREFIX = "modelium-"
DRIVER_GCS_TIMEOUT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
DRIVER_GCS_TIMEOUT_SECONDS = 365 * 24 * 3600
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

#: Serve app statuses in which the app still holds (or is about to hold again) its
#: replicas: a DEPLOYING app is starting or replacing a replica, an UNHEALTHY one is being
#: repaired by Serve itself, NOT_STARTED is the moment between submit and deploy. Reading
#: them as "crashed" would free the ledger reservation of a model that still holds memory
#: and reload it beside itself (review finding 2c). Absent, DEPLOY_FAILED and DELETING
#: apps are gone.
LIVE_APP_STATUSES = frozenset({"RUNNING", "DEPLOYING", "UNHEALTHY", "NOT_STARTED"})


def deployment_name(model: str) -> str:
    return DEPLOYMENT_PREFIX + model


def status_name(status: Any) -> str:
    """``ApplicationStatus.RUNNING`` (a str enum) or a plain string -> "RUNNING"."""
    return str(status.value) if isinstance(status, enum.Enum) else str(status)


def our_apps(status: Any) -> dict[str, Any]:
    """name -> ApplicationStatusOverview for the apps Modelium made."""
    return {name: app for name, app in status.applications.items() if deployment_name(name) in app.deployments}


def running_replicas(app: Any, model: str) -> int:
    deployment = app.deployments.get(deployment_name(model))
    if deployment is None:
        return 0
    return int((deployment.replica_states or {}).get("RUNNING", 0))


def import_ray(loopback: bool) -> tuple[Any, Any]:
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


async def delete_apps(serve: Any, names: list[str]) -> None:
    """``serve.delete`` the apps in parallel; a failure is logged, not raised."""
    results = await asyncio.gather(*(asyncio.to_thread(serve.delete, n) for n in names), return_exceptions=True)
    for name, result in zip(names, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("ray_serve: deleting app %s failed: %s", name, result)


async def delete_quietly(serve: Any, name: str) -> None:
    """Delete an app after a failed load (shielded from cancellation; failures logged)."""
    try:
        await asyncio.shield(asyncio.to_thread(serve.delete, name))
    except Exception:  # noqa: BLE001
        log.exception("ray_serve: could not delete app %s after a failed load", name)


def reassert_python_signal_handlers() -> None:
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


def tag_serve_request(request_id: str) -> None:
    """Make the handle calls of the current task carry the gateway's request id.

    Serve copies its request context's ``request_id`` into each call's metadata, so it is
    the id on the replica's log lines and in the replica's own request context
    (``serve.context._get_serve_request_context()``). Ray 2.60 has no public way to set it
    on a handle call, hence the private setter; it changes only this task's context.
    """
    from ray.serve import context

    context._set_request_context(request_id=request_id)


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in _LOOPBACK_HOSTS


def short_error(message: str) -> str:
    """The last meaningful line of a Ray traceback ("ExcType: what went wrong")."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")) and ":" in line:
            return line
    return lines[-1] if lines else message


def bad_request_in(exc: BaseException) -> BadRequestError | None:
    """The replica's BadRequestError, which reaches the caller wrapped in a RayTaskError
    whose ``cause`` is the original (re-raised unwrapped, so the gateway answers 422)."""
    from ray.exceptions import RayTaskError

    cause = exc.cause if isinstance(exc, RayTaskError) else None
    if isinstance(cause, BadRequestError):
        return BadRequestError(cause.message)
    if isinstance(exc, BadRequestError):
        return BadRequestError(exc.message or short_error(str(exc)))
    return None


def classify_replica_error(name: str, exc: BaseException) -> Exception:
    """An app that still exists failed a request: a lost replica is ModelNotLoadedError
    (the orchestrator reloads); anything else (a bug in the model code, an OOM...) is a
    server error carrying the last line of the replica's traceback, not the whole thing."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    if isinstance(exc, RayActorError | DeploymentUnavailableError | ReplicaUnavailableError):
        return ModelNotLoadedError(f"model {name!r} lost its Ray Serve replica: {short_error(str(exc))}")
    return RuntimeError(f"model {name!r} failed in Ray Serve: {short_error(str(exc))}")


def failure_message(name: str, app: Any) -> str:
    """Why a DEPLOY_FAILED app failed: the deployment's message (the replica's exception)."""
    deployment = app.deployments.get(deployment_name(name))
    detail = (deployment.message if deployment is not None else "") or app.message or "no detail"
    return f"Ray Serve replica for {name!r} failed to start: {short_error(detail)}"


async def replica_pids(handle: Any, name: str, expected: int, timeout: float) -> list[int]:
    """Ask the replicas behind ``handle`` for their pids (``ModelReplica.process_id``)
    until ``expected`` distinct ones answered or ``timeout`` passed (then the ones that
    did). Serve routes each call to a replica of its choosing (power of two choices), so
    calls go out concurrently in rounds of twice the replica count; Ray's own actor
    listing would need the dashboard, which the private cluster does not run."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < expected and time.monotonic() < deadline:
        left = max(0.1, deadline - time.monotonic())
        answers = await asyncio.gather(*(asyncio.wait_for(handle.process_id.remote(), left)
                                         for _ in range(2 * expected)), return_exceptions=True)
        found = {a for a in answers if isinstance(a, int)}
        if not found:  # e.g. an app deployed by an older Modelium, without process_id
            log.info("ray_serve: %s answered no pid: %r", name, answers[0])
            break
        pids |= found
    if len(pids) < expected:
        log.warning("ray_serve: only %d of %d replicas of %s told their pid", len(pids), expected, name)
    return sorted(pids)
