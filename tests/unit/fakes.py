"""Test doubles for unit tests of the orchestrator and gateway (never used by e2e tests).

``FakeManager`` records calls and can be made to block at the awaits that matter for
races: ``gates["load", NAME]``, ``gates["unload", NAME]``, ``gates["infer", NAME]`` and
``gates["loaded_models"]`` are asyncio.Events the call waits on when present, and
``entered`` records which gated calls have started (so a test can wait for that moment).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from modelium.runtimes.base import (
    AdoptionReport,
    Capability,
    LoadRequest,
    ModelNotLoadedError,
    RuntimeHealth,
    RuntimeLoadError,
    RuntimeManager,
    RuntimeUnavailableError,
)
from modelium.runtimes.errors import BadRequestError

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 256,
    "torch_dtype": "float32",
}


def make_config_only_model(folder: Path, **overrides: Any) -> Path:
    """A config-only llama folder: analyzable, cheap, no weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**LLAMA_CONFIG, **overrides}))
    return folder


class FakeManager(RuntimeManager):
    """Records calls; ``fail_loads`` names models whose load fails."""

    name = "ray_serve"

    def __init__(self) -> None:
        self.loaded: dict[str, LoadRequest] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_loads: set[str] = set()
        self.started = self.stopped = False
        self.leftovers: dict[str, Path] = {}
        self.exit_reasons: dict[str, str] = {}
        self.gates: dict[Any, asyncio.Event] = {}
        self.entered: set[Any] = set()
        self.unknown = False  # loaded_models() cannot tell (RuntimeUnavailableError)
        self.bad_request_text = "unknown parameter 'bad'"

    async def _gate(self, *key: Any) -> None:
        key = key if len(key) > 1 else key[0]
        self.entered.add(key)
        gate = self.gates.get(key)
        if gate is not None:
            await gate.wait()

    def exit_reason(self, name: str) -> str | None:
        return self.exit_reasons.get(name)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True
        self.loaded.clear()

    async def load(self, request: LoadRequest) -> None:
        self.calls.append(("load", request.name))
        await self._gate("load", request.name)
        if request.public_name in self.fail_loads or request.name in self.fail_loads:
            raise RuntimeLoadError(f"replica of {request.name} crashed: boom")
        self.loaded[request.name] = request

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))
        await self._gate("unload", name)
        self.loaded.pop(name, None)

    async def infer(self, name: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        await self._gate("infer", name)
        if name not in self.loaded:
            raise ModelNotLoadedError(name)
        if "bad" in parameters:
            raise BadRequestError(self.bad_request_text)
        if "sleep" in parameters:
            await asyncio.sleep(float(parameters["sleep"]))
        return {"echo": inputs, "device": self.loaded[name].device.id, "instance": name}

    async def health(self) -> RuntimeHealth:
        return RuntimeHealth(ok=True, detail=f"fake, {len(self.loaded)} loaded")

    async def loaded_models(self) -> set[str]:
        snapshot = set(self.loaded)  # what the runtime saw when asked
        await self._gate("loaded_models")
        if self.unknown:
            raise RuntimeUnavailableError("index timed out")
        return snapshot

    async def adopt(self, known_models: dict[str, Path]) -> AdoptionReport:
        adopted = tuple(n for n in self.leftovers if n in known_models)
        removed = tuple(n for n in self.leftovers if n not in known_models)
        for name in adopted:
            self.loaded[name] = None  # type: ignore[assignment]
        return AdoptionReport(adopted=adopted, removed=removed)


class FakeParkingManager(FakeManager):
    """A vLLM-like manager that declares sleep mode."""

    name = "vllm"
    capabilities = frozenset({Capability.PARK})
    RESIDUE = int(1.6e9)

    def __init__(self) -> None:
        super().__init__()
        self.parked: set[str] = set()
        self.fail_wakes: set[str] = set()
        self.fail_parks: set[str] = set()

    def park_residue_bytes(self, name: str) -> int | None:
        return self.RESIDUE if name in self.loaded else None

    async def park(self, name: str) -> float:
        self.calls.append(("park", name))
        if name in self.fail_parks:
            raise RuntimeError("sleep failed")
        self.parked.add(name)
        return 0.1

    async def wake(self, name: str) -> float:
        self.calls.append(("wake", name))
        if name in self.fail_wakes:
            raise RuntimeError("wake_up failed")
        self.parked.discard(name)
        return 0.01

    async def unload(self, name: str) -> None:
        self.parked.discard(name)  # stopping a sleeping server ends it too
        await super().unload(name)

    async def infer(self, name: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        if name in self.parked:
            raise ModelNotLoadedError(f"{name} is asleep")
        return await super().infer(name, inputs, parameters)
