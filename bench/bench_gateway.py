"""Gateway in-flight benchmark: can 2 cores hold 500 requests in flight against an upstream
that takes 1 s per answer?

1. A stub OpenAI-compatible upstream (asyncio, its own process) answers every chat
   completion after ``--delay`` seconds (1 s), plain or streamed.
2. A fresh database ``switchyard_bench`` on the server in DATABASE_URL: migrated, the demo
   registry with every model pointed at the stub, budgets wide open, one API key.
3. The gateway as ``make run`` serves it: gunicorn with 2 uvicorn workers
   (controlplane/asgi.py), production settings, on 127.0.0.1:8301.
4. A warm-up, then ``--in-flight`` (500) requests sent at once (plain, then streamed), each
   on its own connection; wall time, statuses, latency p50/p99.
5. Every 2xx must have its decision and its outcome stored (``lost`` counts those missing).

Run: ``python -m controlplane.stack exec .venv/bin/python bench/bench_gateway.py``.
Writes bench/results/gateway.json (the ``in_flight`` part of issue 12's benchmark; the
side-by-side run against LiteLLM is still to come).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_decision_api import prepare_database  # noqa: E402
from bench.loadgen import percentile  # noqa: E402

GATEWAY_PORT = int(os.environ.get("BENCH_GATEWAY_PORT", "8301"))
STUB_PORT = int(os.environ.get("BENCH_STUB_PORT", "8302"))
RESULTS = ROOT / "bench" / "results" / "gateway.json"

# --- the stub upstream ---------------------------------------------------------------------

_ANSWER = {
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


def _stream_body() -> bytes:
    base = {k: _ANSWER[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Queue: facilities."}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": " Priority: P1."}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": _ANSWER["usage"]},
    ]
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + b"data: [DONE]\n\n"


async def _serve_stub(port: int, delay: float) -> None:
    plain = json.dumps(_ANSWER).encode()
    streamed = _stream_body()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                await asyncio.sleep(delay)
                if b'"stream":true' in body.replace(b" ", b""):
                    payload, kind = streamed, b"text/event-stream"
                else:
                    payload, kind = plain, b"application/json"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                    + str(len(payload)).encode() + b"\r\n\r\n" + payload
                )  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


# --- the load --------------------------------------------------------------------------------


async def _one(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    """One request on its own connection (``Connection: close``): status, head, body.

    A plain asyncio client: httpx's connection pool, driven with 500 connections at once,
    managed only about 65 requests/s against the bare stub on this machine and would have
    measured itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.read()  # until the server closes (content-length or chunked)
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1]), head, body


async def _burst(port: int, secret: str, count: int, stream: bool) -> dict[str, Any]:
    body = json.dumps(
        {
            "model": "ticket-triage",
            "messages": [{"role": "user", "content": "The printer on floor 3 is on fire. Queue?"}],
            "stream": stream,
        }
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: Bearer " + secret.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    ids: list[str] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        began = time.perf_counter()
        try:
            status, head, answer = await asyncio.wait_for(_one(port, request), 60)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            errors += 1
            return
        latencies.append((time.perf_counter() - began) * 1000)
        complete = b"[DONE]" in answer if stream else b'"choices"' in answer
        key = str(status) if complete or status != 200 else "200-incomplete"
        statuses[key] = statuses.get(key, 0) + 1
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"x-switchyard-decision-id:") and status == 200:
                ids.append(line.split(b":", 1)[1].strip().decode())

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    wall = time.perf_counter() - began
    return {
        "requests": count,
        "stream": stream,
        "wall_s": round(wall, 3),
        "statuses": statuses,
        "errors": errors,
        "p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "ids": ids,
    }


def _stored(db_url: str, ids: list[str]) -> tuple[int, int]:
    with psycopg.connect(db_url) as conn:
        decisions = conn.execute(
            "SELECT count(*) FROM telemetry_decision WHERE id = ANY(%s::uuid[])", [ids]
        ).fetchone()
        outcomes = conn.execute(
            "SELECT count(*) FROM telemetry_outcome WHERE decision_id = ANY(%s::uuid[])", [ids]
        ).fetchone()
    return int(decisions[0]) if decisions else 0, int(outcomes[0]) if outcomes else 0


def _wait(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "stub"])
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--in-flight", type=int, default=500)
    parser.add_argument("--port", type=int, default=STUB_PORT)
    args = parser.parse_args(argv)
    if args.mode == "stub":
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(_serve_stub(args.port, args.delay))
        return 0

    db_url = prepare_database(os.environ["DATABASE_URL"])
    var_dir = Path(tempfile.mkdtemp(prefix="sy-bench-gateway-"))
    prom_dir = var_dir / "prometheus"
    prom_dir.mkdir()
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": db_url,
            "DJANGO_DEBUG": "0",
            "DJANGO_HTTPS": "0",
            "SWITCHYARD_VAR_DIR": str(var_dir),
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
            "LOG_LEVEL": "WARNING",
            "FLEET_URL": f"http://127.0.0.1:{STUB_PORT}/v1",
        }
    )
    py = sys.executable
    subprocess.run([py, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    subprocess.run(
        [py, "manage.py", "demo_load", "--registry-only"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE controlplane_budget SET limit_usd = 1000000000")
    secret = (
        subprocess.run(
            [py, "manage.py", "create_api_key", "bench-client"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    procs = [
        subprocess.Popen(
            [py, __file__, "stub", "--port", str(STUB_PORT), "--delay", str(args.delay)],
            cwd=ROOT,
            start_new_session=True,
        ),
        subprocess.Popen(
            [
                str(Path(py).parent / "gunicorn"),
                "controlplane.asgi:application",
                "-c",
                str(ROOT / "controlplane" / "gunicorn_gateway_conf.py"),
                "--bind",
                f"127.0.0.1:{GATEWAY_PORT}",
                "--workers",
                "2",
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        ),
    ]
    try:
        _wait(f"http://127.0.0.1:{GATEWAY_PORT}/healthz", 30)
        for _ in range(3):  # warm-up: both workers' snapshots, key caches and pools
            asyncio.run(_burst(GATEWAY_PORT, secret, 50, False))
        results: dict[str, Any] = {}
        for stream in (False, True):
            burst = asyncio.run(_burst(GATEWAY_PORT, secret, args.in_flight, stream))
            ids = burst.pop("ids")
            decisions, outcomes = _stored(db_url, ids)
            burst["lost"] = (len(ids) - decisions) + (len(ids) - outcomes)
            results["streamed" if stream else "plain"] = burst
            print(json.dumps(burst), flush=True)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        shutil.rmtree(var_dir, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "in_flight": {
            "upstream_delay_s": args.delay,
            "gateway_workers": 2,
            "cpu_count": os.cpu_count(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            **results,
        },
        "note": "500 requests sent at once against a stub upstream answering in 1 s; "
        "the LiteLLM side-by-side (issue 12) is not part of this run yet.",
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
