"""The scheduler's bookkeeping: why a model is wanted (intents), room promised to it
(claims), why a model is going (drains), and who owns a record during a re-drop (holds)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from modelium.orchestrator.records import ModelRecord

#: ModelRecord.hold values. REPLACING: a re-drop owns the record: it is neither loaded
#: nor evicted meanwhile (requests wait). TRIAL: its new version is loading; a failure
#: is rolled back by the re-drop instead of failing the waiting requests.
HOLD_REPLACING = "replacing"
HOLD_TRIAL = "trial"

@dataclass
class Intent:
    """A reason to load a model other than its queued requests."""

    priority: int
    since: float
    deadline: float
    explicit: bool  # the user's load, a restart, a pinned model: no amortisation wait
    allow_evict: bool  # False for the start-up restore of models nobody asked for yet
    not_before: float = 0.0  # a restart's back-off
    futures: list[asyncio.Future[ModelRecord]] = field(default_factory=list)
    request_id: str | None = None  # the request that asked for it (POST /models/NAME/load)


@dataclass
class Claim:
    """Room promised on a device to a model waiting for its victims to drain."""

    device_id: str
    bytes: int
    since: float
    victims: tuple[str, ...]


@dataclass
class Drain:
    """Why a model is draining and where it goes once idle."""

    code: str  # evicted | idle | request | replaced
    reason: str
    since: float
    park_residue: int | None  # bytes kept when parking, None: stop it
    for_model: str | None = None  # the model the room is for (evictions only)
