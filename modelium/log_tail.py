"""The last log lines of each model, kept in memory for `GET /models/NAME/logs`.

Why: the dashboard and `modelium logs NAME -f` want "what did the daemon say about this
model lately" without grepping the daemon's stderr (which may go to a terminal, journald
or nowhere). Every record logged with ``extra={"model": NAME}`` (decisions, drops, jobs)
is copied here by :class:`ModelLogTail`, a :class:`logging.Handler` on the root logger.

Bounds, so a chatty model or a flood of names cannot grow the daemon: at most
``lines_per_model`` lines per model (a deque; the oldest go first) and at most
``max_models`` models (the one written to least recently is dropped whole). Every line
gets a sequence number from one counter, so ``after=SEQ`` polling never misses or repeats
a line, even across models.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_LINES_PER_MODEL = 500
DEFAULT_MAX_MODELS = 256


@dataclass(frozen=True)
class TailLine:
    """One kept line; ``time`` is the record's Unix time (float seconds)."""

    seq: int
    time: float
    level: str
    logger: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelLogTail(logging.Handler):
    """Keeps the newest lines per model; safe to call from any thread (logging may run in
    ``asyncio.to_thread`` workers), hence the lock around every read and write."""

    def __init__(self, lines_per_model: int = DEFAULT_LINES_PER_MODEL,
                 max_models: int = DEFAULT_MAX_MODELS, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        if lines_per_model < 1 or max_models < 1:
            raise ValueError("lines_per_model and max_models must be at least 1")
        self.lines_per_model = lines_per_model
        self.max_models = max_models
        self._lines: OrderedDict[str, deque[TailLine]] = OrderedDict()
        self._seq = 0
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        model = getattr(record, "model", None)
        if not isinstance(model, str) or not model:
            return
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            message = str(record.msg)
        with self._mutex:
            self._seq += 1
            lines = self._lines.get(model)
            if lines is None:
                lines = self._lines[model] = deque(maxlen=self.lines_per_model)
                while len(self._lines) > self.max_models:
                    self._lines.popitem(last=False)
            else:
                self._lines.move_to_end(model)
            lines.append(TailLine(self._seq, record.created, record.levelname, record.name,
                                  message))

    def lines(self, model: str, *, after: int = 0, limit: int = 200) -> list[TailLine]:
        """Up to ``limit`` lines of ``model`` with ``seq > after``, oldest first."""
        with self._mutex:
            kept = list(self._lines.get(model, ()))
        newer = [line for line in kept if line.seq > after]
        return newer[:limit]

    def forget(self, model: str) -> None:
        """Drop a model's lines (it was removed)."""
        with self._mutex:
            self._lines.pop(model, None)

    def models(self) -> list[str]:
        with self._mutex:
            return list(self._lines)


#: The daemon's tail: installed on the root logger by :func:`install`, read by the gateway.
TAIL = ModelLogTail()


def install(tail: ModelLogTail = TAIL) -> ModelLogTail:
    """Put ``tail`` on the root logger (once; calling again is harmless)."""
    root = logging.getLogger()
    if tail not in root.handlers:
        root.addHandler(tail)
    return tail
