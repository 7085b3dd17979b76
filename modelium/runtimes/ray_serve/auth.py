"""Ray token authentication for the private cluster (Ray >= 2.52; checked with 2.60).

With ``RAY_AUTH_MODE=token`` every Ray gRPC server (GCS, raylet, object manager, core
workers, the Ray Client server) and the runtime-env agent's HTTP server refuse a caller
without ``RAY_AUTH_TOKEN`` (checked by ``tests/e2e/test_ray_serve_manager.py``: a raw
GCS call without the token answers UNAUTHENTICATED, ``ray.init(address=...)`` and
``ray://`` without it fail). So a local user who finds the GCS port can no longer run
tasks as the daemon's user.

How the token travels: one fresh ``secrets.token_hex(32)`` per private cluster (a new
one at each restart), only ever in environments: the ``ray start`` child's (every Ray
process inherits it from there) and this process's while it is connected (Ray's C++
token loader reads ``RAY_AUTH_TOKEN``); it is removed from this process's environment
when the connection goes. Never on a command line, never in ``~/.ray/auth_token``.
The other children of the daemon (vLLM, tritonserver) do not get it
(:func:`modelium.runtimes.process.child_env`).

A cluster Modelium only joins (``ray.address: host:port``) keeps whatever the daemon's
environment says (``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``, or
Ray's default ``~/.ray/auth_token``): securing that cluster is its owner's business.
"""

from __future__ import annotations

import os
import secrets

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
_DRIVER_VARS = (MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV)
#: (the token in use, the driver's variables as they were before it)
_saved: tuple[str, dict[str, str | None]] | None = None


def new_token() -> str:
    """256 random bits, the same form as Ray's own ``ray get-auth-token --generate``."""
    return secrets.token_hex(32)


def cluster_env(token: str) -> dict[str, str]:
    """What the private cluster's ``ray start`` gets (and every Ray process under it)."""
    return {MODE_ENV: "token", TOKEN_ENV: token}


def use_in_driver(token: str) -> None:
    """Make this process's next ``ray.init`` present ``token``.

    Ray caches both the mode (``RayConfig``) and the token (``AuthenticationTokenLoader``)
    per process; a second private cluster in the same process (a restart) has a new
    token, so both caches are refreshed, as Ray's own ``_enable_token_auth`` does.
    """
    global _saved
    before = _saved[1] if _saved is not None else {name: os.environ.get(name) for name in _DRIVER_VARS}
    _saved = (token, before)
    os.environ.pop(TOKEN_PATH_ENV, None)
    os.environ.update(cluster_env(token))
    _refresh_ray_caches()


def forget_in_driver(token: str) -> None:
    """Put back the driver's auth variables as they were before :func:`use_in_driver`
    (a no-op unless ``token`` is the one in use)."""
    global _saved
    if _saved is None or _saved[0] != token:
        return
    for name, value in _saved[1].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved = None
    _refresh_ray_caches()


def _refresh_ray_caches() -> None:
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication: nothing cached
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
