"""The private, loopback-only Ray cluster Modelium starts for itself (``ray.address: auto``).

``ray start --head --block`` runs as a child process in its own session, so:

* everything it starts (GCS, raylet, agents, every worker and Serve replica) descends from
  it, and stopping it is SIGTERM to that one process (Ray then stops its own children),
  with SIGKILL of its process group and of every recorded descendant as the fallback;
* it carries a parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGTERM)``): when the
  daemon dies, even by SIGKILL, the kernel sends it SIGTERM and the cluster goes away.
  It is set by a tiny exec wrapper (:func:`modelium.runtimes.process.pdeathsig_command`)
  rather than ``preexec_fn`` (which is not safe in a process that has threads). NB: Linux fires the signal when the *thread* that spawned
  the child exits, so :meth:`PrivateRayCluster.spawn` must run on a long-lived thread
  (the daemon's event-loop thread), never in a short-lived worker thread;
* every port Ray opens is chosen here (free ports, a private worker-port range), and the
  temp dir is private, so it never collides with another Ray on the machine. Never use
  ``ray stop``: it kills every Ray process on the machine;
* it runs with token authentication (:mod:`.auth`): its own random token, in its
  environment only; no dashboard (``--include-dashboard false``: no Jobs API).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from modelium.runtimes.process import LOOPBACK, child_env, free_ports, pdeathsig_command, port_is_free
from modelium.runtimes.ray_serve import auth
from modelium.runtimes.ray_serve.deployment import LOOPBACK_ENV_VAR

log = logging.getLogger(__name__)

#: Environment for every Ray process of the private cluster and for our driver.
#: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is what keeps Ray on 127.0.0.1 (without it Ray swaps
#: a loopback address for the eth0 address); it is read when ``ray`` is imported.
#: Authentication is not here: see :mod:`.auth` (token for the private cluster; a joined
#: cluster keeps the daemon's own settings).
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}

READY_MARKER = "Ray runtime started"
WORKER_PORT_RANGE = 100  # ports for worker processes (replicas, controller, proxy, ...)
# Unix socket paths (temp_dir/session_<date>_<pid>/sockets/plasma_store) must stay
# below 108 bytes; the part Ray appends is ~70 bytes.
MAX_TEMP_DIR_CHARS = 36


class ClusterStartError(RuntimeError):
    """The private cluster did not come up; the message says why."""


def default_temp_dir() -> Path:
    """Short (unix socket paths!) and unique per daemon process."""
    return Path("/tmp") / f"modelium-ray-{os.getuid()}-{os.getpid()}"


def free_port_range(size: int, *, avoid: Iterable[int] = (), low: int = 20000, high: int = 32000) -> int:
    """First port of ``size`` consecutive free ports in [low, high).

    Below Linux's ephemeral range (32768+) so outgoing connections never take them;
    the search starts at a pid-derived offset so two daemons rarely probe the same range.
    """
    avoid = set(avoid)
    span = high - low - size
    start = (os.getpid() * 7919) % span
    for step in range(0, span, size):
        base = low + (start + step) % span
        ports = range(base, base + size)
        if not avoid.intersection(ports) and all(port_is_free(p) for p in ports):
            return base
    raise ClusterStartError(f"no {size} consecutive free ports between {low} and {high}")


def count_nvml_gpus() -> int:
    """GPUs NVML sees; 0 when there is no driver or library."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML means no GPU
        return 0


def _project_root() -> str:
    """The folder holding the ``modelium`` package, for the replicas' PYTHONPATH."""
    return str(Path(__file__).resolve().parents[3])


class PrivateRayCluster:
    """One ``ray start --head --block`` child process and everything under it."""

    def __init__(
        self,
        *,
        gcs_port: int,
        num_cpus: int | None,
        num_gpus: int,
        temp_dir: Path | None,
        reserved_ports: Iterable[int] = (),
        auth_token: str | None = None,
    ) -> None:
        self.gcs_port = gcs_port
        self.auth_token = auth_token or auth.new_token()  # never logged, never on argv
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.owns_temp_dir = temp_dir is None
        self.temp_dir = Path(temp_dir) if temp_dir is not None else default_temp_dir()
        self._reserved_ports = set(reserved_ports)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.temp_dir / "modelium-ray-start.log"
        self.ports: dict[str, int] = {}

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ------------------------------------------------------------------ start

    def command(self) -> list[str]:
        worker_base = self.ports["min_worker"]
        args = [
            "start", "--head", "--block",
            "--node-ip-address", LOOPBACK,
            "--port", str(self.gcs_port),
            "--temp-dir", str(self.temp_dir),
            "--include-dashboard", "false",
            "--disable-usage-stats",
            "--num-gpus", str(self.num_gpus),
            "--min-worker-port", str(worker_base),
            "--max-worker-port", str(worker_base + WORKER_PORT_RANGE - 1),
            "--node-manager-port", str(self.ports["node_manager"]),
            "--object-manager-port", str(self.ports["object_manager"]),
            "--ray-client-server-port", str(self.ports["ray_client_server"]),
            "--dashboard-agent-listen-port", str(self.ports["dashboard_agent_listen"]),
            "--dashboard-agent-grpc-port", str(self.ports["dashboard_agent_grpc"]),
            "--runtime-env-agent-port", str(self.ports["runtime_env_agent"]),
            "--metrics-export-port", str(self.ports["metrics_export"]),
        ]
        if self.num_cpus is not None:
            args += ["--num-cpus", str(self.num_cpus)]
        return pdeathsig_command([sys.executable, "-m", "ray.scripts.scripts", *args])

    def environment(self) -> dict[str, str]:
        env = child_env(os.environ)
        env.pop("RAY_gcs_rpc_server_reconnect_timeout_s", None)  # the driver's setting, not the raylet's
        env.update(LOOPBACK_ENV)
        env.pop(auth.TOKEN_PATH_ENV, None)
        env.update(auth.cluster_env(self.auth_token))
        env["PYTHONUNBUFFERED"] = "1"
        env[LOOPBACK_ENV_VAR] = "1"  # see deployment.bind_replica_grpc_to_loopback (not MODELIUM_*: that prefix is config)
        # On SIGTERM `ray start --block` first drains the node for up to 30 s, waiting for
        # Serve to move replicas elsewhere. A one-node cluster has nowhere to move them, so
        # the wait only delays teardown (a SIGKILLed daemon's cluster lingered 30 s).
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        # Replicas import modelium.runtimes.ray_serve.deployment by reference.
        root = _project_root()
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in paths:
            env["PYTHONPATH"] = os.pathsep.join([root, *paths])
        return env

    def spawn(self) -> None:
        """Choose ports and start the child. Quick; call it on a long-lived thread."""
        if self.is_running():
            return
        if len(str(self.temp_dir)) > MAX_TEMP_DIR_CHARS:
            raise ClusterStartError(
                f"Ray temp dir {str(self.temp_dir)!r} is too long ({len(str(self.temp_dir))} chars, "
                f"at most {MAX_TEMP_DIR_CHARS}): Ray's unix socket paths under it would exceed 107 bytes"
            )
        if not port_is_free(self.gcs_port):
            raise ClusterStartError(f"cannot start the private Ray cluster: GCS port {self.gcs_port} is in use")
        names = ("node_manager", "object_manager", "ray_client_server", "dashboard_agent_listen",
                 "dashboard_agent_grpc", "runtime_env_agent", "metrics_export")
        taken = {self.gcs_port, *self._reserved_ports}
        ports = [p for p in free_ports(len(names) + len(taken)) if p not in taken][: len(names)]
        self.ports = dict(zip(names, ports, strict=True))
        self.ports["min_worker"] = free_port_range(WORKER_PORT_RANGE, avoid=taken | set(ports))

        self.temp_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on the daemon's terminal must not hit Ray first
                close_fds=True,
            )
        log.info("started private Ray cluster (pid %d) at %s, temp dir %s, ports %s",
                 self.process.pid, self.address, self.temp_dir, self.ports)

    def wait_ready(self, timeout: float) -> None:
        """Block until ``ray start`` reports the runtime started (or fail with its log tail)."""
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClusterStartError(
                    f"ray start exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            if READY_MARKER in self._read_log():
                return
            time.sleep(0.2)
        raise ClusterStartError(f"the private Ray cluster did not start within {timeout:.0f}s:\n{self.log_tail()}")

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        return self._read_log()[-chars:]

    # ------------------------------------------------------------------ stop

    def descendants(self) -> list[psutil.Process]:
        """Every live process of the cluster: the child's process tree plus every process
        still in the child's session (a raylet's agents outlive a SIGKILLed ``ray start``
        and are then re-parented to init, out of the tree, but never leave the session)."""
        if self.process is None:
            return []
        found: dict[int, psutil.Process] = {}
        try:
            for proc in psutil.Process(self.process.pid).children(recursive=True):
                found[proc.pid] = proc
        except psutil.NoSuchProcess:
            pass
        for proc in psutil.process_iter():
            try:
                if proc.pid not in found and proc.pid != self.process.pid and os.getsid(proc.pid) == self.process.pid:
                    found[proc.pid] = proc
            except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
                continue
        return list(found.values())

    def stop(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM the child, wait, then SIGKILL its group and any process left over.

        Returns the pids that had to be SIGKILLed (empty on a clean stop).
        """
        process = self.process
        if process is None:
            return []
        recorded = self.descendants()
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        crashed = process.poll() is not None
        if crashed:
            # ray start is gone (killed or crashed): nothing will stop its leftovers
            # (typically the dashboard and runtime-env agents, re-parented to init).
            for proc in recorded:
                try:
                    proc.terminate()
                except psutil.NoSuchProcess:
                    pass
            deadline = time.monotonic() + min(timeout, 3.0)
        else:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("ray start (pid %d) ignored SIGTERM for %.0fs; killing its group", process.pid, timeout)
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                    killed.append(process.pid)
                except ProcessLookupError:
                    pass
                process.wait(5)
        # Ray stops its children itself; give them the rest of the timeout, then make sure.
        _, alive = psutil.wait_procs(recorded, timeout=max(deadline - time.monotonic(), 1.0))
        leftovers = {p.pid: p for p in [*alive, *self.descendants()]}
        for proc in leftovers.values():
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.NoSuchProcess:
                pass
        if leftovers:
            log.warning("killed Ray processes left behind by ray start: %s", sorted(leftovers))
            psutil.wait_procs(list(leftovers.values()), timeout=5)
        self.process = None
        return killed

    def remove_temp_dir(self) -> None:
        """Delete the temp dir when Modelium chose it (a configured one is kept)."""
        if self.owns_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
