"""Logging set-up: one JSON object per line (default) or plain text.

Structured fields passed with ``extra={...}`` (model, action, reason_code, ...) are kept
as top-level JSON keys so logs can be filtered per model.

Request ids: :data:`request_id_var` holds the id of the request being served (set by the
gateway's middleware, :mod:`modelium.gateway.request_ids`); :class:`RequestIdFilter` adds
it as ``request_id`` to every line logged while it is set, in whatever module the line
comes from. It lives here, not in the gateway, so the orchestrator and the runtimes can
read it (:func:`current_request_id`) without depending on the transport.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

#: The id of the request this code runs on behalf of (None outside any request).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("modelium_request_id",
                                                                            default=None)


def current_request_id() -> str | None:
    """The id of the request being served here, or None (a timer, the control loop)."""
    return request_id_var.get()


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to a record logged while a request id is set (an explicit
    ``extra={"request_id": ...}`` wins). Installed on the handler, so it sees every
    logger's records, not only those of one logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = request_id_var.get()
            if request_id is not None:
                record.request_id = request_id
        return True


class TextFormatter(logging.Formatter):
    """For humans: ``time level logger: message [request_id=ID]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [request_id={request_id}]" if request_id else line

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    from modelium.log_tail import install  # per-model lines for GET /models/NAME/logs

    install()
    for noisy in ("uvicorn.access", "watchdog", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
