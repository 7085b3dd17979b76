"""The header that closes Modelium's own tritonserver to everyone but Modelium.

tritonserver 2.51 can require a header per API group: ``--http-restricted-api=
<apis>:<header>=<value>`` (and ``--grpc-restricted-protocol`` for gRPC). Modelium's own
server restricts every group but ``health`` to ``x-modelium-key: <random value>``, a new
``secrets.token_urlsafe(32)`` at each (re)start, sent by every call of
:class:`~modelium.runtimes.triton.client.TritonClient`; a request without it gets Triton's
``This API is restricted, expecting header 'x-modelium-key'`` (HTTP 403, pinned by
``tests/e2e/test_triton_manager.py``). ``health`` stays open: ``/v2/health/live``,
``/v2/health/ready`` and ``/v2/models/NAME/ready`` (whether a model of that name is ready;
nothing else).
gRPC is switched off (``--allow-grpc=false``: Modelium speaks HTTP only) and restricted
as well, in case ``triton.extra_args`` switches it back on. The metrics port cannot be
restricted by Triton: it serves read-only Prometheus text (model names, request counts
and latencies, memory), on loopback.

Where the value lives: Triton reads it only from its command line, which every local
user can read (``/proc/PID/cmdline``). So once the server answers, :func:`scrub_argv`
overwrites the value in the server's own argv memory (``/proc/PID/mem``, allowed to the
parent that started it), and ``ps`` shows ``x-modelium-key=****``. What is left open: the
start-up window (exec to first answer, ~0.1-0.5 s), and a kernel that refuses the write
(ptrace restrictions): then a warning says the key stays readable by local users.

An external Triton (``triton.endpoint``) is driven without any header: it is the
operator's to secure.
"""

from __future__ import annotations

import logging
import secrets

log = logging.getLogger(__name__)

HEADER = "x-modelium-key"
RESTRICTED_APIS = ("inference", "model-repository", "metadata", "model-config", "statistics",
                   "shared-memory", "trace", "logging")


def new_key() -> str:
    return secrets.token_urlsafe(32)


def headers(key: str) -> dict[str, str]:
    return {HEADER: key} if key else {}


def restriction_args(key: str) -> list[str]:
    """The flags that make Triton ask for ``key`` (and turn gRPC off)."""
    if not key:
        raise ValueError("Modelium's own tritonserver needs a key")
    groups = ",".join(RESTRICTED_APIS)
    return [f"--http-restricted-api={groups}:{HEADER}={key}",
            "--allow-grpc=false", f"--grpc-restricted-protocol={groups}:{HEADER}={key}"]


def scrub_argv(pid: int, secret: str) -> bool:
    """Overwrite ``secret`` with ``*`` in the argv of process ``pid`` (a child of ours
    that already parsed it); True when ``/proc/PID/cmdline`` no longer shows it."""
    needle = secret.encode()
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat fields 48, 49)
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            args = mem.read(end - start)
            at = args.find(needle)
            while at >= 0:
                mem.seek(start + at)
                mem.write(b"*" * len(needle))
                at = args.find(needle, at + len(needle))
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return needle not in handle.read()
    except (OSError, ValueError, IndexError) as exc:
        log.warning("cannot hide Triton's key in its command line (%s): local users can read it with ps", exc)
        return False
