"""Prometheus metrics, correct across gunicorn workers (multiprocess mode).

With PROMETHEUS_MULTIPROC_DIR set (``make run`` and the benchmark set it), every worker
writes its samples to files there and /metrics merges them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

DECISIONS = Counter(
    "switchyard_decisions_total",
    "Decisions answered, by task class, tier and strategy",
    ["task_class", "tier", "strategy"],
)
DECISION_SECONDS = Histogram(
    "switchyard_decision_seconds",
    "Time to decide and record one decision (server side)",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
DECISION_ERRORS = Counter(
    "switchyard_decision_errors_total", "Decision requests refused, by error code", ["code"]
)
RECORDING_FAILURES = Counter(
    "switchyard_recording_failures_total",
    "Decisions that could not be stored in time (answered 503, never acknowledged)",
)
ACTIVE_VERSION = Gauge(
    "switchyard_routing_table_version",
    "Active routing table version seen by this process",
    multiprocess_mode="max",
)


def metrics_payload() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
