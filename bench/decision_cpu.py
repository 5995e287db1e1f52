"""CPU per decision request, per routing strategy (robust to a busy machine, unlike the
saturation throughput of ``bench/bench_decision_api.py``).

Sets up the decision API as ``bench/bench_decision_api.py`` does (fresh bench database, demo
registry, open budgets, one key; gunicorn with production settings) but with one worker,
switches every route to each strategy in turn (``strategy_switch``: a new routing-table
version), drives the server at a fixed modest rate with ``bench/loadgen.py`` and reads the
worker's and PostgreSQL's CPU time from /proc before and after (as ``bench/gateway_cpu.py``):
CPU ms per request for each. Run:
``python -m controlplane.stack exec .venv/bin/python bench/decision_cpu.py --runs 3``.
With ``--baseline DIR`` a second server runs from another checkout (say a worktree of
main) and the runs alternate between the two: on a busy machine compare the two within one
invocation, not figures from different times. With ``--hold STRATEGY`` the server stays up
on that strategy after setup (for a profiler) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_decision_api import (  # noqa: E402
    decision_prepare,
    decision_server,
    make_bodies,
    strategy_switch,
)
from bench.gateway_cpu import children_of, cpu_per_request, postmaster_pid  # noqa: E402
from bench.loadgen import steady_run  # noqa: E402

PORT = int(os.environ.get("BENCH_DECISION_CPU_PORT", "8321"))
PATH = "/api/v1/decisions"


@dataclass
class Server:
    name: str  # "this tree", or "baseline"
    port: int
    process: subprocess.Popen[bytes]
    worker: int = 0


def measure(
    server: Server,
    postmaster: int,
    headers: dict[str, str],
    bodies: list[bytes],
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """One steady run: worker and PostgreSQL CPU ms per acknowledged request."""
    _, run = cpu_per_request(
        server.worker, postmaster, server.port, PATH, headers, bodies, rate=rate, seconds=seconds
    )
    return run


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(median(values), 3), "min": min(values), "max": max(values)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=3, help="runs per strategy and server")
    parser.add_argument(
        "--strategies", default="rule,learned,rule,learned", help="comma-separated, in order"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. a worktree of main): its server runs too, on the same "
        "database, and the runs alternate between the two (a busy machine slows both alike)",
    )
    parser.add_argument("--hold", metavar="STRATEGY", default="")
    args = parser.parse_args(argv)
    var_dir = Path(tempfile.mkdtemp(prefix="sy-decision-cpu-"))
    env, db_url, secret = decision_prepare(var_dir)
    servers: list[Server] = []
    headers = {"Authorization": f"Bearer {secret}"}
    bodies = make_bodies(400)
    runs: list[dict[str, Any]] = []
    try:
        servers.append(Server("this tree", PORT, decision_server(env, PORT, workers=1)))
        if args.baseline:
            port = PORT + 1
            base = decision_server(env, port, workers=1, root=args.baseline.resolve())
            servers.append(Server("baseline", port, base))
        for server in servers:
            workers = children_of(server.process.pid)
            assert len(workers) == 1, workers
            server.worker = workers[0]
        postmaster = postmaster_pid(db_url)
        if args.hold:
            if args.hold != "rule":
                strategy_switch(sys.executable, env, args.hold)
            steady_run("127.0.0.1", PORT, PATH, headers, bodies, rate=100, seconds=3)
            hold = {
                "worker": servers[0].worker,
                "postmaster": postmaster,
                "secret": secret,
                "port": PORT,
            }
            print(json.dumps(hold), flush=True)
            signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
            return 0
        current = "rule"
        for strategy in args.strategies.split(","):
            if strategy != current:
                strategy_switch(sys.executable, env, strategy)
                current = strategy
            for server in servers:  # warm-up: the new snapshot, connections
                steady_run("127.0.0.1", server.port, PATH, headers, bodies, rate=100, seconds=3)
            for i in range(args.runs):
                order = servers if i % 2 == 0 else servers[::-1]
                for server in order:
                    run = measure(server, postmaster, headers, bodies, args.rate, args.seconds)
                    run.update(strategy=strategy, server=server.name)
                    runs.append(run)
                    print(json.dumps(run), flush=True)
        summary: dict[str, Any] = {}
        for server in servers:
            mine = [r for r in runs if r["server"] == server.name]
            by_strategy = {
                strategy: {
                    key: _spread([r[key] for r in mine if r["strategy"] == strategy])
                    for key in ("worker_cpu_ms_per_req", "postgres_cpu_ms_per_req")
                }
                for strategy in dict.fromkeys(r["strategy"] for r in mine)
            }
            summary[server.name] = by_strategy
        print(json.dumps({"summary": summary}), flush=True)
    finally:
        for server in servers:
            if server.process.poll() is None:
                os.killpg(server.process.pid, signal.SIGTERM)
                server.process.wait(20)
        shutil.rmtree(var_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
