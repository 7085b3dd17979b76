"""Modelium's own supervised ``tritonserver`` process: command, env, backend dir, start,
readiness, stop.

One server serves every Triton model (``--model-control-mode=explicit``: it loads nothing
by itself; the manager loads and unloads through the repository API). What this class
guarantees, and why:

* **Loopback only**: HTTP, gRPC and metrics are bound to 127.0.0.1 on free ports (without
  the address flags tritonserver binds 0.0.0.0).
* **Closed to everyone but Modelium** (:mod:`.access`): every HTTP API but health needs
  the header ``x-modelium-key`` with this server's own random value (:attr:`TritonServer.headers`,
  a new one at each start), gRPC is off, and once the server answers the value is
  overwritten in its command line.
* **Nothing is orphaned.** The server runs in its own session (its process group holds the
  python-backend stub processes it forks, one per model instance) with a parent-death
  signal (``process.pdeathsig_command``), so it gets SIGTERM even when the daemon is
  SIGKILLed. :meth:`stop` records the server's descendants, SIGTERMs the group, waits,
  SIGKILLs the group, then SIGKILLs any recorded descendant still alive (a stub that left
  the group) and reports survivors. As in ``vllm.server``, the dead server is not reaped
  before its group is swept (``waitid(WNOWAIT)``) so the group id cannot be reused.
* **Readiness fails fast**: :meth:`wait_ready` polls ``GET /v2/health/ready`` and gives up
  at once when the process exits, with the tail of the log.
* :meth:`start` must run on a long-lived thread (the event loop's): the parent-death
  signal fires when the spawning *thread* exits.

Backends: a full install (``install.backends_dir``, see :mod:`.install`) is run with its own
backends folder as ``--backend-directory``, so every backend it ships loads. Otherwise
(the pytriton wheel) the backend dir built under ``state_dir/triton/backends/python`` links the
bundled ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the stub built for
the models' Python; the env puts that Python's libpython folder first on
``LD_LIBRARY_PATH`` (the stub embeds libpython), its venv ``bin`` first on ``PATH`` (so
stubs see the venv's site-packages) and the project root on ``PYTHONPATH`` (generated
models import ``modelium.runtimes.transformers_predictor``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from modelium.runtimes.base import RuntimeUnavailableError
from modelium.runtimes.process import LOOPBACK, child_env, free_ports, pdeathsig_command
from modelium.runtimes.triton import access
from modelium.runtimes.triton.install import TritonInstall

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
EXIT_TIMEOUT = 5  # seconds tritonserver waits for in-flight requests/connections on SIGTERM
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.05  # readiness poll: ready takes ~0.1 s, a refused connection costs microseconds
PROJECT_ROOT = Path(__file__).resolve().parents[3]

PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonPorts:
    http: int
    grpc: int
    metrics: int


def build_backend_dir(install: TritonInstall, dest: Path) -> Path:
    """``dest/python/`` with links to the python backend's library, its utils module and
    the stub for the models' Python. Returns ``dest`` (the ``--backend-directory``).
    Rebuilt every time (links replaced), so a reinstalled venv is picked up."""
    if install.python_backend_dir is None:
        raise FileNotFoundError("this tritonserver has no python backend folder to link")
    python_dir = Path(dest) / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    sources = {name: install.python_backend_dir / name for name in PYTHON_BACKEND_FILES}
    stub = install.stub if install.stub is not None else install.python_backend_dir / STUB_NAME
    sources[STUB_NAME] = stub
    for name, source in sources.items():
        if not source.exists():
            raise FileNotFoundError(f"python backend file missing: {source}")
        link = python_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return Path(dest)


def backend_directory(install: TritonInstall, private_dir: Path) -> Path:
    """The ``--backend-directory`` for ``install``: a full install's own backends folder as
    it is, else ``private_dir`` built with the python backend (:func:`build_backend_dir`)."""
    if install.backends_dir is not None:
        return install.backends_dir
    return build_backend_dir(install, private_dir)


def build_command(
    install: TritonInstall, repository: Path, backend_dir: Path, ports: TritonPorts, *,
    api_key: str, extra_args: Sequence[str] = (),
) -> list[str]:
    return [
        str(install.executable),
        f"--model-repository={repository}",
        "--model-control-mode=explicit",
        f"--backend-directory={backend_dir}",
        f"--http-address={LOOPBACK}",
        f"--grpc-address={LOOPBACK}",
        f"--metrics-address={LOOPBACK}",
        f"--http-port={ports.http}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-port={ports.metrics}",
        "--allow-gpu-metrics=false",
        "--disable-auto-complete-config",
        "--exit-on-error=false",  # one bad model must not stop the server
        # /v2/health/ready = the server answers, whatever its models do: with the default
        # (strict) it is "not ready" whenever a model is loading or unloading, i.e. at
        # every swap, and the daemon's /health would flap.
        "--strict-readiness=false",
        f"--exit-timeout-secs={EXIT_TIMEOUT}",  # SIGTERM: wait at most this for in-flight work
        "--log-verbose=0",
        *access.restriction_args(api_key),
        *extra_args,
    ]


def _prepend(value: str | None, *folders: Path | str | None) -> str:
    parts = [str(f) for f in folders if f]
    if value:
        parts.append(value)
    seen: list[str] = []
    for part in parts:
        if part not in seen:
            seen.append(part)
    return os.pathsep.join(seen)


def build_env(base: Mapping[str, str], install: TritonInstall, *, project_root: Path = PROJECT_ROOT,
              cache_dir: Path | None = None) -> dict[str, str]:
    env = child_env(base)
    env.pop("PYTHONHOME", None)  # would point the stubs' embedded Python elsewhere
    env.pop("PYTHONSTARTUP", None)
    env["LD_LIBRARY_PATH"] = _prepend(env.get("LD_LIBRARY_PATH"), install.python_libdir, install.libs_dir)
    if install.python is not None:
        venv_bin = install.python.parent
        env["PATH"] = _prepend(env.get("PATH"), venv_bin)
        env["VIRTUAL_ENV"] = str(venv_bin.parent)
    env["PYTHONPATH"] = _prepend(env.get("PYTHONPATH"), project_root)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if cache_dir is not None:
        env.setdefault("HF_HOME", str(cache_dir / "hf"))
    return env


class TritonServer:
    """One supervised ``tritonserver``; see the module doc."""

    def __init__(self, install: TritonInstall, work_dir: Path, *, repository: Path,
                 extra_args: Sequence[str] = (), project_root: Path = PROJECT_ROOT) -> None:
        self.install = install
        self.work_dir = Path(work_dir)
        self.repository = Path(repository)
        self.backend_dir = self.work_dir / "backends"
        self.log_path = self.work_dir / "tritonserver.log"
        self.extra_args = list(extra_args)
        self.project_root = project_root
        self.ports: TritonPorts | None = None
        self.api_key = ""  # the x-modelium-key value of this run (access.py); set by start()
        self.argv_scrubbed = False
        self.command: list[str] = []
        self.env: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._returncode: int | None = None
        self._reaped = False
        self.ready = False
        self.started_at: float | None = None
        self.ready_seconds: float | None = None
        self.survivors: list[int] = []  # pids still alive after the last stop (should stay empty)

    # ------------------------------------------------------------------ facts

    @property
    def base_url(self) -> str:
        assert self.ports is not None
        return f"http://{LOOPBACK}:{self.ports.http}"

    @property
    def headers(self) -> dict[str, str]:
        """What every call to this server must carry."""
        return access.headers(self.api_key)

    @property
    def metrics_url(self) -> str:
        assert self.ports is not None
        return f"http://{LOOPBACK}:{self.ports.metrics}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        self._check_exit()
        return self._returncode

    @property
    def alive(self) -> bool:
        return self._process is not None and not self._reaped and self.returncode is None

    def process_pids(self) -> list[int]:
        """The server and its live descendants (stubs)."""
        if not self.alive or self.pid is None:
            return []
        try:
            root = psutil.Process(self.pid)
            return [self.pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.Error:
            return []

    def stub_pids(self, entry: Path) -> list[int]:
        """The python-backend stubs serving the model whose repository entry is ``entry``
        (one per model instance). A stub's argv is ``STUB MODEL_PY SHM_REGION ...
        PARENT_PID BACKEND_DIR ... INSTANCE_NAME ...`` with ``MODEL_PY`` =
        ``entry/VERSION/model.py`` (tritonserver 2.51), so the path names the model
        unambiguously where the instance name (``NAME_GROUP_INDEX``) would not."""
        if not self.alive or self.pid is None:
            return []
        pids = []
        for child in self._descendants():
            try:
                argv = child.cmdline()
            except psutil.Error:
                continue
            if len(argv) > 1 and Path(argv[0]).name == STUB_NAME and Path(argv[1]).parent.parent == Path(entry):
                pids.append(child.pid)
        return sorted(pids)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 256 * 1024))
                tail = deque(handle.read().decode("utf-8", "replace").splitlines(), maxlen=lines)
        except OSError:
            return ""
        return "\n".join(tail)

    # ------------------------------------------------------------------ start / ready

    def start(self) -> None:
        """Spawn the server (quick). Call it on a long-lived thread; see the module doc."""
        if self._process is not None:
            raise RuntimeError("this TritonServer was already started; make a new one")
        self.repository.mkdir(parents=True, exist_ok=True)
        self.backend_dir = backend_directory(self.install, self.work_dir / "backends")
        http, grpc, metrics = free_ports(3)
        self.ports = TritonPorts(http, grpc, metrics)
        self.api_key = access.new_key()
        self.command = build_command(self.install, self.repository, self.backend_dir, self.ports,
                                     api_key=self.api_key, extra_args=self.extra_args)
        self.env = build_env(os.environ, self.install, project_root=self.project_root,
                             cache_dir=self.work_dir / "cache")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            log_file.write(f"--- modelium: starting tritonserver on http port {http}\n".encode())
            log_file.flush()
            self._process = subprocess.Popen(
                pdeathsig_command(self.command),
                env=self.env,
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self.started_at = time.monotonic()
        log.info("started tritonserver (pid %d, http %d), log %s", self._process.pid, http, self.log_path)

    async def wait_ready(self, timeout: float) -> None:
        """Return once ``GET /v2/health/ready`` answers 200; raise RuntimeUnavailableError
        with the log tail if the process exits first (at once) or ``timeout`` passes."""
        if self._process is None:
            raise RuntimeError("start() first")
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(trust_env=False) as client:
            while True:
                if not self.alive:
                    raise RuntimeUnavailableError(
                        f"tritonserver exited with code {self.returncode} while starting; "
                        f"last log lines:\n{self.log_tail()}"
                    )
                try:
                    response = await client.get(f"{self.base_url}/v2/health/ready", headers=self.headers,
                                                timeout=2.0)
                    if response.status_code == 200 and self.alive:
                        # It answers, so it has parsed its options: hide the key in its argv.
                        self.argv_scrubbed = access.scrub_argv(self._process.pid, self.api_key)
                        self.ready = True
                        self.ready_seconds = time.monotonic() - (self.started_at or deadline)
                        log.info("tritonserver ready in %.2fs", self.ready_seconds)
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() >= deadline:
                    raise RuntimeUnavailableError(
                        f"tritonserver did not become ready within {timeout:.0f}s; "
                        f"last log lines:\n{self.log_tail()}"
                    )
                await asyncio.sleep(POLL_INTERVAL)

    # ------------------------------------------------------------------ stop

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the group, wait up to ``timeout``, SIGKILL the group and any recorded
        descendant still alive; reap. Blocking; safe to call twice or on a dead server."""
        process = self._process
        if process is None or self._reaped:
            return self._returncode
        tracked = self._descendants()
        if self.alive:
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.alive:
                log.warning("tritonserver (pid %d) ignored SIGTERM for %.0fs; killing its group", process.pid, timeout)
        self.reap(tracked)
        return self._returncode

    def reap(self, tracked: list[psutil.Process] | None = None) -> None:
        """SIGKILL what is left of the group and of the recorded descendants, reap the
        server; :attr:`survivors` lists any pid still alive afterwards."""
        process = self._process
        if process is None or self._reaped:
            return
        tracked = tracked if tracked is not None else self._descendants()
        self._signal_group(signal.SIGKILL)
        for proc in tracked:
            try:
                proc.kill()
            except psutil.Error:
                pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("tritonserver (pid %d) did not die after SIGKILL", process.pid)
            return
        if self._returncode is None:
            self._returncode = process.returncode
        self._reaped = True
        self.ready = False
        _, alive = psutil.wait_procs(tracked, timeout=5)
        self.survivors = [p.pid for p in alive]
        if self.survivors:
            log.error("processes of tritonserver survived SIGKILL: %s", self.survivors)

    def _descendants(self) -> list[psutil.Process]:
        if self._process is None:
            return []
        try:
            return psutil.Process(self._process.pid).children(recursive=True)
        except psutil.Error:
            return []

    def _signal_group(self, sig: int) -> None:
        assert self._process is not None
        try:
            os.killpg(self._process.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            log.warning("cannot signal tritonserver group %d: %s", self._process.pid, exc)

    def _check_exit(self) -> None:
        if self._process is None or self._returncode is not None:
            return
        if self._reaped:
            self._returncode = self._process.returncode
            return
        try:
            info = os.waitid(os.P_PID, self._process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            self._returncode = self._process.returncode if self._process.returncode is not None else -1
            return
        if info is None:
            return
        self._returncode = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
