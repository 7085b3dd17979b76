"""The relay's streaming HTTP/1.1 client (modelium/gateway/upstream_http.py) against a
scripted HTTP server on a real loopback socket: keep-alive reuse, a stale connection
retried, refused connections, abort, read timeout, a server that dies mid-answer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from modelium.gateway.upstream_http import ClientLeft, StreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Scripted:
    """Serves each connection with ``handler(reader, writer, connection_number)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        finally:
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[Scripted, str]]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[Scripted, str]:
        scripted = Scripted(handler)
        server = await asyncio.start_server(scripted._serve, "127.0.0.1", 0)
        servers.append(server)
        return scripted, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/completions"

    yield start
    for server in servers:
        server.close()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def test_streams_chunks_and_reuses_the_connection(serve) -> None:
    async def handler(reader, writer, _n) -> None:
        while True:
            try:
                body = await scripted.request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(SSE_HEAD + chunk(b"data: " + body + b"\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()

    scripted, url = await serve(handler)
    pool = StreamPool()
    for n in range(3):
        stream = await pool.post(url, b'{"n": %d}' % n, {"Authorization": "Bearer k", "X-Request-ID": "r1"})
        assert stream.status == 200 and (b"content-type", b"text/event-stream") in stream.headers
        assert await stream.read_all() == b'data: {"n": %d}\n\ndata: [DONE]\n\n' % n
        stream.close()
    assert scripted.connections == 1  # kept alive
    assert b"Authorization: Bearer k\r\n" in scripted.requests[0] and b"X-Request-ID: r1" in scripted.requests[0]
    await pool.aclose()


async def test_stale_keep_alive_connection_is_retried_fresh(serve) -> None:
    async def handler(reader, writer, _n) -> None:
        await scripted.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # then the server closes it, like uvicorn after its keep-alive timeout

    scripted, url = await serve(handler)
    pool = StreamPool()
    for _ in range(2):
        stream = await pool.post(url, b"{}", {})
        assert await stream.read_all() == b"ok"
        stream.close()
        await asyncio.sleep(0.05)
    assert scripted.connections == 2
    await pool.aclose()


async def test_refused_connection_is_httpx_connect_error() -> None:
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        with pytest.raises(httpx.ConnectError):
            await StreamPool().post(f"http://127.0.0.1:{dead.getsockname()[1]}/v1/completions", b"{}", {})


async def test_abort_closes_the_upstream_connection(serve) -> None:
    gone = asyncio.Event()

    async def handler(reader, writer, _n) -> None:
        await scripted.request(reader)
        writer.write(SSE_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        if await reader.read(1) == b"":  # EOF: the gateway closed the connection
            gone.set()

    scripted, url = await serve(handler)
    stream = await StreamPool().post(url, b"{}", {})
    assert await stream.next_chunk() == b"data: 1\n\n"
    waiting = asyncio.ensure_future(stream.next_chunk())
    await asyncio.sleep(0.05)
    stream.abort()
    with pytest.raises(ClientLeft):
        await waiting
    stream.close()
    await asyncio.wait_for(gone.wait(), 5)


async def test_silence_is_a_read_timeout(serve) -> None:
    async def handler(reader, writer, _n) -> None:
        await scripted.request(reader)
        writer.write(SSE_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        await asyncio.sleep(5)

    scripted, url = await serve(handler)
    stream = await StreamPool(read_timeout=0.3).post(url, b"{}", {})
    assert await stream.next_chunk() == b"data: 1\n\n"
    with pytest.raises(httpx.ReadTimeout):
        await asyncio.wait_for(stream.next_chunk(), 5)
    stream.close()


async def test_server_dying_mid_answer_is_a_protocol_error(serve) -> None:
    async def handler(reader, writer, _n) -> None:
        await scripted.request(reader)
        writer.write(SSE_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()

    scripted, url = await serve(handler)
    stream = await StreamPool().post(url, b"{}", {})
    assert await stream.next_chunk() == b"data: 1\n\n"
    with pytest.raises(httpx.RemoteProtocolError):
        await asyncio.wait_for(stream.next_chunk(), 5)
    stream.close()


async def test_header_values_cannot_split_the_request() -> None:
    with pytest.raises(ValueError):
        await StreamPool().post("http://127.0.0.1:9/v1/completions", b"{}", {"X-Request-ID": "a\r\nEvil: 1"})
