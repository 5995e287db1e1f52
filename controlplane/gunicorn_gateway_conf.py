"""gunicorn settings of the gateway (ASGI): uvicorn workers (uvloop, httptools), one per
core; the hooks of the web server's settings (Prometheus cleanup, GC tuning)."""

from __future__ import annotations

import os

from controlplane.gunicorn_conf import child_exit, post_fork

workers = int(os.environ.get("GATEWAY_WORKERS", os.environ.get("WEB_CONCURRENCY", "2")))
worker_class = "uvicorn_worker.UvicornWorker"
timeout = 30
graceful_timeout = 10
keepalive = 5
# Hundreds of streams may be open per worker: let the listen queue hold a burst.
backlog = 2048
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
preload_app = False

__all__ = ["child_exit", "post_fork"]
