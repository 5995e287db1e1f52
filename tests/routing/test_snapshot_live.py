"""Key revocation across processes: real gunicorn (2 workers, each with its own key cache),
real HTTP, real PostgreSQL.

Each worker caches API keys in memory and clears the cache when its refresher sees the
registry generation move (routing/snapshot.py). These tests revoke a key through the
service in another process (as the registry page does) and check every worker refuses it;
and they replay the race in a worker: a key lookup that read the key before the revocation
committed and finished after the worker had cleared its cache must not leave the revoked
key cached. The lookup is held between its two queries by a table lock on the
application's acts-for-teams table (read by the lookup's second query only), and the clear
is observed, not waited for: a second, cached key's request starts blocking on that lock
once the worker has dropped its cache.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from tests.live_server import LiveServer, live_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

THROUGH = "controlplane_application_acts_for_teams"
_KEYS_CREATE = (
    "from controlplane import services\n"
    "from controlplane.models import Application\n"
    "app = Application.objects.get(slug='keys-client')\n"
    "for _ in range(4):\n"
    "    key, secret = services.api_key_create(application=app, scopes=['decide'])\n"
    "    print('KEY', key.prefix, secret)\n"
)
_KEY_REVOKE = (
    "from controlplane import services\n"
    "from controlplane.models import ApiKey\n"
    "services.api_key_revoke(key=ApiKey.objects.get(prefix={prefix!r}))\n"
)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[LiveServer, list[tuple[str, str]]]]:
    keys: list[tuple[str, str]] = []

    def create_keys(env: dict[str, str]) -> None:
        out = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", _KEYS_CREATE],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for line in out.splitlines():
            if line.startswith("KEY "):
                keys.append((line.split()[1], line.split()[2]))

    with live_server("keys", {"SWITCHYARD_SNAPSHOT_CHECK_S": "0.2"}, create_keys) as started:
        yield started, keys


def _revoke(server: LiveServer, prefix: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", _KEY_REVOKE.format(prefix=prefix)],
        cwd=ROOT,
        env=server.env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def _worker_of(server: LiveServer, client_port: int) -> int | None:
    for pid in server.worker_pids():
        for conn in psutil.Process(pid).net_connections():
            if conn.raddr and conn.raddr.port == client_port:
                return pid
    return None


def _decide_on(server: LiveServer, pid: int, secret: str) -> int:
    """POST a decision on a connection served by worker ``pid``; its status code."""
    for _ in range(200):
        with httpx.Client(base_url=server.url, timeout=60) as client:
            probe = client.get("/readyz")
            port = probe.extensions["network_stream"].get_extra_info("client_addr")[1]
            if _worker_of(server, port) != pid:
                continue
            response = client.post(
                "/api/v1/decisions",
                json={"task_class": "ticket-triage"},
                headers={"Authorization": f"Bearer {secret}"},
            )
            used = response.extensions["network_stream"].get_extra_info("client_addr")[1]
            assert used == port  # the same kept-alive connection, so the same worker
            return response.status_code
    raise AssertionError(f"no connection reached worker {pid}")


def _lock_waiters(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
        [f"%{THROUGH}%"],
    ).fetchone()
    assert row is not None
    return int(row[0])


def _until(condition: Any, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_revoked_key_is_refused_by_every_worker(
    server: tuple[LiveServer, list[tuple[str, str]]],
) -> None:
    live, keys = server
    prefix, secret = keys[0]
    workers = live.worker_pids()
    assert len(workers) == 2
    for pid in workers:  # both workers have the key in their cache
        assert _decide_on(live, pid, secret) == 201
    _revoke(live, prefix)
    for pid in workers:
        _until(lambda pid=pid: _decide_on(live, pid, secret) == 401, f"worker {pid} still takes it")
    for pid in workers:
        assert [_decide_on(live, pid, secret) for _ in range(3)] == [401, 401, 401]


def test_a_lookup_racing_the_revocation_leaves_no_revoked_key_in_a_worker(
    server: tuple[LiveServer, list[tuple[str, str]]],
) -> None:
    live, keys = server
    (prefix, racing), (_, witness) = keys[1], keys[2]
    worker = live.worker_pids()[0]
    assert _decide_on(live, worker, witness) == 201  # cached in this worker
    statuses: dict[str, list[int]] = {"racing": [], "witness": []}
    stop = threading.Event()

    def racing_request() -> None:
        statuses["racing"].append(_decide_on(live, worker, racing))

    def witness_requests() -> None:  # answered from the cache until the worker clears it
        while not stop.is_set():
            statuses["witness"].append(_decide_on(live, worker, witness))

    with psycopg.connect(live.db_url) as lock, psycopg.connect(live.db_url, autocommit=True) as q:
        lock.execute(f"LOCK TABLE {THROUGH} IN ACCESS EXCLUSIVE MODE")
        racer = threading.Thread(target=racing_request, daemon=True)
        racer.start()
        # The racing lookup has read the key row (not revoked yet) and waits on the lock.
        _until(lambda: _lock_waiters(q) == 1, "the racing lookup never reached the lock")
        _revoke(live, prefix)  # commits, then bumps the generation
        watcher = threading.Thread(target=witness_requests, daemon=True)
        watcher.start()
        # The worker has cleared its key cache: the witness key is read again, and waits too.
        _until(lambda: _lock_waiters(q) == 2, "the worker never cleared its key cache")
        stop.set()
        lock.rollback()  # release: both lookups finish and try to cache what they read
        racer.join(60)
        watcher.join(60)
    assert statuses["racing"] == [201]  # it read the key before the revocation committed
    assert statuses["witness"] and set(statuses["witness"]) == {201}
    # What the racing lookup read must not have stayed cached past the worker's clear.
    assert [_decide_on(live, worker, racing) for _ in range(3)] == [401, 401, 401]
    assert _decide_on(live, live.worker_pids()[1], racing) == 401
