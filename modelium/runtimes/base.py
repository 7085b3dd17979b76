"""The one interface every runtime manager implements (Ray Serve, vLLM, Triton).

The orchestrator only talks to runtimes through this class, so adding a runtime never
touches the orchestrator, the brain or the gateway. All methods are async; managers run
blocking client calls in threads (``asyncio.to_thread``) so the gateway's event loop
never stalls on a slow load.

Optional abilities are *declared* in :attr:`RuntimeManager.capabilities` (never probed
with ``hasattr``): a manager that declares :attr:`Capability.PARK` implements
:meth:`park`, :meth:`wake` and :meth:`park_residue_bytes`; the scheduler then may keep
an evicted model parked (process alive, most device memory released) instead of stopping
it. A manager that declares :attr:`Capability.KSERVE_V2` speaks the KServe v2 protocol
itself (:meth:`v2_metadata`, :meth:`v2_infer`): the gateway's ``/v2`` routes then pass
requests through to it instead of adapting them onto :meth:`infer`.

Names: every method takes the model's *instance key* (``LoadRequest.name``): the model's
name for its first version, ``NAME.REVn`` for a re-dropped version loaded beside the old
one. ``LoadRequest.served_name`` is the public name clients use (vLLM's
``--served-model-name``).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from modelium.analysis.profile import MemoryEstimate, ModelProfile
from modelium.hardware.devices import Device


class RuntimeLoadError(RuntimeError):
    """Loading failed; the message says why (shown as the model's reason)."""


class ModelNotLoadedError(RuntimeError):
    """The runtime does not have this model loaded (it may have crashed or been unloaded)."""


class RuntimeUnavailableError(RuntimeError):
    """The runtime itself is down or unreachable (or cannot tell right now)."""


class Capability(str, enum.Enum):
    """Optional abilities a manager declares in ``capabilities``."""

    #: park()/wake()/park_residue_bytes(): keep the process, give back most device memory.
    PARK = "park"
    #: v2_metadata()/v2_infer(): the runtime's own KServe v2 model metadata and infer.
    KSERVE_V2 = "kserve_v2"


@dataclass(frozen=True)
class LoadRequest:
    """Everything a manager needs to load one model on one device."""

    name: str  # the instance key every later call uses
    model_dir: Path
    profile: ModelProfile
    device: Device
    memory: MemoryEstimate
    options: dict[str, Any] = field(default_factory=dict)  # per-model config overrides
    served_name: str | None = None  # the public model name (None: same as ``name``)

    @property
    def public_name(self) -> str:
        return self.served_name or self.name


@dataclass(frozen=True)
class V2Answer:
    """A runtime's own answer to a KServe v2 infer, relayed as is: the body (JSON, or
    the binary tensor extension's JSON header + raw tensors) and the length of its JSON
    header when the body is binary (``Inference-Header-Content-Length``)."""

    content: bytes
    content_type: str = "application/json"
    header_length: int | None = None


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
    #: Optional abilities this manager implements (see :class:`Capability`).
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

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
        """Instance keys of the models this manager has loaded that are live right now.

        A model is absent only when the runtime *knows* it is gone (its process exited, the
        runtime says it no longer has it). When the runtime cannot tell (a timeout, an index
        call that failed while the server is alive) this raises RuntimeUnavailableError: the
        supervisor then treats the runtime's models as unknown, never as crashed. Models in
        a transient state (a Ray app redeploying a replica) count as live.
        """

    async def process_ids(self, name: str) -> list[int]:
        """PIDs of the processes whose memory is this model's own (its server, its stubs,
        its replicas; their children count too), for measuring its real footprint. ``[]``
        when the model lives inside a process shared with other models."""
        return []

    # ---------------------------------------------------------- Capability.PARK

    def park_residue_bytes(self, name: str) -> int | None:
        """Device bytes the model keeps while parked, or None when this model cannot be
        parked now (not started with parking enabled, not on a GPU...)."""
        return None

    async def park(self, name: str) -> float:
        """Release most of the model's device memory, keeping its process; returns the
        seconds it took. Raises when parking failed (the model is then still loaded)."""
        raise NotImplementedError(f"{self.name} cannot park models")

    async def wake(self, name: str) -> float:
        """Bring a parked model back; returns the seconds it took. Raises when waking
        failed (the caller then stops the model and loads it cold)."""
        raise NotImplementedError(f"{self.name} cannot wake models")

    # ---------------------------------------------------------- Capability.KSERVE_V2

    async def v2_metadata(self, name: str) -> dict[str, Any]:
        """The runtime's own KServe v2 model metadata (name, versions, platform, inputs,
        outputs) of a loaded model. Raises like :meth:`infer`."""
        raise NotImplementedError(f"{self.name} does not speak KServe v2")

    async def v2_infer(self, name: str, body: bytes, header_length: int | None) -> V2Answer:
        """Relay one KServe v2 infer request body (JSON, or binary tensors after a JSON
        header of ``header_length`` bytes) to the runtime's own v2 endpoint; a 200 comes
        back as a :class:`V2Answer`, anything else raises like :meth:`infer`
        (BadRequestError with the runtime's message, ModelNotLoadedError,
        RuntimeUnavailableError)."""
        raise NotImplementedError(f"{self.name} does not speak KServe v2")

    def openai_base_url(self, name: str) -> str | None:
        """Base URL (``http://127.0.0.1:PORT``) of an OpenAI-compatible server that serves
        this model natively (vLLM), or None: the gateway then adapts OpenAI requests onto
        :meth:`infer`."""
        return None

    def upstream_headers(self, name: str) -> dict[str, str]:
        """Headers that every request relayed to :meth:`openai_base_url` ``(name)``, and to
        that server's own ``/metrics``, must carry: the runtime's secret that keeps its
        loopback port closed to everyone but Modelium (vLLM: ``Authorization: Bearer`` with
        that server's own key). ``{}`` when none is needed. They replace any header of the
        same name the client sent; never show them to a client or in a log."""
        return {}

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
