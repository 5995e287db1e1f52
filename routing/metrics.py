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
LLM_ROUTER_CALLS = Counter(
    "switchyard_llm_router_calls_total",
    "Calls to a class's LLM router, by result (ok, unparsed, timeout, error)",
    ["result"],
)
LLM_ROUTER_SECONDS = Histogram(
    "switchyard_llm_router_seconds",
    "Time the LLM router took to answer (routing/llm_router.py)",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0),
)
ACTIVE_VERSION = Gauge(
    "switchyard_routing_table_version",
    "Active routing table version seen by this process",
    multiprocess_mode="max",
)

# The OpenAI-compatible gateway (routing/gateway.py).
GATEWAY_ATTEMPTS = Counter(
    "switchyard_gateway_attempts_total",
    "Upstream model calls by the gateway, by model and attempt status",
    ["model", "status"],
)
GATEWAY_ESCALATIONS = Counter(
    "switchyard_gateway_escalations_total",
    "Gateway attempts that failed and handed the request to the next fallback",
    ["model"],
)
GATEWAY_UPSTREAM_SECONDS = Histogram(
    "switchyard_gateway_upstream_seconds",
    "One upstream attempt, request to last byte",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)
GATEWAY_TTFT_SECONDS = Histogram(
    "switchyard_gateway_ttft_seconds",
    "Streamed answers: time from the upstream call to the first content chunk",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
)
GATEWAY_OUTCOME_FAILURES = Counter(
    "switchyard_gateway_outcome_failures_total",
    "Gateway outcomes that could not be stored (the holds are released when they expire)",
)


def metrics_payload() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


GATEWAY_CACHE = Counter(
    "switchyard_gateway_answer_cache_total",
    "Answer cache lookups of cacheable gateway calls by result (hit, miss, error)",
    ["result"],
)
CIRCUIT_STATE = Gauge(
    "switchyard_model_circuit_state",
    "Circuit of a model's upstream as this process sees it: 0 closed, 1 half-open, 2 open",
    ["model"],
    multiprocess_mode="livemax",
)
CIRCUIT_OPENED = Counter(
    "switchyard_model_circuit_opened_total",
    "Times a model's circuit opened (consecutive upstream failures or a failed probe)",
    ["model"],
)
GATEWAY_CONDENSED = Counter(
    "switchyard_gateway_condensed_total",
    "Long contexts a local model condensed before a frontier call, by result (ok, failed)",
    ["result"],
)
