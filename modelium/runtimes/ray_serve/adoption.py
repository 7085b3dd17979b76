"""Recognising an app an earlier run of Modelium left on the cluster.

Each replica carries a fingerprint (model folder, :func:`.signature.folder_signature`,
task, device) written at load time; an app is kept only when it is RUNNING and its
fingerprint still matches the repository folder of a known model, so a re-dropped or
deleted folder is never served from stale weights.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from modelium.runtimes.ray_serve.signature import folder_signature

FINGERPRINT_VERSION = 1
FINGERPRINT_TIMEOUT_SECONDS = 15.0


def make_fingerprint(model_dir: Path, signature: str, task: str, device: str) -> dict[str, Any]:
    return {"version": FINGERPRINT_VERSION, "model_dir": str(model_dir), "signature": signature,
            "task": task, "device": device}


async def adoption_blocker(app_status: str, path: Path | None,
                           read_fingerprint: Callable[[], Awaitable[Any]]) -> str | None:
    """Why the app cannot be kept, or None when it matches the repository folder ``path``."""
    if path is None:
        return "not in the repository"
    if app_status != "RUNNING":
        return f"app status is {app_status}"
    try:
        fingerprint = await asyncio.wait_for(read_fingerprint(), FINGERPRINT_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - an app we cannot ask is an app we cannot vouch for
        return f"could not read its fingerprint: {type(exc).__name__}"
    resolved = Path(path).resolve()
    if not isinstance(fingerprint, dict) or fingerprint.get("version") != FINGERPRINT_VERSION:
        return "unknown fingerprint format"
    if fingerprint.get("model_dir") != str(resolved):
        return f"serves {fingerprint.get('model_dir')}, the repository has {resolved}"
    try:
        current = await asyncio.to_thread(folder_signature, resolved)
    except FileNotFoundError:
        return f"{resolved} is gone"
    if fingerprint.get("signature") != current:
        return "the folder changed since the app was deployed"
    return None
