"""A small HTTP/1.1 client for the one thing on the gateway's hot path: a streamed answer
from a loopback model server (vLLM), relayed chunk by chunk.

Why not httpx here (it still serves everything else): through httpx → httpcore → h11 each
relayed chunk crosses about six async generators and h11's pure-Python parser. This client
is an asyncio protocol with httptools (C) as the parser: bytes arrive in
``data_received``, the parser hands over the body pieces, and the relay takes everything
that arrived since its last look in one ``await`` (chunks that arrived together are relayed
together).

* Connections are kept alive and reused (per host and port, at most ``max_idle``, none
  older than ``idle_seconds``: uvicorn, which vLLM runs on, closes idle ones after 5 s); a
  reused connection that turns out closed before any answer byte is retried once fresh.
* Errors are httpx's exception types, so the gateway maps every upstream failure one way:
  ``ConnectError`` (refused: the orchestrator asks whether the server is gone),
  ``ConnectTimeout``, ``ReadTimeout`` (no byte for ``read_timeout`` seconds, checked by one
  timer per stream, not one per chunk), ``RemoteProtocolError`` (the server closed early or
  spoke nonsense).
* :meth:`UpstreamStream.abort` closes the connection at once (vLLM aborts the request on
  disconnect); :meth:`UpstreamStream.close` gives a finished one back to the pool.
* Reading pauses while more than ``HIGH_WATER`` bytes wait to be relayed (a slow client).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from urllib.parse import urlsplit

import httptools
import httpx

HIGH_WATER = 1024 * 1024


class ClientLeft(Exception):
    """Raised to the reader after :meth:`UpstreamStream.abort` (the client went away)."""


class _Connection(asyncio.Protocol):
    """One upstream connection; httptools calls the ``on_*`` methods while parsing."""

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.reset()

    def reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.pieces: list[bytes] = []
        self.buffered = 0
        self.received_any = False
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.last_activity = time.monotonic()
        self.paused = False

    # ---------------------------------------------------------------- asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.last_activity = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(httpx.RemoteProtocolError(f"upstream sent a malformed answer: {exc}"))
            return
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.complete and self.error is None:
            what = f": {exc}" if exc else ""
            self.error = httpx.RemoteProtocolError(f"upstream closed the connection mid-answer{what}")
        self.transport = None
        self._wake()

    # ---------------------------------------------------------------- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        self.complete = True

    # ---------------------------------------------------------------- helpers

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class UpstreamStream:
    """A response being received: ``status`` and ``headers`` are known; the body follows."""

    def __init__(self, pool: StreamPool, conn: _Connection, read_timeout: float) -> None:
        self._pool, self._conn = pool, conn
        self._read_timeout = read_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._arm()

    @property
    def status(self) -> int:
        return self._conn.status

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """Lower-cased names, in the order received."""
        return self._conn.headers

    async def next_chunk(self) -> bytes:
        """All body bytes received since the last call, waiting for some; b"" at the end."""
        conn = self._conn
        while not conn.pieces:
            if conn.error is not None:
                raise conn.error
            if conn.complete:
                return b""
            await conn.wait()
        pieces = conn.pieces
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        conn.buffered = 0
        if conn.paused and conn.transport is not None:
            conn.paused = False
            conn.transport.resume_reading()
        return data

    async def read_all(self) -> bytes:
        parts = []
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def abort(self) -> None:
        """The client left: close the connection now; the reader gets :class:`ClientLeft`."""
        if not self._closed:  # once closed the connection may serve another request
            self._conn.fail(ClientLeft())

    def close(self) -> None:
        """Done with it: a finished keep-alive connection goes back to the pool."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        conn = self._conn
        if conn.complete and conn.keep_alive and conn.error is None and not conn.pieces:
            self._pool.give_back(conn)
        elif conn.transport is not None:
            conn.transport.close()

    def _arm(self, delay: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._read_timeout if delay is None else delay, self._check)

    def _check(self) -> None:
        """One timer per stream: re-armed for the rest when bytes came meanwhile."""
        conn = self._conn
        if self._closed or conn.complete or conn.error is not None:
            return
        quiet = time.monotonic() - conn.last_activity
        if quiet >= self._read_timeout:
            conn.fail(httpx.ReadTimeout(f"no byte from upstream for {self._read_timeout:.0f} s"))
        else:
            self._arm(self._read_timeout - quiet)


class StreamPool:
    """Keep-alive connections to loopback servers, for streamed POSTs."""

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 600.0,
                 max_idle: int = 128, idle_seconds: float = 4.0) -> None:
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_idle, self.idle_seconds = max_idle, idle_seconds
        self._idle: dict[tuple[str, int], collections.deque[_Connection]] = {}
        self._count = 0

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> UpstreamStream:
        """Send the request; return once the answer's status and headers are in."""
        parts = urlsplit(url)
        key = (parts.hostname or "127.0.0.1", parts.port or 80)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        head = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            head.append(f"{name}: {value}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        conn = self._take(key)
        if conn is not None:
            try:
                return await self._exchange(conn, request)
            except httpx.RemoteProtocolError:
                if conn.received_any:
                    raise  # the server did answer: not a stale connection
            # closed while idle (the server's keep-alive timeout): once more, fresh
        return await self._exchange(await self._connect(key), request)

    def give_back(self, conn: _Connection) -> None:
        if conn.transport is None or conn.transport.is_closing():
            return
        idle = self._idle.setdefault(conn.key, collections.deque())
        if len(idle) >= self.max_idle:
            conn.transport.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the newest: the least likely to have timed out
            if conn.transport is not None and not conn.transport.is_closing() and \
                    now - conn.idle_since < self.idle_seconds:
                conn.reset()
                return conn
            if conn.transport is not None:
                conn.transport.close()
        return None

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(key)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: conn, key[0], key[1]),
                                   self.connect_timeout)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {key[0]}:{key[1]} took over "
                                       f"{self.connect_timeout:.0f} s") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"{key[0]}:{key[1]}: {exc}") from exc
        return conn

    async def _exchange(self, conn: _Connection, request: bytes) -> UpstreamStream:
        assert conn.transport is not None
        conn.transport.write(request)
        stream = UpstreamStream(self, conn, self.read_timeout)  # its timer bounds the wait
        try:
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
        except BaseException:
            stream.abort()
            stream.close()
            raise
        return stream
