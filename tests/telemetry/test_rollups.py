"""Rollups equal what the raw rows say, however they were built (rebuild or refresh)."""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, connections
from django.utils import timezone

from controlplane.models import ModelEndpoint
from telemetry.models import (
    LATENCY_BUCKET_FIELDS,
    DecisionOutcome,
    DecisionRecord,
    HourlyRollup,
)
from telemetry.rollups import rollups_rebuild, rollups_refresh
from telemetry.selectors import (
    DashboardFilters,
    headline,
    latency_bucket_counts,
    latency_percentile,
    rollup_frame,
)
from telemetry.services import OutcomeInput, outcome_report

KEY = ("hour", "team", "application", "task_class", "model", "tier", "routed_model")


def raw_rollups() -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rollup rows computed in Python straight from decisions and outcomes."""
    baseline = ModelEndpoint.objects.get(slug="gpt-4o")
    price = baseline.prices.order_by("-effective_from").first()
    assert price is not None
    outcomes = {o.decision_id: o for o in DecisionOutcome.objects.all()}
    rows: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    latencies: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for d in DecisionRecord.objects.all().only(
        "id", "created_at", "team", "application", "task_class", "model", "tier"
    ):
        o = outcomes.get(d.id)
        key = (
            d.created_at.replace(minute=0, second=0, microsecond=0),
            d.team,
            d.application,
            d.task_class,
            o.final_model if o else d.model,
            o.final_tier if o else d.tier,
            d.model,
        )
        row = rows[key]
        row["decisions"] += 1
        if o is None:
            continue
        row["outcomes"] += 1
        row["successes"] += o.final_status == "ok"
        row["escalations"] += o.escalated
        row["input_tokens"] += o.input_tokens
        row["output_tokens"] += o.output_tokens
        row["cost_usd"] += o.cost_usd
        row["baseline_cost_usd"] += price.cost_usd(o.input_tokens, o.output_tokens)
        if o.quality_score is not None:
            row["quality_count"] += 1
            row["quality_sum"] += o.quality_score
        row["latency_sum_ms"] += o.latency_ms
        latencies[key].append(o.latency_ms)
    for key, values in latencies.items():
        for name, count in zip(LATENCY_BUCKET_FIELDS, latency_bucket_counts(values), strict=True):
            rows[key][name] = count
    return rows


def stored_rollups() -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(getattr(r, k) for k in KEY): r.__dict__ for r in HourlyRollup.objects.all()}


def assert_daily_match_hourly() -> None:
    from django.db.models import Sum

    from telemetry.models import DailyRollup

    sums = {name: Sum(name) for name in ("decisions", "outcomes", "cost_usd", "lat_b05")}
    hourly = {
        (r["hour__date"], r["task_class"], r["model"]): r
        for r in HourlyRollup.objects.values("hour__date", "task_class", "model").annotate(**sums)
    }
    daily = {
        (r["day__date"], r["task_class"], r["model"]): r
        for r in DailyRollup.objects.values("day__date", "task_class", "model").annotate(**sums)
    }
    assert hourly.keys() == daily.keys()
    for key, row in hourly.items():
        assert all(row[name] == daily[key][name] for name in sums), key


def assert_rollups_match_raw() -> None:
    assert_daily_match_hourly()
    raw, stored = raw_rollups(), stored_rollups()
    assert set(raw) == set(stored)
    for key, expected in raw.items():
        got = stored[key]
        for name, value in expected.items():
            if name in {"cost_usd", "baseline_cost_usd"}:
                assert abs(Decimal(got[name]) - value) < Decimal("0.000001"), (key, name)
            elif name == "quality_sum":
                assert got[name] == pytest.approx(value), (key, name)
            else:
                assert got[name] == value, (key, name)


def test_rebuilt_rollups_equal_the_raw_rows(demo_world: dict[str, Any]) -> None:
    assert HourlyRollup.objects.exists()
    assert_rollups_match_raw()


def test_headline_from_rollups_equals_raw_computation(demo_world: dict[str, Any]) -> None:
    filters = DashboardFilters.for_range("7d")
    numbers = headline(rollup_frame(filters))
    outcomes = list(DecisionOutcome.objects.all())
    decisions = list(DecisionRecord.objects.all().only("id", "tier"))
    by_id = {o.decision_id: o for o in outcomes}
    spend = sum(float(o.cost_usd) for o in outcomes)
    tier1 = sum(1 for d in decisions if (by_id[d.id].final_tier if d.id in by_id else d.tier) == 1)
    assert numbers.decisions == len(decisions)
    assert numbers.spend_usd == pytest.approx(spend, rel=1e-9)
    assert numbers.tier1_share == pytest.approx(tier1 / len(decisions))
    assert numbers.escalation_rate == pytest.approx(
        sum(o.escalated for o in outcomes) / len(outcomes)
    )
    raw_p95 = latency_percentile(latency_bucket_counts([o.latency_ms for o in outcomes]), 0.95)
    assert numbers.p95_latency_ms == pytest.approx(raw_p95)
    assert numbers.savings_usd > 0 and 0 < (numbers.savings_pct or 0) < 1


def test_filtered_frame_equals_raw_rows_of_that_slice(demo_world: dict[str, Any]) -> None:
    filters = DashboardFilters.for_range("7d", task_class="ticket-triage", team="support")
    frame = rollup_frame(filters)
    raw = DecisionRecord.objects.filter(task_class="ticket-triage", team="support").count()
    assert frame["decisions"].sum() == raw > 0
    assert set(frame["task_class"]) == {"ticket-triage"}


def _new_decision_with_outcome(template: DecisionRecord, minutes_ago: int) -> DecisionRecord:
    from telemetry.ids import uuid7, uuid7_time

    decision_id = uuid7(int((timezone.now() - timedelta(minutes=minutes_ago)).timestamp() * 1000))
    fields = {f.attname: getattr(template, f.attname) for f in DecisionRecord._meta.fields}
    fields.update(id=decision_id, created_at=uuid7_time(decision_id), request_id="")
    record = DecisionRecord.objects.create(**fields)
    outcome_report(
        OutcomeInput(
            decision=record,
            final_status="ok",
            attempts=[
                {
                    "model": template.model,
                    "status": "ok",
                    "latency_ms": 420,
                    "input_tokens": 100,
                    "output_tokens": 20,
                }
            ],
        )
    )
    return record


def test_refresh_picks_up_new_and_re_reported_outcomes_without_double_counting(
    demo_world: dict[str, Any],
) -> None:
    template = DecisionRecord.objects.order_by("-created_at").first()
    assert template is not None
    rollups_refresh()  # claims the watermark left by the rebuild
    fresh = _new_decision_with_outcome(template, minutes_ago=1)
    # A re-report that adds an attempt (charged attempts are immutable) moves its
    # reported_at and changes its numbers.
    outcome_report(
        OutcomeInput(
            decision=fresh,
            final_status="error",
            attempts=[
                {
                    "model": template.model,
                    "status": "ok",
                    "latency_ms": 420,
                    "input_tokens": 100,
                    "output_tokens": 20,
                },
                {
                    "model": "gpt-4o",
                    "status": "error",
                    "latency_ms": 900,
                    "input_tokens": 100,
                    "output_tokens": 0,
                },
            ],
        )
    )
    result = rollups_refresh()
    assert result["claimed"] and result["hours"] >= 1
    rollups_refresh()  # a second run changes nothing
    assert_rollups_match_raw()


@pytest.mark.django_db(transaction=True)
def test_concurrent_refreshes_never_double_count(transactional_db: Any) -> None:
    from controlplane.demo import demo_registry_load

    demo_registry_load()
    from telemetry.demo_traffic import demo_traffic_load

    demo_traffic_load(decisions=600, days=1, seed=3, processes=1)
    template = DecisionRecord.objects.order_by("-created_at").first()
    assert template is not None
    for minutes in (1, 2, 3):
        _new_decision_with_outcome(template, minutes_ago=minutes)
    barrier = threading.Barrier(3)
    results: list[dict[str, Any]] = []

    def refresh() -> None:
        try:
            barrier.wait()
            results.append(rollups_refresh())
        finally:
            connections.close_all()

    threads = [threading.Thread(target=refresh) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    assert_rollups_match_raw()
    with connection.cursor() as cursor:
        cursor.execute("SELECT sum(decisions) FROM telemetry_rollup_hourly")
        assert cursor.fetchone()[0] == DecisionRecord.objects.count()


def test_rebuild_is_idempotent(demo_world: dict[str, Any]) -> None:
    before = stored_rollups()
    rollups_rebuild()
    after = stored_rollups()
    assert set(before) == set(after)
    assert all(before[k]["decisions"] == after[k]["decisions"] for k in before)


def test_rebuild_command_and_refresh_task(demo_world: dict[str, Any]) -> None:
    from io import StringIO

    from django.core.management import call_command

    from telemetry.tasks import rollups_refresh_task

    HourlyRollup.objects.all().delete()
    out = StringIO()
    call_command("rollups_rebuild", stdout=out)
    assert "rollups rebuilt" in out.getvalue()
    assert_rollups_match_raw()
    assert rollups_refresh_task.apply().get()["claimed"] is True


def test_daily_buckets_read_daily_rollups_with_the_same_result(
    demo_world: dict[str, Any],
) -> None:
    filters = DashboardFilters.for_range("30d")
    daily, hourly = rollup_frame(filters), rollup_frame(filters, daily=False)
    columns = ["decisions", "outcomes", "cost_usd", "baseline_cost_usd", *LATENCY_BUCKET_FIELDS]
    left = daily.groupby(["bucket", "task_class", "model"])[columns].sum()
    right = hourly.groupby(["bucket", "task_class", "model"])[columns].sum()
    assert left.index.equals(right.index)
    assert (left - right).abs().to_numpy().max() < 1e-6
    from telemetry.selectors import rollup_rows_sql

    sql, _ = rollup_rows_sql(filters, daily=True)
    assert "telemetry_rollup_daily" in sql and sql.count("UNION ALL") == 2
