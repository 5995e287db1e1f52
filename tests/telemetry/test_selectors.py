"""Selector helpers: percentiles from fixed buckets, Pareto frontier, router statistics."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from telemetry.selectors import (
    attention_items,
    budget_burns,
    latency_bucket_counts,
    latency_percentile,
    model_stats_recent,
    pareto_front,
)


def test_percentile_interpolates_inside_the_bucket() -> None:
    counts = latency_bucket_counts([10] * 50 + [60] * 50)  # buckets [0,25) and [50,75)
    assert latency_percentile(counts, 0.5) == pytest.approx(25.0)
    assert 50 <= (latency_percentile(counts, 0.95) or 0) < 75
    assert latency_percentile([0] * len(counts), 0.5) is None


def test_percentile_stays_in_the_bucket_of_the_exact_value() -> None:
    values = [37, 120, 480, 910, 1300, 2200, 2900, 6400, 12_000, 70_000] * 13
    counts = latency_bucket_counts(values)
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = sorted(values)[int(q * len(values)) - 1]
        estimate = latency_percentile(counts, q)
        assert estimate is not None
        assert latency_bucket_counts([int(estimate)]) == latency_bucket_counts([exact]) or (
            estimate <= exact * 1.6
        )


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = pd.DataFrame(
        {
            "name": ["cheap-bad", "cheap-good", "mid", "dear-best", "dear-worse"],
            "cost": [1.0, 1.0, 5.0, 20.0, 30.0],
            "quality": [0.7, 0.9, 0.85, 0.97, 0.95],
        }
    )
    front = pareto_front(points, cost="cost", quality="quality")
    assert list(front["name"]) == ["cheap-good", "dear-best"]


def test_model_stats_recent_shape(demo_world: dict[str, Any]) -> None:
    stats = model_stats_recent()
    assert set(stats) == {"latency", "success"}
    assert stats["latency"], "the last hour of demo traffic has outcomes"
    for model, entry in stats["latency"].items():
        assert isinstance(model, str) and entry["p95_ms"] > 0 and entry["requests"] > 0
    for (model, task_class), rate in stats["success"].items():
        assert isinstance(model, str) and isinstance(task_class, str) and 0 <= rate <= 1


def test_budget_burns_project_exhaustion(demo_world: dict[str, Any]) -> None:
    burns = {b.name: b for b in budget_burns()}
    assert set(burns) >= {"analytics-monthly", "global-daily"}
    analytics = burns["analytics-monthly"]
    assert analytics.spent_usd > 0 and analytics.rate_per_day > 0
    assert analytics.cumulative[-1] == pytest.approx(analytics.spent_usd, rel=0.05)
    assert analytics.times[0] == analytics.period_start


def test_attention_names_escalations_budgets_and_drift(demo_world: dict[str, Any]) -> None:
    from telemetry.selectors import Attention, DashboardFilters, attention_items, rollup_frame

    frame = rollup_frame(DashboardFilters.for_range("7d"))
    items = attention_items(frame, budget_burns(), min_outcomes=5)
    assert all(isinstance(i, Attention) for i in items)
    levels = [i.level for i in items]
    assert levels == sorted(levels, key=["bad", "warn", "info"].index)
    frame.loc[frame["task_class"] == "sql-generation", "escalations"] = frame["outcomes"]
    flagged = attention_items(frame, [], min_outcomes=5)
    assert any(i.task_class == "sql-generation" and "stronger tier" in i.text for i in flagged)


@pytest.mark.parametrize("period", ["month", "day"])
def test_budget_burns_of_a_budget_without_traffic(db: Any, period: str) -> None:
    """A fresh install, or a team that has not called yet this period: nothing to chart."""
    from decimal import Decimal

    from controlplane import services
    from controlplane.models import Team

    team = Team.objects.create(slug="quiet", name="Quiet")
    services.budget_create(
        name="quiet", scope="team", team=team, period=period, limit_usd=Decimal("10")
    )
    (burn,) = budget_burns()
    assert burn.spent_usd == 0.0 and burn.rate_per_day == 0.0 and burn.exhaustion_at is None
    assert burn.times == [burn.period_start] and burn.cumulative == [0.0]


def test_the_escalation_band_comes_from_settings(settings: Any) -> None:
    """Judged (attention items) and drawn (guide lines, bar colours, chart help) alike."""
    from telemetry import figures
    from telemetry.views import _charts

    frame = pd.DataFrame(
        {
            "bucket": [pd.Timestamp("2026-11-01", tz="UTC")],
            "task_class": ["triage"],
            "model": ["m"],
            "tier": [2],
            "decisions": [100.0],
            "outcomes": [100.0],
            "escalations": [10.0],
            "quality_sum": [0.0],
            "quality_count": [0.0],
        }
    )

    def judged() -> list[str]:
        return [item.level for item in attention_items(frame, [], min_outcomes=1)]

    def drawn() -> list[float]:
        shapes = figures.escalation_figure(frame)["layout"]["shapes"]
        return sorted(shape["x0"] for shape in shapes)

    assert judged() == [] and drawn() == [2.0, 15.0]  # 10 % is inside the default band
    settings.SWITCHYARD_ESCALATION_UPGRADE_RATE = 0.05
    assert judged() == ["bad"] and drawn() == [2.0, 5.0]
    settings.SWITCHYARD_ESCALATION_UPGRADE_RATE = 0.5
    settings.SWITCHYARD_ESCALATION_DOWNGRADE_RATE = 0.2
    assert judged() == ["info"] and drawn() == [20.0, 50.0]
    help_text = next(c.help for c in _charts("overview") if c.name == "escalation")
    assert "Below 20 %" in help_text and "Above 50 %" in help_text


def test_a_trickle_of_spend_projects_no_exhaustion_instead_of_crashing(db: Any) -> None:
    """A tiny spend against a large limit projects exhaustion past datetime's range (the
    landing page answered 500 on a fresh install after one cheap local decision)."""
    from decimal import Decimal

    from django.utils import timezone

    from controlplane import services
    from controlplane.models import BudgetSpend

    b = services.budget_create(
        name="vast", scope="global", period="day", limit_usd=Decimal("1000000000")
    )
    BudgetSpend.objects.create(
        budget=b, period_start=b.period_start(timezone.now()), spent_usd=Decimal("0.00000004")
    )
    (burn,) = budget_burns()
    assert burn.rate_per_day > 0 and burn.exhaustion_at is None
