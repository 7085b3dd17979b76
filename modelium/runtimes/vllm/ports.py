"""Ports for vLLM servers: counted up from ``vllm.base_port``, skipping any in use.

Every vLLM server is its own HTTP server, so each needs a port. They come from a fixed
window (``base_port`` .. ``base_port + span - 1``) so an operator can firewall or find
them, and a port is handed out only if nothing listens on it now (another program, a
server of another Modelium) and it is not already handed to one of our servers that may
not have bound it yet. There is a window between the bind test and vLLM's own bind in
which another program could take the port; the server then fails to start and the
caller releases the port and tries again with the next one.
"""

from __future__ import annotations

import threading

from modelium.runtimes.process import LOOPBACK, port_is_free

MAX_PORT = 65535


class NoFreePortError(RuntimeError):
    """Every port of the window is in use."""


class PortAllocator:
    """Hands out free ports from ``[base_port, base_port + span)``; thread-safe."""

    def __init__(self, base_port: int, *, span: int = 1000, host: str = LOOPBACK) -> None:
        if not 1 <= base_port <= MAX_PORT:
            raise ValueError(f"base_port must be in 1..{MAX_PORT}, got {base_port}")
        if span < 1:
            raise ValueError(f"span must be >= 1, got {span}")
        self.base_port = base_port
        self.span = min(span, MAX_PORT - base_port + 1)
        self.host = host
        self._taken: set[int] = set()
        self._lock = threading.Lock()

    @property
    def allocated(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._taken)

    def allocate(self) -> int:
        """The lowest port of the window that is neither handed out nor in use."""
        with self._lock:
            for port in range(self.base_port, self.base_port + self.span):
                if port not in self._taken and port_is_free(port, self.host):
                    self._taken.add(port)
                    return port
        raise NoFreePortError(
            f"no free port for a vLLM server in {self.base_port}..{self.base_port + self.span - 1} "
            f"({len(self._taken)} handed out to running servers; the rest are in use)"
        )

    def release(self, port: int) -> None:
        """Give a port back (releasing one not handed out is a no-op)."""
        with self._lock:
            self._taken.discard(port)
