"""Test doubles for unit tests of the orchestrator and gateway (never used by e2e tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelium.runtimes.base import (
    AdoptionReport,
    LoadRequest,
    ModelNotLoadedError,
    RuntimeHealth,
    RuntimeLoadError,
    RuntimeManager,
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

    def exit_reason(self, name: str) -> str | None:
        return self.exit_reasons.get(name)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True
        self.loaded.clear()

    async def load(self, request: LoadRequest) -> None:
        self.calls.append(("load", request.name))
        if request.name in self.fail_loads:
            raise RuntimeLoadError(f"replica of {request.name} crashed: boom")
        self.loaded[request.name] = request

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))
        self.loaded.pop(name, None)

    async def infer(self, name: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        if name not in self.loaded:
            raise ModelNotLoadedError(name)
        if "bad" in parameters:
            raise BadRequestError("unknown parameter 'bad'")
        return {"echo": inputs, "device": self.loaded[name].device.id}

    async def health(self) -> RuntimeHealth:
        return RuntimeHealth(ok=True, detail=f"fake, {len(self.loaded)} loaded")

    async def loaded_models(self) -> set[str]:
        return set(self.loaded)

    async def adopt(self, known_models: dict[str, Path]) -> AdoptionReport:
        adopted = tuple(n for n in self.leftovers if n in known_models)
        removed = tuple(n for n in self.leftovers if n not in known_models)
        return AdoptionReport(adopted=adopted, removed=removed)
