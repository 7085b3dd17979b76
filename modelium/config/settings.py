"""Typed Modelium settings: one small frozen pydantic model per concern.

Every model forbids unknown keys, so a typo in ``modelium.yaml`` is an error rather than a
silently ignored setting. Nothing here reads files or the environment: building settings
from ``modelium.yaml`` and ``MODELIUM_*`` variables is :mod:`modelium.config.loader`'s job.

Relative paths are resolved against ``base_dir`` when one is passed in the validation
context (``ModeliumSettings.model_validate(data, context={"base_dir": ...})``); the loader
always passes the directory holding the config file.

This module holds the top level and the small sections; the runtimes' sections are in
:mod:`.runtime_settings`, the orchestrator's policy in :mod:`.orchestration_settings`,
what they share in :mod:`.base`. Everything is importable from here as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from modelium.config.base import (
    ConfigProblems,
    NonEmptyStr,
    Port,
    Section,
    check_model_name,
    reject_empty_path,
    resolve_path,
)
from modelium.config.jobs_settings import JobsSettings
from modelium.config.orchestration_settings import OrchestrationSettings, SchedulerSettings
from modelium.config.runtime_settings import (
    RaySettings,
    TritonSettings,
    VllmModelOverride,
    VllmModelSettings,
    VllmSettings,
)

__all__ = [
    "ConfigProblems", "DiscoverySettings", "GatewaySettings", "GpuSpec", "JobsSettings", "MetricsSettings",
    "ModelOverride", "ModeliumSettings", "OrchestrationSettings", "RaySettings",
    "SchedulerSettings", "TritonSettings", "VllmModelOverride", "VllmModelSettings",
    "VllmSettings",
]


class GatewaySettings(Section):
    """The HTTP gateway (FastAPI on uvicorn)."""

    host: NonEmptyStr = Field(
        default="127.0.0.1",
        description="Interface the gateway binds to; use 0.0.0.0 to listen on every interface.",
    )
    port: Port = Field(default=8000, description="TCP port of the gateway.")
    api_keys: list[NonEmptyStr] = Field(
        default_factory=list,
        description="Accepted API keys (sent as 'Authorization: Bearer <key>'); empty = no auth.",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Allow a non-loopback host (gateway or metrics) without api_keys: anyone "
        "who can reach the port can then load, unload and query models.",
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024,
        description="Largest request body accepted; larger ones get 413 without being read.",
    )
    max_batch_items: int = Field(
        default=256, ge=1,
        description="Most inputs (texts, prompts, messages, tensor rows) in one request (else 422).",
    )
    request_timeout_seconds: float = Field(
        default=600.0, gt=0,
        description="How long one runtime call may take once the request was admitted (then "
        "504 and the slot is freed).",
    )


class GpuSpec(Section):
    """One GPU declared in config instead of detected (simulation, planning, tests)."""

    id: int = Field(ge=0, description="GPU index, as CUDA numbers it.")
    memory_gb: float = Field(gt=0, description="Total memory of the GPU in GiB.")
    name: NonEmptyStr = Field(default="simulated", description="Display name of the GPU.")


class MetricsSettings(Section):
    """Prometheus metrics."""

    enabled: bool = Field(default=True, description="Whether metrics are collected and served.")
    port: Port | None = Field(
        default=9090,
        description="Port of a separate metrics endpoint (null = only the gateway's /metrics).",
    )
    host: NonEmptyStr = Field(
        default="127.0.0.1", description="Interface the separate metrics endpoint binds to."
    )
    qps_window_seconds: float = Field(
        default=60.0, gt=0, description="Window over which per-model QPS is averaged."
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus server to read per-model QPS and idle time from (its HTTP "
        "query API, PromQL on Modelium's exported series), e.g. http://127.0.0.1:9091; "
        "null = Modelium's own counters.",
    )
    prometheus_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Timeout of one query to prometheus_url."
    )


class DiscoverySettings(Section):
    """Watching models/incoming/ for dropped model folders."""

    settle_seconds: float = Field(
        default=2.0, ge=0, description="A drop is complete once nothing in it changed this long."
    )
    rescan_interval_seconds: float = Field(
        default=5.0, gt=0, description="Seconds between full rescans (finds drops events miss)."
    )
    use_events: bool = Field(
        default=True, description="Also use filesystem events (inotify & co) to react faster."
    )
    allow_code: bool = Field(
        default=True,
        description="Accept drops that carry code Modelium would run: Triton python-backend "
        "model.py files, pickled weights (*.bin, *.pt: unpickling can run code). false = "
        "quarantine them (safetensors, ONNX and native Triton models only).",
    )
    analysis_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Budget for checking and analysing one drop (in a child "
        "process, killed after it); a drop that takes longer is quarantined.",
    )
    max_files_per_drop: int = Field(
        default=20000, ge=1, description="A drop with more entries than this is quarantined.",
    )


class ModelOverride(Section):
    """Per-model overrides of what analysis and the brain would decide."""

    runtime: Literal["auto", "ray_serve", "vllm", "triton"] = Field(
        default="auto", description="Runtime to use ('auto' = let the brain choose)."
    )
    gpu: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Pin the model to this GPU index (null = let placement pick)."
    )
    pinned: bool = Field(
        default=False, description="Never evicted or unloaded for idleness."
    )
    task: NonEmptyStr | None = Field(
        default=None, description="Override the task the analyzer detected."
    )
    batch_size: int = Field(default=1, ge=1, description="Batch size used for the memory estimate.")
    max_sequence_length: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Cap on the context length (null = the model's own)."
    )
    num_replicas: int = Field(default=1, ge=1, description="Number of replicas to run.")
    auto_unload_after_seconds: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="Idle seconds before unloading this model (0 = never; null = global)."
    )
    max_concurrent_requests: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Per-model concurrency limit (null = global)."
    )
    max_queued_requests: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Per-model queue bound (null = global)."
    )
    vllm: VllmModelOverride | None = Field(
        default=None, description="vLLM sizing for this model (over vllm.default_settings)."
    )


_SECTIONS = ("gateway", "ray", "vllm", "triton", "orchestration", "jobs", "metrics", "discovery", "models")
_DIRS = ("incoming_dir", "model_repository", "failed_dir", "state_dir")
_LOOPBACK = {"127.0.0.1", "localhost", "0.0.0.0", "::1", "[::1]", "::"}  # for port clashes
_LOOPBACK_BINDS = {"127.0.0.1", "localhost", "::1", "[::1]"}  # what only this machine reaches


def is_loopback_host(host: str) -> bool:
    return host in _LOOPBACK_BINDS or host.startswith("127.")


class ModeliumSettings(Section):
    """All of Modelium's settings (the top level of modelium.yaml)."""

    incoming_dir: Path = Field(
        default=Path("models/incoming"),
        validate_default=True,
        description="Where people drop model folders.",
    )
    model_repository: Path = Field(
        default=Path("models/repository"),
        validate_default=True,
        description="Where complete drops are filed, one folder per model.",
    )
    failed_dir: Path = Field(
        default=Path("models/failed"),
        validate_default=True,
        description="Where rejected drops are quarantined, each with a REASON file.",
    )
    state_dir: Path = Field(
        default=Path(".modelium"),
        validate_default=True,
        description="Modelium's own state (model table, runtime scratch).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Minimum level of log records."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json = one JSON object per line; text = for humans."
    )
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    gpus: Literal["auto"] | list[GpuSpec] = Field(
        default="auto",
        description="'auto' = detect GPUs with NVML; or a list of {id, memory_gb, name} GPUs.",
    )
    ray: RaySettings = Field(default_factory=RaySettings)
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    discovery: DiscoverySettings = Field(default_factory=DiscoverySettings)
    models: dict[str, ModelOverride] = Field(
        default_factory=dict, description="Per-model overrides, keyed by model name."
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_mean_defaults(cls, data: Any) -> Any:
        # `gateway:` with every entry commented out parses as null; treat it as "defaults".
        if isinstance(data, dict) and any(data.get(key, 0) is None for key in _SECTIONS):
            data = {k: v for k, v in data.items() if not (k in _SECTIONS and v is None)}
        return data

    @field_validator(*_DIRS, mode="before")
    @classmethod
    def _dirs_not_empty(cls, value: Any) -> Any:
        return reject_empty_path(value)

    @field_validator(*_DIRS)
    @classmethod
    def _resolve_dirs(cls, value: Path, info: ValidationInfo) -> Path | None:
        return resolve_path(value, info)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("gpus", mode="wrap")
    @classmethod
    def _check_gpus(cls, value: Any, handler: Any) -> Literal["auto"] | list[GpuSpec]:
        # Validated by hand: pydantic's union errors would name both union members.
        if value == "auto":
            return "auto"
        if not isinstance(value, (list, tuple)):
            raise ValueError("should be 'auto' or a list of GPUs like [{id: 0, memory_gb: 80}]")
        gpus: list[GpuSpec] = []
        problems: list[dict[str, Any]] = []
        for index, item in enumerate(value):
            try:
                gpus.append(GpuSpec.model_validate(item))
            except ValidationError as exc:
                problems += [{**err, "loc": (index, *err["loc"])} for err in exc.errors()]
        if problems:
            raise ConfigProblems.from_errors(problems)
        seen: set[int] = set()
        duplicates = []
        for index, gpu in enumerate(gpus):
            if gpu.id in seen:
                duplicates.append(((index, "id"), f"duplicate GPU id {gpu.id}"))
            seen.add(gpu.id)
        if duplicates:
            raise ConfigProblems(duplicates)
        return gpus

    @field_validator("models", mode="wrap")
    @classmethod
    def _check_model_names(cls, value: Any, handler: Any) -> dict[str, ModelOverride]:
        # Wrap, so a bad name is reported even when an override under it is invalid too.
        problems: list[dict[str, Any]] = []
        if isinstance(value, dict):
            for name in value:
                if isinstance(name, str) and (reason := check_model_name(name)) is not None:
                    problems.append({"type": "value_error", "loc": (name,), "msg": reason})
        try:
            models = handler(value)
        except ValidationError as exc:
            problems += exc.errors()
        if problems:
            raise ConfigProblems.from_errors(problems)
        return models

    @model_validator(mode="after")
    def _check_cross_references(self) -> ModeliumSettings:
        problems: list[tuple[Any, ...]] = []
        if isinstance(self.gpus, list):
            ids = sorted(gpu.id for gpu in self.gpus)
            for name, override in self.models.items():
                if override.gpu is not None and override.gpu not in ids:
                    problems.append(
                        (
                            ("models", name, "gpu"),
                            f"GPU {override.gpu} is not among the configured gpus {ids}",
                        )
                    )
        # The drop folders must be distinct and not inside each other, or the watcher
        # would see the repository (or quarantine) as a drop.
        folders = ("incoming_dir", "model_repository", "failed_dir")
        for i, first in enumerate(folders):
            for second in folders[i + 1 :]:
                a, b = getattr(self, first), getattr(self, second)
                if a == b or a.is_relative_to(b) or b.is_relative_to(a):
                    problems.append(
                        ((second,), f"{b} overlaps {first} ({a}); the folders must be separate")
                    )
        problems += self._port_clashes()
        problems += self._open_binds()
        if problems:
            raise ConfigProblems(problems)
        return self

    def _open_binds(self) -> list[tuple[Any, ...]]:
        """A port reachable from other machines without authentication is refused unless
        the operator opts in: an open gateway lets anyone load, unload and query models."""
        if self.gateway.allow_unauthenticated:
            return []
        problems: list[tuple[Any, ...]] = []
        if not is_loopback_host(self.gateway.host) and not self.gateway.api_keys:
            problems.append((("gateway", "host"),
                             f"{self.gateway.host} is reachable from other machines but gateway.api_keys is "
                             "empty: add keys (gateway.api_keys: [KEY], or MODELIUM_GATEWAY__API_KEYS='[\"KEY\"]'), "
                             "bind to 127.0.0.1, or set gateway.allow_unauthenticated: true to serve everyone"))
        if (self.metrics.enabled and self.metrics.port is not None
                and not is_loopback_host(self.metrics.host)):
            problems.append((("metrics", "host"),
                             f"{self.metrics.host}: the metrics endpoint has no authentication; bind it to "
                             "127.0.0.1 (scrape the gateway's /metrics instead) or set "
                             "gateway.allow_unauthenticated: true"))
        return problems

    def _port_clashes(self) -> list[tuple[Any, ...]]:
        """Ports Modelium binds (or starts something on) locally must differ."""
        used: list[tuple[tuple[str, ...], int]] = [(("gateway", "port"), self.gateway.port)]
        if self.metrics.enabled and self.metrics.port is not None:
            used.append((("metrics", "port"), self.metrics.port))
        if self.ray.enabled and self.ray.address == "auto":
            used.append((("ray", "http_port"), self.ray.http_port))
            used.append((("ray", "gcs_port"), self.ray.gcs_port))
        if self.vllm.enabled:
            used.append((("vllm", "base_port"), self.vllm.base_port))
        if self.triton.enabled:
            host, _, port = self.triton.endpoint.rpartition(":")
            if host.split("://")[-1] in _LOOPBACK:
                used.append((("triton", "endpoint"), int(port)))
        problems: list[tuple[Any, ...]] = []
        first_user: dict[int, tuple[str, ...]] = {}
        for loc, port in used:
            if port in first_user:
                other = ".".join(first_user[port])
                problems.append((loc, f"port {port} is already used by {other}"))
            else:
                first_user[port] = loc
        return problems

    def override_for(self, name: str) -> ModelOverride:
        """The overrides configured for model ``name`` (all defaults when there are none)."""
        return self.models.get(name) or ModelOverride()

    def enabled_runtimes(self) -> list[str]:
        """Runtimes switched on in the config, in rule order (the brain filters further)."""
        flags = (("ray_serve", self.ray.enabled), ("vllm", self.vllm.enabled),
                 ("triton", self.triton.enabled))
        return [runtime for runtime, enabled in flags if enabled]

    def to_public_dict(self) -> dict[str, Any]:
        """A JSON-able dump of the settings with what may carry secrets hidden: API keys,
        vLLM's extra arguments (``--api-key ...``), credentials in URLs."""
        data = self.model_dump(mode="json")
        data["gateway"]["api_keys"] = ["***" for _ in self.gateway.api_keys]
        data["vllm"]["extra_args"] = ["***" for _ in self.vllm.extra_args]
        data["metrics"]["prometheus_url"] = _without_credentials(self.metrics.prometheus_url)
        data["ray"]["address"] = _without_credentials(self.ray.address)
        data["triton"]["endpoint"] = _without_credentials(self.triton.endpoint)
        return data


def _without_credentials(url: str | None) -> str | None:
    """``scheme://user:password@host`` -> ``scheme://***@host``."""
    if url is None or "@" not in url:
        return url
    scheme, sep, rest = url.rpartition("://")
    return f"{scheme}{sep}***@{rest.split('@', 1)[1]}" if sep else "***@" + url.split("@", 1)[1]
