"""The gateway's upstream HTTP client (routing/upstream_http.py) against a real local
server that answers in the ways upstreams do: Content-Length, chunked, read-until-close,
keep-alive, too slow, closed early."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from routing.upstream_http import UpstreamClient, UpstreamConnectionError, UpstreamTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str, list[int]]:
    connections: list[int] = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat/completions", connections


async def _request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


async def _keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        try:
            body = await _request(reader)
        except asyncio.IncompleteReadError:
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


async def _chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for line in (b"data: one\n\n", b"data: two\n", b"\ndata: [DONE]\n\n"):
        writer.write(b"%x\r\n%s\r\n" % (len(line), line))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)


async def _until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    writer.write(b"HTTP/1.0 503 Service Unavailable\r\n\r\nbusy")
    await writer.drain()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    await asyncio.sleep(5)


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    await writer.drain()


def test_keep_alive_connections_are_reused() -> None:
    async def run() -> None:
        server, url, connections = await _serve(_keep_alive)
        client = UpstreamClient()
        for i in range(3):
            response = await client.post(url, b'{"n": %d}' % i, timeout=2)
            assert response.status == 200 and await response.read() == b'{"n": %d}' % i
        assert len(connections) == 1
        client.close()
        server.close()

    asyncio.run(run())


def test_chunked_streams_are_read_line_by_line() -> None:
    async def run() -> None:
        server, url, _ = await _serve(_chunked)
        client = UpstreamClient()
        response = await client.post(url, b"{}", timeout=2)
        lines = [line async for line in response.iter_lines()]
        assert lines == ["data: one", "", "data: two", "", "data: [DONE]", ""]
        client.close()
        server.close()

    asyncio.run(run())


def test_a_body_read_until_the_server_closes() -> None:
    async def run() -> None:
        server, url, _ = await _serve(_until_close)
        client = UpstreamClient()
        response = await client.post(url, b"{}", timeout=2)
        assert response.status == 503 and await response.read() == b"busy"
        client.close()
        server.close()

    asyncio.run(run())


def test_silence_times_out_and_a_short_body_is_a_connection_error() -> None:
    async def run() -> None:
        client = UpstreamClient()
        server, url, _ = await _serve(_silent)
        with pytest.raises(UpstreamTimeout):
            await client.post(url, b"{}", timeout=0.2)
        server.close()
        server, url, _ = await _serve(_hang_up)
        response = await client.post(url, b"{}", timeout=2)
        with pytest.raises(UpstreamConnectionError):
            await response.read()
        server.close()
        with pytest.raises(UpstreamConnectionError):  # nobody listening any more
            await client.post(url, b"{}", timeout=2)
        client.close()

    asyncio.run(run())
