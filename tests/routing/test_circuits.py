"""Circuit breakers: the state machine (routing/circuits.py, the clock passed in) and the
engine routing around open circuits (routing/engine.py)."""

from __future__ import annotations

import dataclasses

import pytest

from routing.circuits import Circuit, CircuitPolicy
from routing.engine import NoEligibleModel, TaskClassInfo, decide, snapshot_build
from tests.routing.test_engine import MODELS, ROUTES, TASKS, req

POLICY = CircuitPolicy(failures=3, cooldown_s=30.0, probe_timeout_s=60.0)


def test_consecutive_failures_open_the_circuit_and_a_success_resets_the_count() -> None:
    c = Circuit(POLICY)
    assert not c.failure(0, "HTTP 503") and not c.failure(1, "timeout")
    assert not c.success(2)  # still closed: the count starts again
    assert not c.failure(3, "HTTP 503") and not c.failure(4, "HTTP 503")
    assert c.allow(4.5)
    assert c.failure(5, "connection failed")  # the third in a row opens it
    assert c.current(5) == "open" and c.until == 35 and c.reason == "connection failed"
    assert not c.allow(6) and not c.allow(34.9)


def test_after_the_cooldown_one_probe_at_a_time_decides() -> None:
    c = Circuit(POLICY)
    for t in range(3):
        c.failure(t, "HTTP 500")
    assert c.current(32) == "half_open"
    assert c.allow(32)  # the probe
    assert not c.allow(33)  # everyone else waits for its result
    assert c.failure(34, "HTTP 500")  # the probe failed: open for another cooldown
    assert c.current(34) == "open" and c.until == 64 and not c.allow(50)
    assert c.allow(64)  # the next probe
    assert c.success(65)
    assert c.current(65) == "closed" and c.allow(65) and c.allow(65)


def test_a_probe_that_never_reports_stops_blocking_after_its_timeout() -> None:
    c = Circuit(POLICY)
    for t in range(3):
        c.failure(t, "timeout")
    assert c.allow(40)
    assert not c.allow(99)
    assert c.allow(101)  # the first probe is presumed lost


def test_a_late_failure_of_a_call_started_before_the_circuit_opened_changes_nothing() -> None:
    c = Circuit(POLICY)
    for t in range(3):
        c.failure(t, "timeout")
    until = c.until
    assert not c.failure(10, "timeout")
    assert c.until == until


def _open(*slugs: str) -> dict:
    return {s: dataclasses.replace(m, circuit_open=s in slugs) for s, m in MODELS.items()}


def test_the_engine_routes_around_an_open_circuit() -> None:
    snapshot = snapshot_build(
        version=4, models=_open("frontier"), task_classes=TASKS, routes=ROUTES
    )
    d = decide(req("review"), snapshot)
    assert d.model.slug == "frontier-b"
    assert d.strategy == "fallback"
    assert "circuit open" in d.reason
    assert [c.reason for c in d.candidates if c.model == "frontier"] == ["circuit open"]


def test_every_cloud_model_down_degrades_to_a_local_model_where_the_class_allows_it() -> None:
    models = _open("frontier", "mini")
    strict = snapshot_build(version=4, models=models, task_classes=TASKS, routes=ROUTES)
    with pytest.raises(NoEligibleModel):
        decide(req("cloudonly"), strict)
    tasks = {**TASKS, "cloudonly": TaskClassInfo("cloudonly", default_output_cap=512,
                                                local_when_down=True)}  # fmt: skip
    lenient = snapshot_build(version=4, models=models, task_classes=tasks, routes=ROUTES)
    d = decide(req("cloudonly"), lenient)
    assert d.model.locality == "local" and d.model.status == "active"
    assert d.strategy == "fallback"
    # Personal data is never sent to a cloud model, circuits or not.
    d = decide(req("cloudonly", pii_found=("email",)), lenient)
    assert d.model.locality == "local"
