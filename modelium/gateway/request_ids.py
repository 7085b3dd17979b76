"""Request ids end to end: accepted or made here, returned on every answer, logged on
every line the request causes.

:class:`RequestIds` (pure ASGI middleware, the outermost one) gives each HTTP request one
id and keeps it in :data:`modelium.logs.request_id_var` while the request runs:

* the client's ``X-Request-ID`` is kept when it is 1-128 visible ASCII characters
  (``!`` to ``~``: no spaces, no control characters, nothing that could split a header or
  forge a log line); anything else (empty, longer, non-ASCII) is replaced by a new id, and
  the replacement is logged with the refused value's length only;
* otherwise a new one is made (16 hex characters, :func:`new_request_id`);
* the id goes back in the ``X-Request-ID`` response header of every answer: successes,
  errors of any route, 413s of the body limit, and a 500 for an exception no route
  handled (answered here, with the id in the body, instead of a bare text 500);
* bodies that carry ``request_id`` (``/predict``, error bodies, jobs) read the same id
  via :func:`current_request_id`, never a new one.

Pure ASGI rather than ``BaseHTTPMiddleware``: no extra task per request, streamed answers
pass through untouched (the relay's hot path pays one header append), and the context
variable set here is the one the route's code sees.
"""

from __future__ import annotations

import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelium.logs import current_request_id, request_id_var

__all__ = ["REQUEST_ID_HEADER", "RequestIds", "accepted_request_id", "current_request_id", "new_request_id"]

log = logging.getLogger("modelium.gateway")

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode()


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def accepted_request_id(value: bytes | str | None) -> str | None:
    """``value`` as a request id if it is acceptable (see the module doc), else None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not 1 <= len(value) <= MAX_REQUEST_ID_LENGTH:
        return None
    if not all("!" <= ch <= "~" for ch in value):
        return None
    return value


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = next((v for k, v in scope.get("headers", ()) if k == _HEADER_KEY), None)
        request_id = accepted_request_id(offered)
        if request_id is None:
            request_id = new_request_id()
        token = request_id_var.set(request_id)
        if offered is not None and offered.decode("latin-1") != request_id:
            log.info("X-Request-ID refused (%d bytes, not 1-%d visible ASCII characters); using a new id",
                     len(offered), MAX_REQUEST_ID_LENGTH)
        header = (_HEADER_KEY, request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [h for h in message.get("headers", ()) if h[0].lower() != _HEADER_KEY]
                headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:
                raise  # too late for an answer: the server closes the connection
            # Imported here: errors.py imports the orchestrator, which this module must not need.
            from modelium.gateway.errors import map_error

            await map_error(exc, request_id)(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
