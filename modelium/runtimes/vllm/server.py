"""One supervised vLLM server process: start, readiness, stop, park/wake.

vLLM has no load/unload API, so a model is loaded by starting a server for it and
unloaded by stopping that server. What this class guarantees, and why:

* **Nothing is orphaned.** The server runs in its own session (so its process group is
  everything it starts: the API server and its engine-core process), with a parent-death
  signal (``process.pdeathsig_command``) so it gets SIGTERM even when the daemon is
  SIGKILLed; vLLM then shuts its engine down itself. :meth:`stop` sends SIGTERM to the
  group, waits, and SIGKILLs the group. NB: vLLM 0.32's engine-core process does *not*
  die when the API server is SIGKILLed (seen here: it lingered, re-parented to init), so
  a dead server's group is always swept with SIGKILL.
* **The group id stays ours.** The server process is never reaped before its group is
  swept: liveness is checked with ``waitid(WNOWAIT)``, which leaves a dead server as a
  zombie. A zombie keeps its pid, hence the process-group id, reserved, so ``killpg``
  can never hit an unrelated group that reused the number. :meth:`stop` (or
  :meth:`reap`) sweeps the group, then reaps.
* **Readiness fails fast.** :meth:`wait_ready` polls ``GET /health`` and gives up at once
  when the process exits (a bad model fails in seconds instead of after the start-up
  timeout), raising RuntimeLoadError with the tail of the server's log.
* :meth:`start` must run on a long-lived thread (the event loop's): the parent-death
  signal fires when the spawning *thread* exits.

stdout and stderr go to one log file per model (``state_dir/vllm/logs/NAME.log``), kept
after the server stops so a crash can be read afterwards.

Every call this class makes (``/health``, ``/sleep``, ``/wake_up``, ``/is_sleeping``)
carries the server's own key (:attr:`VllmServer.headers`, see ``auth.py``); the server
refuses calls without it on every path but ``GET /health``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from modelium.runtimes.base import RuntimeLoadError
from modelium.runtimes.process import pdeathsig_command, port_accepts
from modelium.runtimes.vllm.auth import bearer

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
STOP_TIMEOUT = 10.0
HEALTH_TIMEOUT = 5.0
#: Readiness poll. Until vLLM listens, each try is a bare connect to a refused loopback
#: port (``process.port_accepts``, ~30 us), so polling often costs the start-up nothing;
#: once it listens, ``GET /health`` is asked. The first 200 is seen within 50 ms instead
#: of up to 0.5 s (measured: bench/runtime_start.py, docs/benchmarks.md).
POLL_INTERVAL = 0.05
PARK_TIMEOUT = 120.0  # level-1 sleep copies the weights to host RAM: 2.7 s for 3.3 GiB


class VllmServer:
    """One ``vllm.entrypoints.openai.api_server`` process serving one model."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        port: int,
        *,
        client: httpx.AsyncClient | None = None,
        cwd: Path | None = None,
        served_name: str | None = None,
        model_dir: Path | None = None,
        device_id: str = "cpu",
        device_kind: str = "cpu",
        sleep_mode: bool = False,
        api_key: str = "",
    ) -> None:
        self.name = name  # the instance key
        self.served_name = served_name or name  # --served-model-name: what requests must say
        self.model_dir = model_dir
        self.device_id = device_id
        self.device_kind = device_kind
        self.sleep_mode = sleep_mode  # started with --enable-sleep-mode (parking possible)
        self.command = list(command)
        self.env = dict(env)
        self.api_key = api_key  # this server's VLLM_API_KEY: only the manager holds it
        self.log_path = Path(log_path)
        self.port = port
        self.cwd = cwd
        self._client = client
        self._process: subprocess.Popen[bytes] | None = None
        self._returncode: int | None = None
        self._reaped = False
        self.ready = False
        self.parked = False
        self.started_at: float | None = None
        self.ready_seconds: float | None = None

    # ------------------------------------------------------------------ facts

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """What every call to this server must carry (``{}`` for a server without a key)."""
        return bearer(self.api_key) if self.api_key else {}

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has exited (negative = killed by that signal)."""
        self._check_exit()
        return self._returncode

    @property
    def alive(self) -> bool:
        return self._process is not None and self.returncode is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log ("" if there is none)."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 256 * 1024))  # enough for 40 long lines
                tail = deque(handle.read().decode("utf-8", "replace").splitlines(), maxlen=lines)
        except OSError:
            return ""
        return "\n".join(tail)

    # ------------------------------------------------------------------ start / ready

    def start(self) -> None:
        """Spawn the server (quick). Call it on a long-lived thread; see the module doc."""
        if self._process is not None:
            raise RuntimeError(f"vLLM server for {self.name!r} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            log_file.write(f"--- modelium: starting vLLM for {self.name} on port {self.port}\n".encode())
            log_file.flush()
            self._process = subprocess.Popen(
                pdeathsig_command(self.command, python=self.command[0]),
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own group: stop() reaches the engine core too
                close_fds=True,
            )
        self.started_at = time.monotonic()
        log.info("started vLLM server for %s (pid %d, port %d), log %s",
                 self.name, self._process.pid, self.port, self.log_path)

    async def wait_ready(self, timeout: float) -> None:
        """Return once ``GET /health`` answers 200; raise RuntimeLoadError with the log
        tail if the process exits first (at once) or ``timeout`` passes."""
        if self._process is None:
            raise RuntimeError("start() first")
        deadline = time.monotonic() + timeout
        async with self._http() as client:
            while True:
                if not self.alive:
                    raise RuntimeLoadError(
                        f"vLLM server for {self.name} exited with code {self.returncode} while starting; "
                        f"last log lines:\n{self.log_tail()}"
                    )
                try:
                    if await port_accepts(self.port):  # cheap while vLLM is still importing
                        response = await client.get(f"{self.base_url}/health", headers=self.headers,
                                                    timeout=HEALTH_TIMEOUT)
                        if response.status_code == 200 and self.alive:
                            self.ready = True
                            self.ready_seconds = time.monotonic() - (self.started_at or deadline)
                            log.info("vLLM server for %s ready in %.1fs", self.name, self.ready_seconds)
                            return
                except httpx.HTTPError:
                    pass  # listening, not serving yet
                if time.monotonic() >= deadline:
                    raise RuntimeLoadError(
                        f"vLLM server for {self.name} did not become healthy within {timeout:.0f}s; "
                        f"last log lines:\n{self.log_tail()}"
                    )
                await asyncio.sleep(POLL_INTERVAL)

    # ------------------------------------------------------------------ stop

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the process group, wait up to ``timeout``, SIGKILL the group; reap.

        Blocking (up to ``timeout`` + a few seconds); returns the exit status. Safe to
        call more than once and on a server that already died.
        """
        process = self._process
        if process is None or self._reaped:
            return self._returncode
        if self.alive:
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.alive:
                log.warning("vLLM server for %s (pid %d) ignored SIGTERM for %.0fs; killing its group",
                            self.name, process.pid, timeout)
        self.reap()
        return self._returncode

    def reap(self) -> None:
        """SIGKILL whatever is left of the group (the engine core outlives a killed API
        server), then reap the server process. Blocking for at most a few seconds."""
        process = self._process
        if process is None or self._reaped:
            return
        self._signal_group(signal.SIGKILL)  # the unreaped leader keeps the group id ours
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # uninterruptible sleep; give up on this one
            log.error("vLLM server for %s (pid %d) did not die after SIGKILL", self.name, process.pid)
            return
        if self._returncode is None:
            self._returncode = process.returncode
        self._reaped = True
        self.ready = False

    def _signal_group(self, sig: int) -> None:
        assert self._process is not None
        try:
            os.killpg(self._process.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:  # never expected: the group is ours
            log.warning("cannot signal vLLM group %d: %s", self._process.pid, exc)

    def _check_exit(self) -> None:
        """Record the exit status without reaping (see the module doc)."""
        if self._process is None or self._returncode is not None:
            return
        if self._reaped:
            self._returncode = self._process.returncode
            return
        try:
            info = os.waitid(os.P_PID, self._process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped by someone else (e.g. a waitpid(-1) watcher)
            self._returncode = self._process.returncode if self._process.returncode is not None else -1
            return
        if info is None:
            return
        if info.si_code == os.CLD_EXITED:
            self._returncode = info.si_status
        else:  # killed or dumped core: Popen's convention, minus the signal number
            self._returncode = -info.si_status

    # ------------------------------------------------------------------ park / wake

    async def park(self, level: int = 1) -> float:
        """vLLM sleep mode: weights to host RAM, KV cache freed (GPU only; the server must
        run with ``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1``). Returns seconds."""
        seconds = await self._post("/sleep", params={"level": str(level)})
        self.parked = True
        return seconds

    async def wake(self) -> float:
        """Bring a parked server back (0.11 s on the H100). Returns seconds."""
        seconds = await self._post("/wake_up")
        self.parked = False
        return seconds

    async def is_sleeping(self) -> bool:
        async with self._http() as client:
            response = await client.get(f"{self.base_url}/is_sleeping", headers=self.headers,
                                        timeout=HEALTH_TIMEOUT)
            response.raise_for_status()
            return bool(response.json().get("is_sleeping"))

    async def _post(self, path: str, params: Mapping[str, str] | None = None) -> float:
        if not self.alive:
            raise RuntimeError(f"vLLM server for {self.name} is not running")
        started = time.monotonic()
        async with self._http() as client:
            try:
                response = await client.post(f"{self.base_url}{path}", params=params, headers=self.headers,
                                             timeout=PARK_TIMEOUT)
            except httpx.HTTPError as exc:
                raise RuntimeError(f"vLLM server for {self.name}: POST {path} failed: {exc!r}") from exc
        if response.status_code != 200:
            hint = " (was it started with park enabled, i.e. --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1?)" \
                if response.status_code == 404 else ""
            raise RuntimeError(
                f"vLLM server for {self.name}: POST {path} answered {response.status_code}{hint}: "
                f"{response.text[:500]}"
            )
        return time.monotonic() - started

    async def asleep(self) -> bool:
        """vLLM's own word (``GET /is_sleeping``); a server that cannot answer counts as
        asleep, so it gets a wake attempt (and is replaced when that fails too)."""
        try:
            return await self.is_sleeping()
        except Exception:  # noqa: BLE001 - HTTP errors, non-JSON, 404 without dev mode
            return True

    def _http(self) -> _ClientContext:
        return _ClientContext(self._client)


def rotate_log(log_path: Path) -> None:
    """Keep the previous run's log as NAME.prev.log; the tail then shows this run only."""
    if log_path.exists():
        try:
            shutil.move(log_path, log_path.with_suffix(".prev.log"))
        except OSError:
            pass


class _ClientContext:
    """The shared client when there is one (not closed on exit), else a private one."""

    def __init__(self, client: httpx.AsyncClient | None) -> None:
        self._shared = client
        self._own: httpx.AsyncClient | None = None

    async def __aenter__(self) -> httpx.AsyncClient:
        if self._shared is not None and not self._shared.is_closed:
            return self._shared
        self._own = httpx.AsyncClient(trust_env=False)
        return self._own

    async def __aexit__(self, *exc: object) -> None:
        if self._own is not None:
            await self._own.aclose()
