"""Which Triton backend a model needs, and what to say when the server lacks it.

Why here: analysis reads a ``config.pbtxt`` without knowing any install, and the manager
would only find out through Triton's opaque load error. The brain knows both (the
profile's ``backend``/``platform``, kept in ``profile.model_type``, and the backends the
located tritonserver has), so a model whose backend is absent fails at once with a reason
naming the backend and how to get it, and an ONNX folder's reason says which route runs it.
"""

from __future__ import annotations

from collections.abc import Collection

# Triton's `platform` values and the backend folder each one loads (Triton's model
# configuration docs); `ensemble` is scheduled by the server itself.
PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
}
NO_BACKEND_PLATFORMS = frozenset({"ensemble"})
ONNX_BACKEND = "onnxruntime"

HOW_TO_GET = (
    "install NVIDIA's full Triton release (the nvcr.io/nvidia/tritonserver container, or its "
    "tarball unpacked so that /opt/tritonserver/backends/{backend} exists) and set "
    "triton.executable to its bin/tritonserver (or put it first on PATH)"
)


def required_backend(backend_or_platform: str | None) -> str | None:
    """The backend folder a config's ``backend:`` or ``platform:`` needs; None when no
    backend is needed (ensemble) or the value is unknown (Triton's error then applies)."""
    if not backend_or_platform or backend_or_platform in NO_BACKEND_PLATFORMS:
        return None
    if backend_or_platform in PLATFORM_BACKENDS:
        return PLATFORM_BACKENDS[backend_or_platform]
    if "_" in backend_or_platform:  # an unknown platform-style name: cannot tell
        return None
    return backend_or_platform  # `backend: X` names the folder itself


def missing_backend(backend_or_platform: str | None, available: Collection[str] | None) -> str | None:
    """Why this tritonserver cannot load a config asking for ``backend_or_platform``, or
    None when it can (or nothing is known about its backends: an external server)."""
    if available is None:
        return None
    needed = required_backend(backend_or_platform)
    if needed is None or needed in available:
        return None
    asked = (f"platform {backend_or_platform!r} (backend {needed!r})" if backend_or_platform != needed
             else f"backend {needed!r}")
    have = ", ".join(sorted(available)) or "none"
    return (f"its config.pbtxt asks for {asked}, which this tritonserver does not have "
            f"(it has: {have}); {HOW_TO_GET.format(backend=needed)}")


def onnx_route(available: Collection[str] | None) -> str:
    """What runs an ONNX folder on Triton, as a reason's clause."""
    if available is not None and ONNX_BACKEND in available:
        return "Triton's onnxruntime backend runs the graph (platform onnxruntime_onnx)"
    why = ("this tritonserver has no onnxruntime backend" if available is not None
           else "the backends of an external Triton are not known")
    return f"Triton's python backend runs the graph with the onnxruntime Python package ({why})"
