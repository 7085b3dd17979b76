"""Settings of the orchestrator's policy: idle unloads, back-pressure, placement, and the
scheduler's knobs (who gets memory next)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from modelium.config.base import ConfigProblems, Section, check_model_name


class SchedulerSettings(Section):
    """Who gets memory next when more models are wanted than fit (see docs/eviction.md;
    the defaults are the ones that did best in bench/eviction_replay.py)."""

    policy: Literal["cost", "lru", "fifo"] = Field(
        default="cost",
        description="Victim order: cost = lowest (request rate x measured reload seconds) per "
        "byte freed first; lru / fifo are baselines.",
    )
    min_residency_seconds: float = Field(
        default=30.0, ge=0,
        description="A model just loaded serves at least this long (from ready) before it may be "
        "evicted, unless a waiting request would otherwise miss its deadline and nothing is queued for it.",
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


class OrchestrationSettings(Section):
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
            if (reason := check_model_name(name)) is not None
        ]
        if problems:
            raise ConfigProblems(problems)
        return names
