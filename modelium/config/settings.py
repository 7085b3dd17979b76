"""Typed Modelium settings: one small frozen pydantic model per concern.

Every model forbids unknown keys, so a typo in ``modelium.yaml`` is an error rather than a
silently ignored setting. Nothing here reads files or the environment: building settings
from ``modelium.yaml`` and ``MODELIUM_*`` variables is :mod:`modelium.config.loader`'s job.

Relative paths are resolved against ``base_dir`` when one is passed in the validation
context (``ModeliumSettings.model_validate(data, context={"base_dir": ...})``); the loader
always passes the directory holding the config file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

Port = Annotated[int, Field(ge=1, le=65535)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]


class ConfigProblems(ValueError):
    """One or more problems found by a validator, each at a key path relative to the field.

    Pydantic reports a validator's ValueError at the validated field (or model); this class
    lets a validator name the exact nested key instead (``gpus.1.id`` rather than ``gpus``).
    The loader expands it into one line per problem; its ``str()`` is readable on its own.
    """

    def __init__(self, problems: list[tuple[Any, ...]]) -> None:
        """``problems``: ``(loc, message)`` or ``(loc, message, offending_value)`` tuples."""
        self.errors: list[dict[str, Any]] = []
        for loc, msg, *value in problems:
            error = {"type": "value_error", "loc": tuple(loc), "msg": msg}
            if value:
                error["input"] = value[0]
            self.errors.append(error)
        super().__init__(
            "; ".join(
                (".".join(str(part) for part in err["loc"]) + ": " if err["loc"] else "")
                + err["msg"]
                for err in self.errors
            )
        )

    @classmethod
    def from_errors(cls, errors: list[dict[str, Any]]) -> ConfigProblems:
        """Wrap pydantic-style error dicts (``loc``, ``msg``, ``type``, ``input``)."""
        problems = cls([(tuple(err["loc"]), err["msg"], err.get("input")) for err in errors])
        problems.errors = list(errors)
        return problems


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, coerce_numbers_to_str=True, allow_inf_nan=False
    )


def _check_model_name(name: str) -> str | None:
    """Return why ``name`` is not a valid model name, or None when it is."""
    # Imported here: modelium.discovery pulls in watchdog, which settings do not need.
    from modelium.discovery import sanitize_model_name

    try:
        sanitized = sanitize_model_name(name)
    except ValueError:
        return "not a valid model name (use lowercase letters, digits, '.', '_' and '-')"
    if sanitized != name:
        return (
            "not a valid model name (use lowercase letters, digits, '.', '_' and '-'; "
            f"did you mean {sanitized!r}?)"
        )
    return None


_HOST_PORT = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?(?:\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(\d+)$")


def _check_host_port(value: str) -> str:
    match = _HOST_PORT.match(value)
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise ValueError("should be 'host:port' with a port in 1..65535")
    return value


def _resolve_path(path: Path | None, info: ValidationInfo) -> Path | None:
    """Expand ``~`` and make a relative path absolute against the context's base_dir."""
    if path is None:
        return None
    if str(path).startswith("~"):
        path = path.expanduser()
    context = info.context if isinstance(info.context, dict) else {}
    base_dir = context.get("base_dir")
    if base_dir is not None and not path.is_absolute():
        path = Path(os.path.abspath(base_dir)) / path
    return Path(os.path.normpath(path)) if path.is_absolute() else path


def _reject_empty_path(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("path must not be empty")
    return value


class GatewaySettings(_Section):
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


class GpuSpec(_Section):
    """One GPU declared in config instead of detected (simulation, planning, tests)."""

    id: int = Field(ge=0, description="GPU index, as CUDA numbers it.")
    memory_gb: float = Field(gt=0, description="Total memory of the GPU in GiB.")
    name: NonEmptyStr = Field(default="simulated", description="Display name of the GPU.")


class RaySettings(_Section):
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
        return value if value == "auto" else _check_host_port(value)

    @field_validator("temp_dir", mode="before")
    @classmethod
    def _temp_dir_not_empty(cls, value: Any) -> Any:
        return _reject_empty_path(value)

    @field_validator("temp_dir")
    @classmethod
    def _resolve_temp_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve_path(value, info)


class VllmModelSettings(_Section):
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


class VllmModelOverride(_Section):
    """Per-model vLLM sizing; unset fields fall back to `vllm.default_settings`."""

    max_model_len: Annotated[int, Field(ge=16)] | None = None
    max_num_seqs: Annotated[int, Field(ge=1)] | None = None
    dtype: NonEmptyStr | None = None
    kv_cache_bytes: Annotated[int, Field(ge=1)] | None = None
    enforce_eager: bool | None = None
    park: bool | None = None


class VllmSettings(_Section):
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


class TritonSettings(_Section):
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
        return value if value == "auto" else _check_host_port(value)


class SchedulerSettings(_Section):
    """Who gets memory next when more models are wanted than fit (see docs/eviction.md;
    the defaults are the ones that did best in bench/eviction_replay.py)."""

    policy: Literal["cost", "lru", "fifo"] = Field(
        default="cost",
        description="Victim order: cost = lowest (request rate x measured reload seconds) per "
        "byte freed first; lru / fifo are baselines.",
    )
    min_residency_seconds: float = Field(
        default=30.0, ge=0,
        description="A model just loaded serves at least this long before it may be evicted, "
        "unless a waiting request would otherwise miss its deadline.",
    )
    amortization: float = Field(
        default=1.0, ge=0,
        description="Swap only once the waiting requests have waited this many times the "
        "wait-seconds the eviction is expected to cost the victims (0 = swap at once).",
    )
    urgency_margin_seconds: float = Field(
        default=2.0, ge=0,
        description="Force a swap this long before a waiting request's deadline minus the "
        "expected swap time.",
    )
    rate_half_life_seconds: float = Field(
        default=900.0, gt=0,
        description="Half-life of the decayed request rate the cost policy reads (aging).",
    )
    default_load_seconds: float = Field(
        default=10.0, gt=0,
        description="Assumed load time of a model never loaded here (then it is measured).",
    )
    drain_timeout_seconds: float = Field(
        default=300.0, gt=0,
        description="How long a model chosen for eviction waits for its in-flight requests "
        "before it is unloaded anyway.",
    )
    park_host_memory_fraction: float = Field(
        default=0.5, ge=0, le=1,
        description="Share of host RAM that parked models' weights may take (runtimes that "
        "can park, e.g. vLLM sleep mode on a GPU).",
    )
    max_request_wait_seconds: float = Field(
        default=3600.0, gt=0,
        description="Upper bound of the per-request X-Max-Wait-Seconds header.",
    )


class OrchestrationSettings(_Section):
    """Policy knobs of the control loop: idle unloads, packing, always-on models."""

    auto_unload_after_seconds: float = Field(
        default=600.0, ge=0, description="Unload a model idle this long (0 disables idle unload)."
    )
    min_qps_threshold: float = Field(
        default=0.1, ge=0,
        description="Idle unload only takes models whose QPS is below this (0 = any QPS).",
    )
    max_gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Fraction of each GPU's memory Modelium may reserve."
    )
    always_loaded: list[str] = Field(
        default_factory=list,
        description="Models loaded as soon as they are discovered and never unloaded.",
    )
    decision_interval_seconds: float = Field(
        default=10.0, gt=0, description="Seconds between two ticks of the control loop."
    )
    max_restarts: int = Field(
        default=3, ge=0,
        description="Crashes of a loaded model within restart_window_seconds before it is failed.",
    )
    restart_window_seconds: float = Field(default=600.0, gt=0, description="See max_restarts.")
    max_concurrent_requests: int = Field(
        default=32, ge=1, description="Requests one model serves at once (per model)."
    )
    max_queued_requests: int = Field(
        default=256, ge=0,
        description="Requests that may wait in one model's queue (for a free slot, its load "
        "or room for it); more get HTTP 429.",
    )
    load_wait_timeout_seconds: float = Field(
        default=300.0, gt=0,
        description="How long a request waits in its model's queue (for a load, a swap or a "
        "free slot) before HTTP 503 + Retry-After; per request: X-Max-Wait-Seconds.",
    )
    max_concurrent_loads: int = Field(default=4, ge=1, description="Models loading at once, in all.")
    placement: Literal["best-fit", "spread"] = Field(
        default="best-fit",
        description="best-fit keeps big holes for big models; spread balances load across GPUs.",
    )
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)

    @field_validator("always_loaded")
    @classmethod
    def _check_names(cls, names: list[str]) -> list[str]:
        problems: list[tuple[Any, ...]] = [
            ((index,), reason, name)
            for index, name in enumerate(names)
            if (reason := _check_model_name(name)) is not None
        ]
        if problems:
            raise ConfigProblems(problems)
        return names


class MetricsSettings(_Section):
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


class DiscoverySettings(_Section):
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


class ModelOverride(_Section):
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


_SECTIONS = ("gateway", "ray", "vllm", "triton", "orchestration", "metrics", "discovery", "models")
_DIRS = ("incoming_dir", "model_repository", "failed_dir", "state_dir")
_LOOPBACK = {"127.0.0.1", "localhost", "0.0.0.0", "::1", "[::1]", "::"}


class ModeliumSettings(_Section):
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
        return _reject_empty_path(value)

    @field_validator(*_DIRS)
    @classmethod
    def _resolve_dirs(cls, value: Path, info: ValidationInfo) -> Path | None:
        return _resolve_path(value, info)

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
                if isinstance(name, str) and (reason := _check_model_name(name)) is not None:
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
        if problems:
            raise ConfigProblems(problems)
        return self

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
        """A JSON-able dump of the settings with every API key replaced by ``"***"``."""
        data = self.model_dump(mode="json")
        data["gateway"]["api_keys"] = ["***" for _ in self.gateway.api_keys]
        return data
