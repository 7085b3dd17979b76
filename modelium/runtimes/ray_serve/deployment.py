"""The Ray Serve replica class: one TransformersPredictor per replica.

Kept free of Ray imports on purpose: the manager wraps it with ``serve.deployment`` at
load time, and Ray pickles it by reference, so replicas import this module (Modelium must
therefore be importable on every node of the cluster; the private cluster gets the
project root on its PYTHONPATH).
"""

from __future__ import annotations

import os
from typing import Any


#: Set in the private cluster's environment: keep every socket of a replica on loopback.
LOOPBACK_ENV_VAR = "_MODELIUM_RAY_LOOPBACK_ONLY"


def bind_replica_grpc_to_loopback() -> bool:
    """Make this replica's inter-deployment gRPC server listen on 127.0.0.1 only.

    Ray Serve 2.60 starts that server on ``[::]:0`` (every interface) after the user
    constructor returns, with the address hard-coded in ``ray.serve._private.replica``;
    on a private loopback cluster nothing needs it from outside (handle calls go through
    Ray actor calls, not this server). Rewrites the address through the module-level
    helper it calls; returns False (and changes nothing) if Ray's internals moved.
    """
    try:
        from ray.serve._private import replica as replica_module
    except ImportError:
        return False
    original = getattr(replica_module, "add_port_to_grpc_server", None)
    if original is None:
        return False
    if getattr(original, "_modelium_loopback", False):
        return True

    def add_port_loopback_only(server: Any, address: str) -> Any:
        if isinstance(address, str) and address.startswith("[::]:"):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return original(server, address)

    add_port_loopback_only._modelium_loopback = True  # type: ignore[attr-defined]
    replica_module.add_port_to_grpc_server = add_port_loopback_only
    return True


class ModelReplica:
    """Serves one model folder for one task on one device.

    ``fingerprint`` is opaque to the replica: the manager stores what it needs to
    recognise the app after a daemon restart (model folder, folder signature, task,
    device) and reads it back with :meth:`fingerprint`.
    """

    def __init__(self, model_dir: str, task: str, device: str, fingerprint: dict[str, Any]) -> None:
        if os.environ.get(LOOPBACK_ENV_VAR) == "1":
            bind_replica_grpc_to_loopback()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from modelium.runtimes.transformers_predictor import TransformersPredictor

        self._fingerprint = dict(fingerprint)
        self._predictor = TransformersPredictor(model_dir, task, device)

    def predict(self, inputs: Any, parameters: dict[str, Any] | None = None) -> Any:
        # BadRequestError raised here reaches the caller wrapped in a RayTaskError whose
        # ``cause`` is the original exception; the manager unwraps it.
        return self._predictor.predict(inputs, parameters)

    def fingerprint(self) -> dict[str, Any]:
        return dict(self._fingerprint)

    def process_id(self) -> int:
        """This replica's pid, so the manager can measure the model's real memory."""
        return os.getpid()
