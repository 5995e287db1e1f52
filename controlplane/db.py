"""Database connections of the servers: giving a pooled connection back early.

With DATABASE_POOL_SIZE > 0 (the servers' default, controlplane/gunicorn_conf.py) Django
borrows each thread's connection from a bounded per-process pool and gives it back when the
request ends. A request that reads once and then waits — an idempotency look-up before the
decision waits for its group commit, a gateway job — gives it back as soon as it is done
with it, so a connection is never held idle while hundreds of requests wait."""

from __future__ import annotations

from django.conf import settings
from django.db import connection


def pooled_connection_release() -> None:
    """Give this thread's connection back to the pool now (only when pooled and outside a
    transaction; with persistent connections it stays, as Django would keep it)."""
    if settings.DATABASE_POOL_SIZE and not connection.in_atomic_block:
        connection.close()
