"""Every chart is a valid Plotly figure built from the rollup frame (empty or not)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import pytest
from django.utils import timezone

from telemetry import figures
from telemetry.selectors import (
    DashboardFilters,
    budget_burns,
    escalation_frame,
    rollup_frame,
    routing_changes,
)
from telemetry.views import _charts


def _validate(spec: figures.Figure) -> go.Figure:
    return go.Figure(spec)  # raises on any unknown or invalid property


@pytest.mark.parametrize("focus", ["overview", "task_class", "model"])
def test_every_chart_is_a_valid_plotly_figure(demo_world: dict[str, Any], focus: str) -> None:
    filters = DashboardFilters.for_range("7d")
    frame = rollup_frame(filters)
    changes = routing_changes(start=filters.start - timezone.timedelta(days=30), end=filters.end)
    assert not frame.empty
    routed = escalation_frame(filters, routed_model="llama-3.1-8b-local")
    for stack in figures.STACKS:
        for chart in _charts(focus):
            context = {"stack": stack, "changes": changes, "routed": routed}
            fig = _validate(chart.build(frame, context))
            assert fig.data, chart.name
    for burn in budget_burns():
        assert _validate(figures.budget_figure(burn, now=timezone.now())).data


def test_charts_of_an_empty_range_say_so(demo_world: dict[str, Any]) -> None:
    filters = DashboardFilters.for_range("7d", team="nobody")
    frame = rollup_frame(filters)
    assert frame.empty
    for chart in _charts("model"):
        context = {"stack": "model", "changes": [], "routed": frame}
        fig = _validate(chart.build(frame, context))
        assert "No " in fig.layout.annotations[0].text


def test_spend_stacks_and_routing_changes(demo_world: dict[str, Any]) -> None:
    filters = DashboardFilters.for_range("30d")
    frame = rollup_frame(filters)
    changes = routing_changes(start=filters.start, end=filters.end)
    assert [c.number for c in changes] == [2]  # v2 went live 16 days ago, v1 31 days ago
    by_tier = figures.spend_figure(frame, stack="tier")
    assert [t["name"] for t in by_tier["data"]] == sorted(t["name"] for t in by_tier["data"])
    total = sum(sum(t["y"]) for t in by_tier["data"])
    assert total == pytest.approx(frame["cost_usd"].sum(), rel=1e-3)
    fake = routing_changes(start=filters.start - timezone.timedelta(days=40), end=filters.end)
    marked = figures.spend_figure(frame, stack="model", changes=fake)
    assert [a["text"] for a in marked["layout"]["annotations"]] == ["table v1", "table v2"]


def test_figure_json_is_safe_inside_a_script_tag() -> None:
    spec = figures._empty("</script><script>alert(1)</script>")
    assert "</script>" not in figures.figure_json(spec)
