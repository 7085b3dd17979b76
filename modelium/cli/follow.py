"""The CLI's polling loops: `modelium logs` (pages, then `-f` follows) and `modelium load`
(the blocking POST runs in a thread while GET /models/NAME shows progress).

Both take the client and their output functions as arguments so tests drive them with a
fake client and a fake clock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from modelium.cli.client import GatewayError

PAGE = 1000  # the endpoint's largest page
POLL_TIMEOUT = 10.0  # seconds one poll may take


def log_page(client: Any, name: str, after: int, limit: int = PAGE) -> tuple[list[Mapping[str, Any]], int]:
    """(lines, next) of one GET /models/NAME/logs page."""
    answer = client.request("GET", f"/models/{quote(name, safe='')}/logs?after={after}&limit={limit}",
                            timeout=POLL_TIMEOUT)
    lines = answer.get("lines") or []
    following = answer.get("next")
    if not isinstance(following, int):  # an odd answer: go on from the last line we saw
        following = max([after] + [ln.get("seq", after) for ln in lines if isinstance(ln.get("seq"), int)])
    return lines, following


def kept_lines(client: Any, name: str, last: int | None) -> tuple[list[Mapping[str, Any]], int]:
    """Every line the daemon still keeps (or only the ``last`` ones), and the cursor after
    them: pages until a page comes back empty or the cursor stops moving."""
    tail: deque[Mapping[str, Any]] = deque(maxlen=last)
    after = 0
    while True:
        lines, following = log_page(client, name, after)
        tail.extend(lines)  # maxlen=0 (`-n 0`) keeps nothing: only the cursor moves
        if not lines or following <= after:
            return list(tail), max(after, following)
        after = following


def follow_lines(client: Any, name: str, after: int, *, interval: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep) -> Iterator[Mapping[str, Any]]:
    """New lines after ``after``, forever (the caller stops on Ctrl-C or a GatewayError)."""
    while True:
        lines, following = log_page(client, name, after)
        yield from lines
        after = max(after, following)
        if len(lines) < PAGE:  # a full page means more is waiting: ask again at once
            sleep(interval)


@dataclass
class LoadOutcome:
    """How `modelium load` ended: the final record (from the POST, else the last poll),
    the seconds it took, and the error when the POST failed."""

    record: Mapping[str, Any] | None
    seconds: float
    error: GatewayError | None = None
    states: list[str] = field(default_factory=list)  # each state seen while polling, in order

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.record) and self.record.get("state") == "ready"


def load_with_progress(client: Any, name: str, on_progress: Callable[[str, float], None], *,
                       interval: float = 0.5, clock: Callable[[], float] = time.monotonic) -> LoadOutcome:
    """POST /models/NAME/load in a thread (it answers once the model is ready, failed, or
    the daemon's load wait runs out) and poll GET /models/NAME meanwhile, calling
    ``on_progress(state, elapsed)`` after each poll."""
    path = f"/models/{quote(name, safe='')}"
    result: dict[str, Any] = {}

    def post() -> None:
        try:
            result["record"] = client.request("POST", f"{path}/load")
        except GatewayError as exc:
            result["error"] = exc
        except Exception as exc:  # noqa: BLE001 - reported as one line, never a traceback
            result["error"] = GatewayError(f"load request failed: {type(exc).__name__}: {exc}")

    started = clock()
    worker = threading.Thread(target=post, name=f"modelium-load-{name}", daemon=True)
    worker.start()
    states: list[str] = []
    last: Mapping[str, Any] | None = None
    while worker.is_alive():
        worker.join(interval)
        if not worker.is_alive():
            break
        try:
            last = client.request("GET", path, timeout=POLL_TIMEOUT)
        except GatewayError:
            continue  # the POST's own answer says what went wrong
        state = str(last.get("state") or "?")
        if not states or states[-1] != state:
            states.append(state)
        on_progress(state, clock() - started)
    seconds = clock() - started
    error = result.get("error")
    record = result.get("record")
    if error is not None and error.status is not None:  # the daemon said no: show its last word
        try:
            record = client.request("GET", path, timeout=POLL_TIMEOUT)
        except GatewayError:
            record = last
    final = str((record or {}).get("state") or "?")
    if not states or states[-1] != final:
        states.append(final)
    return LoadOutcome(record=record, seconds=seconds, error=error, states=states)
