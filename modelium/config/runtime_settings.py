"""Settings of the three runtimes: the Ray Serve cluster, vLLM servers (and their per-model
sizing), Triton."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator

from modelium.config.base import (
    NonEmptyStr,
    Port,
    Section,
    check_host_port,
    reject_empty_path,
    resolve_path,
)


class RaySettings(Section):
    """Ray Serve runtime: the embedded private cluster, or an existing one to join."""

    enabled: bool = Field(default=True, description="Whether the Ray Serve runtime is used.")
    address: NonEmptyStr = Field(
        default="auto",
        description=(
            "'auto' = Modelium starts its own private Ray cluster on loopback; otherwise "
            "'host:port' of a running cluster to join."
        ),
    )
    http_port: Port = Field(
        default=8010, description="Port of the Ray Serve HTTP proxy (bound to 127.0.0.1)."
    )
    gcs_port: Port = Field(default=6390, description="GCS port of the private cluster.")
    num_cpus: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="CPUs the private cluster advertises (null = all of them)."
    )
    temp_dir: Path | None = Field(
        default=None,
        validate_default=True,
        description="Ray's temp/session dir (null = a short private dir chosen at runtime).",
    )
    start_timeout_seconds: float = Field(
        default=120.0, gt=0, description="How long to wait for the private cluster to start."
    )

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        return value if value == "auto" else check_host_port(value)

    @field_validator("temp_dir", mode="before")
    @classmethod
    def _temp_dir_not_empty(cls, value: Any) -> Any:
        return reject_empty_path(value)

    @field_validator("temp_dir")
    @classmethod
    def _resolve_temp_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(value, info)


class VllmModelSettings(Section):
    """How one vLLM server is sized; `vllm.default_settings`, overridable per model."""

    max_model_len: Annotated[int, Field(ge=16)] | None = Field(
        default=2048, description="Context length served (null = the model's own, capped by vLLM)."
    )
    max_num_seqs: int = Field(default=16, ge=1, description="Sequences batched at once.")
    dtype: NonEmptyStr = Field(default="auto", description="Weights dtype ('auto' = the model's; CPU uses float32 for float16).")
    kv_cache_bytes: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="KV-cache budget in bytes (null = max_model_len x max_num_seqs tokens, "
        "capped at 4 GiB on CPU).",
    )
    enforce_eager: bool = Field(default=False, description="Skip CUDA graphs (less memory, slower). Always on for CPU.")
    park: bool = Field(
        default=False,
        description="GPU only: park (vLLM sleep mode) instead of stopping when evicted.",
    )


class VllmModelOverride(Section):
    """Per-model vLLM sizing; unset fields fall back to `vllm.default_settings`."""

    max_model_len: Annotated[int, Field(ge=16)] | None = None
    max_num_seqs: Annotated[int, Field(ge=1)] | None = None
    dtype: NonEmptyStr | None = None
    kv_cache_bytes: Annotated[int, Field(ge=1)] | None = None
    enforce_eager: bool | None = None
    park: bool | None = None


class VllmSettings(Section):
    """vLLM runtime: one supervised vLLM OpenAI server process per model."""

    enabled: bool = Field(
        default=True,
        description="Serve causal LMs with vLLM when it is installed (else Ray Serve).",
    )
    python: NonEmptyStr = Field(
        default="auto",
        description="Interpreter of the venv that has vLLM ('auto' = the project's .venvs/vllm).",
    )
    base_port: Port = Field(
        default=8100, description="Port of the first vLLM server; later ones count up from it."
    )
    extra_args: list[str] = Field(
        default_factory=list, description="Extra arguments appended to every vLLM server command."
    )
    startup_timeout_seconds: float = Field(
        default=300.0, gt=0, description="How long a vLLM server may take to become healthy."
    )
    architectures: list[NonEmptyStr] | None = Field(
        default=None,
        description="Architectures to send to vLLM (null = ask the installed vLLM).",
    )
    default_settings: VllmModelSettings = Field(default_factory=VllmModelSettings)

    def settings_for(self, override: VllmModelOverride | None) -> VllmModelSettings:
        """The default settings with a model's overrides applied."""
        if override is None:
            return self.default_settings
        changes = {k: v for k, v in override.model_dump().items() if v is not None}
        return self.default_settings.model_copy(update=changes)


class TritonSettings(Section):
    """Triton Inference Server runtime."""

    enabled: bool = Field(
        default=True,
        description="Serve Triton-native, ONNX and non-generative HF models with Triton when "
        "a tritonserver is available (else Ray Serve).",
    )
    endpoint: NonEmptyStr = Field(
        default="auto",
        description="host:port of a running Triton's HTTP endpoint to drive, or 'auto' to start our own.",
    )
    executable: NonEmptyStr = Field(
        default="tritonserver", description="The tritonserver command (name on PATH or path)."
    )
    startup_timeout_seconds: float = Field(
        default=120.0, gt=0, description="How long tritonserver may take to become ready."
    )
    load_timeout_seconds: float = Field(
        default=300.0, gt=0, description="How long one model may take to load in Triton."
    )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        # "auto": Modelium starts and supervises its own tritonserver (on free loopback ports).
        return value if value == "auto" else check_host_port(value)
