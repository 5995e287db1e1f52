"""``python -m controlplane.stack services``: the embedded servers stop with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_the_embedded_servers(tmp_path: Path, stop: signal.Signals) -> None:
    pg, redis = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL"}}
    env.update(
        EMBEDDED_PG_PORT=str(pg), EMBEDDED_REDIS_PORT=str(redis), SWITCHYARD_VAR_DIR=str(tmp_path)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane.stack", "services"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "services up" in line:
                break
        assert _open(pg) and _open(redis)
        proc.send_signal(stop)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while (_open(pg) or _open(redis)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _open(pg), "embedded PostgreSQL left running"
        assert not _open(redis), "embedded Redis left running"
    finally:
        if proc.poll() is None:
            proc.kill()
