"""A small open-loop HTTP/1.1 load generator (asyncio, keep-alive) for steady-rate latency.

Requests are scheduled at fixed times (t0 + i / rate) and latency is measured from the
scheduled time, so a slow server cannot hide its queueing delay (no coordinated omission).
Used for the steady-rate phase; wrk drives the saturation phase.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class SteadyResult:
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies_2xx: list[bytes] = field(default_factory=list)
    captured: list[str] = field(default_factory=list)  # ``capture_header`` of each 2xx
    errors: int = 0
    seconds: float = 0.0


async def _read_response(
    reader: asyncio.StreamReader, capture: bytes = b""
) -> tuple[int, bytes, str]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    captured = ""
    for line in lines[1:]:
        lower = line.lower()
        if lower.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
        elif capture and lower.startswith(capture + b":"):
            captured = line.split(b":", 1)[1].strip().decode()
    body = await reader.readexactly(length) if length else b""
    return status, body, captured


async def _steady(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    bodies: Sequence[bytes],
    rate: float,
    seconds: float,
    connections: int,
    capture_header: str = "",
) -> SteadyResult:
    result = SteadyResult()
    capture = capture_header.lower().encode()
    total = int(rate * seconds)
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    header_blob = "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while True:
            item = await queue.get()
            if item[0] < 0:
                writer.close()
                return
            index, scheduled = item
            body = bodies[index % len(bodies)]
            request = (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{header_blob}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            try:
                writer.write(request)
                await writer.drain()
                status, payload, captured = await _read_response(reader, capture)
            except (OSError, asyncio.IncompleteReadError):
                result.errors += 1
                reader, writer = await asyncio.open_connection(host, port)
                continue
            result.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                result.bodies_2xx.append(payload)
                if captured:
                    result.captured.append(captured)

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.perf_counter()
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, scheduled))
        result.sent += 1
    for _ in workers:
        queue.put_nowait((-1, 0.0))
    await asyncio.gather(*workers)
    result.seconds = time.perf_counter() - start
    return result


def steady_run(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    bodies: Sequence[bytes],
    *,
    rate: float,
    seconds: float,
    connections: int = 32,
    capture_header: str = "",
) -> SteadyResult:
    return asyncio.run(
        _steady(host, port, path, headers, bodies, rate, seconds, connections, capture_header)
    )


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
