"""The one interface every runtime manager implements (Ray Serve, vLLM, Triton).

The orchestrator only talks to runtimes through this class, so adding a runtime never
touches the orchestrator, the brain or the gateway. All methods are async; managers run
blocking client calls in threads (``asyncio.to_thread``) so the gateway's event loop
never stalls on a slow load.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelium.analysis.profile import MemoryEstimate, ModelProfile
from modelium.hardware.devices import Device


class RuntimeLoadError(RuntimeError):
    """Loading failed; the message says why (shown as the model's reason)."""


class ModelNotLoadedError(RuntimeError):
    """The runtime does not have this model loaded (it may have crashed or been unloaded)."""


class RuntimeUnavailableError(RuntimeError):
    """The runtime itself is down or unreachable."""


@dataclass(frozen=True)
class LoadRequest:
    """Everything a manager needs to load one model on one device."""

    name: str
    model_dir: Path
    profile: ModelProfile
    device: Device
    memory: MemoryEstimate
    options: dict[str, Any] = field(default_factory=dict)  # per-model config overrides


@dataclass(frozen=True)
class RuntimeHealth:
    ok: bool
    detail: str


@dataclass(frozen=True)
class AdoptionReport:
    """What a manager found left over from an earlier run of Modelium."""

    adopted: tuple[str, ...] = ()  # still running and matching a known model: kept
    removed: tuple[str, ...] = ()  # ours but unknown or stale: cleaned up


class RuntimeManager(ABC):
    """Loads, serves and unloads models in one runtime."""

    #: Short identifier used in config, metrics labels and API answers ("ray_serve").
    name: str

    @abstractmethod
    async def start(self) -> None:
        """Bring the runtime up (or connect to it). Idempotent."""

    @abstractmethod
    async def stop(self) -> None:
        """Unload everything and stop every process this manager started."""

    @abstractmethod
    async def load(self, request: LoadRequest) -> None:
        """Load the model and return once it answers requests; raise RuntimeLoadError."""

    @abstractmethod
    async def unload(self, name: str) -> None:
        """Unload the model and free its memory. Unloading an unknown model is a no-op."""

    @abstractmethod
    async def infer(self, name: str, inputs: Any, parameters: dict[str, Any]) -> Any:
        """Run one request; return JSON-able outputs.

        Raises BadRequestError for client mistakes, ModelNotLoadedError when the model
        is not loaded in this runtime, RuntimeUnavailableError when the runtime is down.
        """

    @abstractmethod
    async def health(self) -> RuntimeHealth:
        """Whether the runtime is up, with a one-line detail."""

    @abstractmethod
    async def loaded_models(self) -> set[str]:
        """Names of the models this manager has loaded and that are live right now."""

    def openai_base_url(self, name: str) -> str | None:
        """Base URL (``http://127.0.0.1:PORT``) of an OpenAI-compatible server that serves
        this model natively (vLLM), or None: the gateway then adapts OpenAI requests onto
        :meth:`infer`."""
        return None

    async def metrics_text(self) -> str | None:
        """The runtime's own Prometheus metrics (text format) to append to Modelium's
        /metrics, so one scrape sees both; None when there are none to add."""
        return None

    def exit_reason(self, name: str) -> str | None:
        """Why the model's server went away (e.g. the tail of its log), when known."""
        return None

    @abstractmethod
    async def adopt(self, known_models: dict[str, Path]) -> AdoptionReport:
        """Deal with models left loaded by an earlier run: keep those in ``known_models``
        (name -> repository folder) whose folder is unchanged, remove the rest."""
