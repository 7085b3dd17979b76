"""Choosing a runtime for a profiled model (architecture.md, "Runtime choice").

Only runtimes that are both enabled in the config and implemented in this build are
considered, so a config naming vLLM before its manager exists degrades to Ray Serve with a
reason saying so instead of failing at load time.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from modelium.analysis.profile import FORMAT_ONNX, FORMAT_TRITON, ModelProfile
from modelium.brain.decisions import (
    RUNTIME_RAY_SERVE,
    RUNTIME_TRITON,
    RUNTIME_VLLM,
    RuntimeChoice,
)
from modelium.brain.triton_backends import missing_backend, onnx_route

TRITON_NATIVE_FORMATS = (FORMAT_ONNX, FORMAT_TRITON)


def _describe(profile: ModelProfile) -> str:
    """'text-generation model LlamaForCausalLM' — the facts every reason starts with."""
    what = profile.architecture or profile.model_type or "of unknown architecture"
    return f"{profile.task} model {what}"


def _why_unusable(
    runtime: str,
    enabled: Collection[str],
    implemented: Collection[str],
    unavailable: Mapping[str, str] | None = None,
) -> str:
    if unavailable and runtime in unavailable:
        return unavailable[runtime]
    if runtime not in enabled:
        return f"{runtime} is not enabled"
    if runtime not in implemented:
        return f"{runtime} is not implemented yet"
    return f"{runtime} is usable"


def choose_runtime(
    profile: ModelProfile,
    *,
    enabled: Collection[str],
    implemented: Collection[str] = (RUNTIME_RAY_SERVE,),
    override: str = "auto",
    vllm_architectures: Collection[str] | None = None,
    unavailable: Mapping[str, str] | None = None,
    triton_backends: Collection[str] | None = None,
) -> RuntimeChoice:
    """Apply the ordered rules: override, Triton-native formats, causal LMs, other HF models.

    ``unavailable`` maps a runtime that is enabled but cannot be used here to why
    (e.g. "vllm is enabled but not installed ..."); that text becomes part of the reason.
    ``triton_backends``: the backends the located tritonserver has (None: not known, e.g.
    an external server); a ``config.pbtxt`` folder whose backend is not among them gets no
    runtime, with a reason naming the backend and how to get it.
    """
    usable = {r for r in enabled if r in implemented and r not in (unavailable or {})}
    about = _describe(profile)
    if profile.format == FORMAT_TRITON and RUNTIME_TRITON in usable and override in ("auto", RUNTIME_TRITON):
        lacking = missing_backend(profile.model_type, triton_backends)
        if lacking is not None:
            return RuntimeChoice(None, f"{profile.format} {about}: {lacking}", "no-runtime")

    if override != "auto":
        if override in usable:
            return RuntimeChoice(
                override, f"{about} -> {override}: set by models.{profile.name}.runtime", "override"
            )
        why = _why_unusable(override, enabled, implemented, unavailable)
        return RuntimeChoice(
            None,
            f"{about}: models.{profile.name}.runtime is {override!r} but {why}",
            "no-runtime",
        )

    if profile.format in TRITON_NATIVE_FORMATS:
        if RUNTIME_TRITON in usable:
            return RuntimeChoice(
                RUNTIME_TRITON,
                f"{profile.format} {about} -> triton: "
                + (onnx_route(triton_backends) if profile.format == FORMAT_ONNX
                   else "Triton loads the folder's own config.pbtxt with the backend it names"),
                "triton-native",
            )
        why = _why_unusable(RUNTIME_TRITON, enabled, implemented, unavailable)
        return RuntimeChoice(
            None,
            f"{profile.format} {about} needs triton but {why}; "
            "Ray Serve runs transformers and cannot serve ONNX/Triton-native models",
            "no-runtime",
        )

    if profile.is_causal_lm:
        if RUNTIME_VLLM in usable:
            if vllm_architectures is None or profile.architecture in vllm_architectures:
                return RuntimeChoice(
                    RUNTIME_VLLM,
                    f"{about} -> vllm: causal LMs prefer vLLM, it is installed and serves "
                    f"{profile.architecture}",
                    "causal-lm-vllm",
                )
            why_not = f"architecture {profile.architecture} is not served by vLLM"
        else:
            why_not = _why_unusable(RUNTIME_VLLM, enabled, implemented, unavailable)
        if RUNTIME_RAY_SERVE in usable:
            return RuntimeChoice(
                RUNTIME_RAY_SERVE,
                f"{about} -> ray_serve: {why_not}, Ray Serve runs transformers",
                "causal-lm-fallback",
            )
        return RuntimeChoice(
            None,
            f"{about}: {why_not} and "
            f"{_why_unusable(RUNTIME_RAY_SERVE, enabled, implemented, unavailable)}",
            "no-runtime",
        )

    if RUNTIME_TRITON in usable:
        return RuntimeChoice(
            RUNTIME_TRITON,
            f"{about} -> triton: Triton's python backend runs transformers for non-causal models",
            "hf-model-triton",
        )
    why_not = _why_unusable(RUNTIME_TRITON, enabled, implemented, unavailable)
    if RUNTIME_RAY_SERVE in usable:
        return RuntimeChoice(
            RUNTIME_RAY_SERVE,
            f"{about} -> ray_serve: {why_not}, Ray Serve runs transformers",
            "hf-model-fallback",
        )
    return RuntimeChoice(
        None,
        f"{about}: {why_not} and {_why_unusable(RUNTIME_RAY_SERVE, enabled, implemented, unavailable)}",
        "no-runtime",
    )
