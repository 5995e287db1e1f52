"""A fast OpenAI-compatible stub upstream for the gateway benchmark.

``POST …/chat/completions`` answers a fixed chat completion (or its SSE stream when the body
says ``"stream": true``) at once — or after ``--slow-delay`` seconds (1 s) when the body
carries the marker ``#slow`` (the 500-in-flight phase: both gateways pass the messages on
unchanged, so one stub serves every phase). Anything else answers 404.

Built to measure others, not itself: a raw ``asyncio.Protocol`` on uvloop, HTTP/1.1
keep-alive, one process per ``--processes`` sharing the port (``SO_REUSEPORT``). No
validation beyond what finding the body needs.

Run: ``python bench/stub_upstream.py --port 8302 --processes 2``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import sys

SLOW_MARKER = b"#slow"

ANSWER = {
    "id": "chatcmpl-stub",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "stub",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Queue: facilities. Priority: P1."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 24, "completion_tokens": 9, "total_tokens": 33},
}


def stream_body() -> bytes:
    base = {k: ANSWER[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Queue: facilities."}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": " Priority: P1."}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": ANSWER["usage"]},
    ]
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + b"data: [DONE]\n\n"


def _response(status: bytes, kind: bytes, payload: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
        + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )  # fmt: skip


PLAIN = _response(b"200 OK", b"application/json", json.dumps(ANSWER).encode())
STREAMED = _response(b"200 OK", b"text/event-stream", stream_body())
NOT_FOUND = _response(b"404 Not Found", b"application/json", b'{"error":"not found"}')


class _Stub(asyncio.Protocol):
    __slots__ = ("buffer", "closing", "loop", "slow_delay", "transport")

    def __init__(self, slow_delay: float) -> None:
        self.buffer = b""
        self.slow_delay = slow_delay
        self.closing = False
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's is no subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end]
            lower = head.lower()
            length = 0
            at = lower.find(b"content-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at)
                length = int(lower[at + 15 : stop if stop >= 0 else None])
            if len(buffer) < end + 4 + length:
                break
            body = buffer[end + 4 : end + 4 + length]
            buffer = buffer[end + 4 + length :]
            close = b"connection: close" in lower
            self._answer(head, body, close)
        self.buffer = buffer

    def _answer(self, head: bytes, body: bytes, close: bool) -> None:
        line = head[: head.find(b"\r\n")]
        if not line.startswith(b"POST ") or b"/chat/completions" not in line:
            payload = NOT_FOUND
        elif b'"stream":true' in body or b'"stream": true' in body:
            payload = STREAMED
        else:
            payload = PLAIN
        if SLOW_MARKER in body:
            self.loop.call_later(self.slow_delay, self._write, payload, close)
        else:
            self._write(payload, close)

    def _write(self, payload: bytes, close: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(payload)
        if close:
            self.transport.close()


def _serve(sock: socket.socket, slow_delay: float) -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Stub(slow_delay), sock=sock, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8302)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--slow-delay", type=float, default=1.0)
    args = parser.parse_args(argv)
    children = []
    for _ in range(max(1, args.processes)):
        # Each process its own listening socket on the port: the kernel spreads connections.
        child = multiprocessing.get_context("fork").Process(
            target=_serve, args=(_listener(args.port), args.slow_delay), daemon=True
        )
        child.start()
        children.append(child)

    def stop(*_: object) -> None:
        for c in children:
            if c.pid is not None and c.is_alive():
                os.kill(c.pid, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
