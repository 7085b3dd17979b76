"""Bounds on what one request may cost: body size, batch length, and a client that left.

* :class:`BodyLimit` (ASGI middleware): a body larger than ``gateway.max_body_bytes`` is
  answered 413 *while it is being read*: at once when ``Content-Length`` says so, else as
  soon as the chunks received pass the limit; the rest is never buffered (uvicorn closes
  the connection after answering a request whose body was not consumed).
* :func:`check_batch`: more than ``gateway.max_batch_items`` inputs, prompts, messages or
  tensor rows is a 422 naming the limit.
* :func:`unless_client_leaves`: runs a coroutine (the runtime call of a non-streamed
  request) and cancels it when the client disconnects, so a generation nobody will read
  stops upstream (httpx closes the connection; vLLM aborts the request).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelium.runtimes.errors import BadRequestError

T = TypeVar("T")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, declared)
            return
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if not started and not refused:
                        refused = True
                        await self._refuse(send, None)
                    return {"type": "http.disconnect"}  # the app stops reading; nothing more is buffered
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 was the answer
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)

    async def _refuse(self, send: Send, declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else f"more than {self.max_bytes} bytes"
        body = json.dumps({"error": {
            "type": "payload_too_large",
            "message": f"request body is {size}; gateway.max_body_bytes is {self.max_bytes}",
        }}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def check_batch(field: str, items: Any, limit: int) -> None:
    """422 when ``items`` (a list, or named tensors: each one's rows) is longer than ``limit``."""
    if isinstance(items, list) and len(items) > limit:
        raise BadRequestError(f"{field}: at most {limit} items per request (gateway.max_batch_items), "
                              f"got {len(items)}")
    if isinstance(items, dict):
        for name, value in items.items():
            if isinstance(value, list) and len(value) > limit:
                raise BadRequestError(f"{field}.{name}: at most {limit} rows per request "
                                      f"(gateway.max_batch_items), got {len(value)}")


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """``await work``, cancelled when the client disconnects (ClientGone then)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled() and task.exception() is None:
        return task.result()  # it finished anyway: the caller owns (and releases) what it got
    raise ClientGone()


class ClientGone(Exception):
    """The client disconnected before the answer was ready (nothing is sent back)."""
