"""A throwaway Switchyard for tests that need the real server: its own embedded PostgreSQL
(so a test may kill, restart or fault it), migrated, the demo registry, one API key, and
gunicorn with 2 workers and production settings on a free port; with ``gateway=True`` also
the OpenAI-compatible gateway (gunicorn with 2 uvicorn workers) on another."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from controlplane.stack import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    db_url: str
    secret: str
    postgres: EmbeddedPostgres
    gunicorn: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)
    gateway_url: str = ""

    def worker_pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.gunicorn.pid).children()]


@contextmanager
def live_server(
    prefix: str,
    env_extra: dict[str, str],
    before_serve: Callable[[dict[str, str]], None] | None = None,
    *,
    gateway: bool = False,
) -> Iterator[LiveServer]:
    """Start it, yield it, and remove every trace afterwards. ``before_serve(env)`` runs once
    the database is migrated and loaded, before gunicorn starts (``env["DATABASE_URL"]``)."""
    # Not under pytest's own temp root: pytest resets that to mode 0700, which would lock
    # out the PostgreSQL system user when another pytest session starts meanwhile.
    base = Path(tempfile.mkdtemp(prefix=f"switchyard-{prefix}-"))
    web_port = free_port()
    postgres = EmbeddedPostgres(port=free_port(), pgdata=base / "pgdata")
    postgres.start()
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": postgres.database_url,
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "DJANGO_DEBUG": "0",
            "DJANGO_HTTPS": "0",
            "SWITCHYARD_VAR_DIR": str(base / "var"),
            "LOG_LEVEL": "WARNING",
            **env_extra,
        }
    )
    gunicorn: subprocess.Popen[bytes] | None = None
    gateway_proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        subprocess.run(
            [PY, "manage.py", "demo_load", "--registry-only"],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        out = subprocess.run(
            [PY, "manage.py", "create_api_key", f"{prefix}-client"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        if before_serve is not None:
            before_serve(env)
        gunicorn = subprocess.Popen(
            [
                str(Path(PY).parent / "gunicorn"),
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
        gateway_url = ""
        if gateway:
            gateway_port = free_port()
            gateway_url = f"http://127.0.0.1:{gateway_port}"
            gateway_proc = subprocess.Popen(
                [
                    str(Path(PY).parent / "gunicorn"),
                    "controlplane.asgi:application",
                    "-c",
                    str(ROOT / "controlplane" / "gunicorn_gateway_conf.py"),
                    "--bind",
                    f"127.0.0.1:{gateway_port}",
                    "--workers",
                    "2",
                ],
                cwd=ROOT,
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        server = LiveServer(
            f"http://127.0.0.1:{web_port}",
            postgres.database_url,
            out.strip().splitlines()[-1],
            postgres,
            gunicorn,
            env,
            gateway_url,
        )
        deadline = time.time() + 30
        ready = [f"{server.url}/readyz"] + ([f"{gateway_url}/healthz"] if gateway else [])
        for url in ready:
            while True:
                try:
                    if httpx.get(url, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.time() < deadline, f"{url} did not become ready"
                time.sleep(0.2)
        yield server
    finally:
        if gateway_proc is not None:
            os.killpg(gateway_proc.pid, signal.SIGTERM)
            gateway_proc.wait(20)
        if gunicorn is not None:
            os.killpg(gunicorn.pid, signal.SIGTERM)
            gunicorn.wait(20)
        postgres.stop()
        shutil.rmtree(base, ignore_errors=True)
