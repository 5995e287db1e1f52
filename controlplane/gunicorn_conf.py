"""gunicorn settings: one process per core with threads; Prometheus multiprocess cleanup."""

from __future__ import annotations

import os
from typing import Any

# Each worker borrows database connections from a bounded pool (controlplane/settings.py):
# however many threads serve requests, a worker holds at most this many plus its recorder's.
os.environ.setdefault("DATABASE_POOL_SIZE", "8")

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "8"))
worker_class = "gthread"
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
preload_app = False


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_fork(server: Any, worker: Any) -> None:
    import gc
    import sys

    # Objects loaded at start-up never die: keep them out of the cyclic collector's scans,
    # and collect less often, so collections stop showing up as latency spikes.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)

    # Threads of a worker share the GIL; the default 5 ms switch interval shows up directly
    # as tail latency on the decision path (a request thread waiting behind another).
    sys.setswitchinterval(float(os.environ.get("PY_SWITCH_INTERVAL", "0.0005")))
