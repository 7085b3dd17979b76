"""Which runtime a model goes to, how many bytes it reserves, and the load request.

Glue between the record, the config and the pure parts (`brain.choose_runtime`,
`sizing.size_for_runtime`); the scheduler calls it, it decides nothing on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from modelium.analysis.profile import MemoryEstimate
from modelium.brain import RuntimeChoice, choose_runtime
from modelium.config import ModeliumSettings, ModelOverride
from modelium.hardware import Device, Inventory
from modelium.orchestrator.records import ModelRecord
from modelium.orchestrator.sizing import size_for_runtime
from modelium.runtimes.base import LoadRequest, RuntimeManager


class RuntimePlanner:
    def __init__(
        self,
        settings: ModeliumSettings,
        managers: Mapping[str, RuntimeManager],
        inventory: Inventory,
        *,
        vllm_architectures: frozenset[str] | None = None,
        unavailable: Mapping[str, str] | None = None,
        triton_backends: frozenset[str] | None = None,
    ) -> None:
        self.settings = settings
        self.managers = managers
        self.inventory = inventory
        configured = settings.vllm.architectures
        self.vllm_architectures = frozenset(configured) if configured else vllm_architectures
        self.unavailable = dict(unavailable or {})
        self.triton_backends = triton_backends  # None: not known (external Triton)

    def override(self, name: str) -> ModelOverride:
        return self.settings.override_for(name)

    def choose(self, record: ModelRecord) -> RuntimeChoice:
        """Ask the brain (cheap, deterministic) and note the answer on the record."""
        assert record.profile is not None
        choice = choose_runtime(
            record.profile,
            enabled=self.settings.enabled_runtimes(),
            implemented=tuple(self.managers),
            override=self.override(record.name).runtime,
            vllm_architectures=self.vllm_architectures,
            unavailable=self.unavailable,
            triton_backends=self.triton_backends,
        )
        record.runtime, record.runtime_reason = choice.runtime, choice.reason
        return choice

    def _size(self, record: ModelRecord, device: Device | None) -> tuple[MemoryEstimate, dict[str, Any]]:
        assert record.profile is not None and record.runtime is not None
        return size_for_runtime(
            record.profile, record.runtime, self.settings, self.override(record.name),
            device_kind="gpu" if self.inventory.has_gpu else "cpu", device=device,
        )

    def required_bytes(self, record: ModelRecord) -> int:
        """The estimate (every copy), or the footprint measured on a real device of the same
        kind when that was more: the ledger must tell the truth."""
        record.memory, _ = self._size(record, None)
        required = record.memory.total_bytes
        measured, where = record.costs.measured_bytes, record.costs.measured_on
        device = self.inventory.get(where) if where else None
        if measured and device is not None and not device.simulated:
            required = max(required, measured)
        return required

    def pinned_device(self, record: ModelRecord) -> str | None:
        gpu = self.override(record.name).gpu
        return f"gpu:{gpu}" if gpu is not None else None

    def load_request(self, record: ModelRecord, device: Device) -> LoadRequest:
        assert record.profile is not None and record.memory is not None
        runtime_device = runtime_device_of(device)
        _, runtime_options = self._size(record, runtime_device)
        override = self.override(record.name)
        options: dict[str, Any] = {"num_replicas": override.num_replicas}
        if override.task:
            options["task"] = override.task
        return LoadRequest(
            name=record.instance,
            served_name=record.name,
            model_dir=record.path,
            profile=record.profile,
            device=runtime_device,
            memory=record.memory,
            options={**options, **runtime_options},
        )


def runtime_device_of(device: Device) -> Device:
    """The device a runtime really runs on: a simulated GPU is planned on as a GPU (ledger,
    placement) but its models run on the CPU."""
    if not device.simulated:
        return device
    return dataclasses.replace(device, kind="cpu", index=None)
