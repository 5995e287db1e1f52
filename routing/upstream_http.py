"""A small pooled HTTP/1.1 client for the gateway's upstream calls (asyncio + httptools).

Why not the ``openai`` client over httpx: profiled under load, building the request in
``openai`` and sending it through httpx/httpcore took three quarters of a gateway worker's
event loop — more than reading the client's request, deciding and answering together. The
gateway needs very little of either: POST a JSON body, read a JSON answer or an SSE stream,
keep connections alive, time out. This does exactly that on asyncio protocols with the
llhttp parser uvicorn already uses (``httptools``):

- one keep-alive pool per origin (scheme, host, port), at most ``limit`` connections each;
  a connection goes back to the pool only after a complete response that allows keep-alive,
  anything else closes it;
- TLS with one shared default context (certificates verified);
- ``timeout``: connecting, and then every wait for the next bytes (as httpx's read timeout);
- errors: ``UpstreamTimeout``, ``UpstreamConnectionError`` (refused, reset, closed early, an
  unreadable response); a response of any status is returned as is (the caller judges it);
- bodies with ``Content-Length``, chunked, or read until the server closes.

No redirects, no proxies from the environment, no retries: the gateway escalates instead.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

__all__ = [
    "UpstreamClient",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
]


class UpstreamError(Exception):
    """The call failed before a complete response arrived."""


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamConnectionError(UpstreamError):
    pass


Origin = tuple[str, str, int]


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; one request at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.close_error: str = ""
        self._parser: httptools.HttpResponseParser | None = None
        self._response: UpstreamResponse | None = None

    # -- protocol callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self._response
        if response is not None and not response.complete:
            if response.until_close and exc is None and response.status:
                response._finish(keep_alive=False)
            else:
                response._fail(UpstreamConnectionError(f"connection closed ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return  # nothing asked: ignore (the connection is closed on release)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._response is not None:
                self._response._fail(UpstreamConnectionError(f"unreadable response: {exc}"))
            self.close()

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._response is not None
        self._response._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None and self._parser is not None
        response.status = self._parser.get_status_code()
        headers = dict(response._headers)
        response.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()}
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        response.until_close = b"content-length" not in headers and not chunked
        response._signal()

    def on_body(self, body: bytes) -> None:
        assert self._response is not None
        self._response._chunks.append(body)
        self._response._signal()

    def on_message_complete(self) -> None:
        assert self._response is not None and self._parser is not None
        self._response._finish(keep_alive=self._parser.should_keep_alive())

    # -- use --------------------------------------------------------------------------------

    def start(self, request: bytes, response: UpstreamResponse) -> None:
        assert self.transport is not None
        self._response = response
        self._parser = httptools.HttpResponseParser(self)
        self.transport.write(request)

    def detach(self) -> None:
        self._response = None
        self._parser = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """Status and headers once they arrived; the body read whole or chunk by chunk."""

    def __init__(self, client: UpstreamClient, connection: _Connection, timeout: float) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.until_close = False
        self.complete = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: deque[bytes] = deque()
        self._error: UpstreamError | None = None
        self._keep_alive = False
        self._waiter: asyncio.Future[None] | None = None
        self._client = client
        self._connection: _Connection | None = connection
        self._timeout = timeout

    # -- from the connection -----------------------------------------------------------------

    def _signal(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _finish(self, *, keep_alive: bool) -> None:
        self.complete = True
        self._keep_alive = keep_alive
        self._signal()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self._signal()

    # -- for the caller ------------------------------------------------------------------------

    async def _wait(self) -> None:
        """Until something new arrived (headers, a chunk, the end or an error)."""
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        try:
            async with asyncio.timeout(self._timeout):
                await self._waiter
        except TimeoutError:
            self._fail(UpstreamTimeout("timeout"))
            self.close()
            raise UpstreamTimeout("timeout") from None
        finally:
            self._waiter = None
        if self._error is not None:
            self.close()
            raise self._error

    async def _headers_received(self) -> None:
        while not self.status:
            await self._wait()

    async def read(self) -> bytes:
        """The whole body (the connection goes back to the pool)."""
        while not self.complete:
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        self.close()
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                yield self._chunks.popleft()
            if self.complete:
                self.close()
                return
            await self._wait()

    async def iter_lines(self) -> AsyncIterator[str]:
        """Text lines (``\\n`` or ``\\r\\n``), as httpx's ``aiter_lines``."""
        pending = b""
        async for chunk in self.iter_chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if pending:
            yield pending.rstrip(b"\r").decode("utf-8", "replace")

    def close(self) -> None:
        """Done with the response: a fully read keep-alive connection is reused, any other
        is closed (an abandoned stream stops the upstream's work)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        connection.detach()
        if self.complete and self._keep_alive and self._error is None and not connection.closed:
            self._client._release(connection)
        else:
            connection.close()


class UpstreamClient:
    """Keep-alive connections per origin (at most ``limit`` idle ones kept). ``post`` sends
    a JSON body and returns once the status line and headers arrived."""

    def __init__(self, limit: int = 256, user_agent: str = "switchyard-gateway") -> None:
        self._limit = limit  # idle connections kept per origin
        self._idle: dict[Origin, list[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None
        self._user_agent = user_agent.encode()
        # url -> (origin, the request head up to the per-call headers): parsed once.
        self._targets: dict[str, tuple[Origin, bytes]] = {}

    def _target(self, url: str) -> tuple[Origin, bytes]:
        known = self._targets.get(url)
        if known is not None:
            return known
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamConnectionError(f"unsupported URL {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname if port in (80, 443) else f"{parts.hostname}:{port}"
        head = b"\r\n".join(
            [
                b"POST " + target.encode() + b" HTTP/1.1",
                b"Host: " + host.encode("idna"),
                b"User-Agent: " + self._user_agent,
                b"Content-Type: application/json",
                b"Accept: application/json, text/event-stream",
            ]
        )
        if len(self._targets) >= 1024:
            self._targets.clear()  # bounded: URLs come from the model registry
        known = self._targets[url] = ((scheme, parts.hostname, port), head)
        return known

    async def _connect(self, origin: Origin, timeout: float) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise UpstreamTimeout("timeout") from None
        except OSError as exc:
            raise UpstreamConnectionError(type(exc).__name__) from exc
        return connection

    def _release(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.origin, [])
        if len(idle) < self._limit:
            idle.append(connection)
        else:
            connection.close()

    async def post(
        self, url: str, body: bytes, *, timeout: float, headers: dict[str, str] | None = None
    ) -> UpstreamResponse:
        origin, fixed = self._target(url)
        connection = await self._connect(origin, timeout)
        head = [fixed, b"Content-Length: " + str(len(body)).encode()]
        for name, value in (headers or {}).items():
            head.append(name.encode("latin-1") + b": " + value.encode("latin-1"))
        response = UpstreamResponse(self, connection, timeout)
        connection.start(b"\r\n".join(head) + b"\r\n\r\n" + body, response)
        try:
            await response._headers_received()
        except BaseException:
            response.close()
            raise
        return response

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
