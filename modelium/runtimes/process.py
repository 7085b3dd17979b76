"""Helpers for the child processes Modelium supervises (the private Ray cluster, vLLM servers).

Two rules every supervised child follows, and why:

* **It dies with the daemon, even on SIGKILL.** A parent-death signal
  (``prctl(PR_SET_PDEATHSIG, SIGTERM)``) makes the kernel send the child SIGTERM when the
  daemon goes away, so no GPU-holding server is ever orphaned. It is set by a tiny exec
  wrapper (:func:`pdeathsig_command`) rather than ``preexec_fn``, which is not safe in a
  process that has threads. NB: Linux fires the signal when the *thread* that spawned the
  child exits, so spawn children on a long-lived thread (the daemon's event-loop thread),
  never in a short-lived worker thread (``asyncio.to_thread``).
* **Ports are probed the way servers bind them** (:func:`port_is_free`), with
  ``SO_REUSEADDR``, so a just-stopped server's connections in TIME_WAIT do not make a port
  look taken.
* **A runtime's secret reaches only that runtime** (:func:`child_env`): the private Ray
  cluster's token and a vLLM server's key are never inherited by another child.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Mapping, Sequence

LOOPBACK = "127.0.0.1"

# argv: [parent pid, program, *its args]. Exits 1 without exec'ing when the parent already
# died before prctl took effect (the signal would never come then).
_PDEATHSIG_WRAPPER = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
    sys.exit("prctl(PR_SET_PDEATHSIG) failed: errno %d" % ctypes.get_errno())
if os.getppid() != int(sys.argv[1]):  # the parent died before prctl took effect
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def pdeathsig_command(argv: Sequence[str], *, python: str | os.PathLike[str] | None = None) -> list[str]:
    """``argv`` wrapped so the child gets SIGTERM when this process dies.

    ``python`` runs the wrapper (default: this interpreter); it then ``execv``'s
    ``argv[0]`` (a path, not looked up on PATH) with ``argv`` as its arguments, so the
    process keeps its pid and its command line is ``argv`` once running. The parent-death
    setting survives the exec.
    """
    if not argv:
        raise ValueError("argv must name a program")
    runner = os.fspath(python) if python is not None else sys.executable
    return [runner, "-c", _PDEATHSIG_WRAPPER, str(os.getpid()), *map(str, argv)]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could listen on ``port`` now. SO_REUSEADDR as the servers use it:
    connections of a just-stopped server lingering in TIME_WAIT do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def port_accepts(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on ``port`` now. A bare non-blocking
    connect: ~30 us when refused, against ~1.3 ms of CPU for an HTTP client's failed
    request, so a readiness loop can poll every few tens of milliseconds while a server
    is still importing without taking CPU from that very start-up."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 1.0)
        except (OSError, TimeoutError):
            return False
    return True


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports the kernel says are free now (bound to 0 together, then
    released: another program may still take one first, so callers retry on a clash)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


#: One runtime's secret, which no other child may inherit from the daemon's environment:
#: the private Ray cluster's token (set in the daemon while it is connected) and a vLLM
#: key (only ever set in one vLLM server's own environment, dropped here in case the
#: daemon was started with one).
RUNTIME_SECRET_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "VLLM_API_KEY")


def child_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without the runtime secrets (:data:`RUNTIME_SECRET_ENV`) and without the
    daemon's own ``MODELIUM_*`` configuration, which may carry ``gateway.api_keys``."""
    return {k: v for k, v in base.items() if k not in RUNTIME_SECRET_ENV and not k.startswith("MODELIUM_")}
