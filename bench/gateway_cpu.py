"""CPU per gateway request (robust to a busy machine, unlike saturation throughput).

Starts the stub upstream and the gateway as ``bench/bench_gateway.py`` does (gunicorn, uvicorn
worker, production settings) but with one worker, drives it at a fixed modest rate with
``bench/loadgen.py`` and reads the worker's and PostgreSQL's CPU time from /proc before and
after: CPU ms per request for each. Run:
``python -m controlplane.stack exec .venv/bin/python bench/gateway_cpu.py --runs 2``.
With ``--hold`` the gateway stays up after setup (for a profiler) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_gateway import (  # noqa: E402
    DECISION_HEADER,
    _stop,
    _stored,
    _wait,
    chat_body,
    switchyard_gateway,
    switchyard_prepare,
)
from bench.loadgen import SteadyResult, percentile, steady_run  # noqa: E402

GATEWAY_PORT = int(os.environ.get("BENCH_GATEWAY_PORT", "8311"))
STUB_PORT = int(os.environ.get("BENCH_STUB_PORT", "8312"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int, children: bool = False) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3): utime=14, stime=15, cutime=16, cstime=17
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def postgres_ticks(pid: int) -> int:
    total = cpu_ticks(pid, children=True)
    for child in children_of(pid):
        try:
            total += cpu_ticks(child)
        except FileNotFoundError:
            pass
    return total


def postmaster_pid(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT setting FROM pg_settings WHERE name = 'data_directory'"
        ).fetchone()
    assert row is not None
    return int((Path(row[0]) / "postmaster.pid").read_text().split()[0])


def cpu_per_request(
    worker: int,
    postmaster: int,
    port: int,
    path: str,
    headers: dict[str, str],
    bodies: list[bytes],
    *,
    rate: float,
    seconds: float,
    capture_header: str = "",
) -> tuple[SteadyResult, dict[str, Any]]:
    """One steady run (``bench/loadgen.py``) against ``port``: the run, and the worker's
    and PostgreSQL's CPU ms per acknowledged (2xx) request with its latency figures."""
    time.sleep(1)
    w0, p0 = cpu_ticks(worker), postgres_ticks(postmaster)
    r = steady_run(
        "127.0.0.1",
        port,
        path,
        headers,
        bodies,
        rate=rate,
        seconds=seconds,
        capture_header=capture_header,
    )
    time.sleep(1.5)  # let deferred recording finish
    w1, p1 = cpu_ticks(worker), postgres_ticks(postmaster)
    ok = sum(n for status, n in r.statuses.items() if 200 <= status < 300)
    return r, {
        "sent": r.sent,
        "ok": ok,
        "errors": r.errors + r.sent - ok,
        "worker_cpu_ms_per_req": round((w1 - w0) * 1000 / TICK / max(ok, 1), 3),
        "postgres_cpu_ms_per_req": round((p1 - p0) * 1000 / TICK / max(ok, 1), 3),
        "p50_ms": round(percentile(r.latencies_ms, 50), 2),
        "p99_ms": round(percentile(r.latencies_ms, 99), 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="gateway workers (--hold)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sy-gateway-cpu-"))
    env, db_url, secret = switchyard_prepare(work, STUB_PORT)
    py = sys.executable
    stub = subprocess.Popen(
        [py, str(ROOT / "bench" / "stub_upstream.py"), "--port", str(STUB_PORT)],
        cwd=ROOT,
        start_new_session=True,
    )
    worker_count = args.workers if args.hold else 1  # CPU runs read one worker
    gateway = switchyard_gateway(env, GATEWAY_PORT, workers=worker_count)
    results: list[dict[str, Any]] = []
    try:
        _wait(f"http://127.0.0.1:{GATEWAY_PORT}/healthz", 60, gateway)
        workers = children_of(gateway.pid)
        while len(workers) < worker_count:
            time.sleep(0.2)
            workers = children_of(gateway.pid)
        worker = workers[0]
        postmaster = postmaster_pid(db_url)
        headers = {"Authorization": f"Bearer {secret}"}
        path = "/v1/chat/completions"
        steady_run("127.0.0.1", GATEWAY_PORT, path, headers, [chat_body()], rate=100, seconds=3)
        if args.hold:
            print(
                json.dumps(
                    {
                        "worker": worker,
                        "workers": workers,
                        "postmaster": postmaster,
                        "secret": secret,
                        "port": GATEWAY_PORT,
                    }
                ),
                flush=True,
            )
            signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        for _ in range(args.runs):
            r, run = cpu_per_request(
                worker,
                postmaster,
                GATEWAY_PORT,
                path,
                headers,
                [chat_body()],
                rate=args.rate,
                seconds=args.seconds,
                capture_header=DECISION_HEADER,
            )
            durability = _stored(db_url, r.captured)
            run["lost"] = durability["lost"]
            run["outcomes_missing"] = durability["outcomes_missing"]
            results.append(run)
            print(json.dumps(run), flush=True)
    finally:
        _stop(gateway)
        _stop(stub)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
