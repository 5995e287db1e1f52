"""The calibration page in headless Chromium: the reliability curve is drawn from the
generated demo traffic, and the decision page explains the confidence."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from controlplane.demo import demo_registry_load
from evaluation.selectors import calibration_summary
from telemetry.demo_traffic import demo_traffic_load
from telemetry.models import DecisionRecord
from tests.browser import browser_page, login, roles_ensure, screenshot

pytestmark = pytest.mark.browser


def test_viewer_sees_the_reliability_curve(live_server: Any) -> None:
    roles_ensure()
    demo_registry_load()
    demo_traffic_load(decisions=1200, days=3, seed=3, processes=1)
    viewer = User.objects.create_user("vera", password="viewer-pass-123")
    viewer.groups.add(Group.objects.get(name="Viewer"))
    overall = calibration_summary(days=14)[0]

    with browser_page() as page:
        login(page, live_server.url, "vera", "viewer-pass-123")
        page.click("nav >> text=Calibration")
        page.wait_for_selector("#chart-reliability .main-svg")  # Plotly drew the curve
        assert page.inner_text("[data-testid=graded]") == str(overall.n)
        assert page.inner_text("[data-testid=brier]") == f"{overall.brier:.4f}"
        screenshot(page, "evaluation-calibration")
        decision = DecisionRecord.objects.order_by("-created_at").first()
        assert decision is not None
        page.goto(f"{live_server.url}/decisions/{decision.id}/")
        shown = page.inner_text("[data-testid=confidence]")
        assert shown == f"confidence {decision.confidence:.2f}"
        assert not page.failed_requests  # type: ignore[attr-defined]


def test_task_class_page_draws_the_learned_routers_curves(live_server: Any) -> None:
    """A class routed by an approved learned router: its page shows the router, its held-out
    metrics, its reliability curve and its cost–quality curve with the threshold marked."""
    from datetime import timedelta
    from decimal import Decimal

    from evaluation import services
    from evaluation.services.learned import learned_router_propose, learned_router_train
    from evaluation.workload import workload_items
    from tests import factories
    from tests.evaluation.test_learned import CLASS, _graded_decisions

    roles_ensure()
    local = factories.model_create(slug="small-local", tier=1, locality="local")
    mid = factories.model_create(
        slug="mid-cloud", tier=2, locality="cloud", input_usd_per_mtok="0.60",
        output_usd_per_mtok="1.20",
    )  # fmt: skip
    big = factories.model_create(
        slug="big-cloud", tier=3, locality="cloud", input_usd_per_mtok="5.00",
        output_usd_per_mtok="15.00",
    )  # fmt: skip
    reasoning = factories.task_class_create(
        slug=CLASS, quality_target=Decimal("0.85"), prompt_retention_days=30
    )
    factories.routing_table_create({reasoning: (big, ["mid-cloud", "small-local"])})
    items = list(workload_items(CLASS))
    for offset, model in enumerate((local, mid, big)):
        chosen = items[offset * 100 :] + items[: offset * 100]
        _graded_decisions(model, chosen[:300], timedelta(days=1 + offset))
    router = learned_router_train(reasoning, threshold=0.8)
    assert router is not None and len(router.metrics["curve"]) == 51
    proposal = learned_router_propose(router)
    assert proposal is not None
    services.proposal_approve(proposal=proposal, user=factories.user_create("Reviewer"))
    viewer = User.objects.create_user("vera", password="viewer-pass-123")
    viewer.groups.add(Group.objects.get(name="Viewer"))

    with browser_page() as page:
        login(page, live_server.url, "vera", "viewer-pass-123")
        page.goto(f"{live_server.url}/dashboards/task-classes/{CLASS}/")
        strategy = page.inner_text("[data-testid=route-strategy]")
        assert "Strategy: learned" in strategy and "learned router v1" in strategy
        assert "threshold 0.80" in strategy and "small-local" in strategy  # held-out table
        page.wait_for_selector("#learned-reliability .main-svg")  # Plotly drew both
        page.wait_for_selector("#learned-cost-quality .main-svg")
        legend = page.text_content("#learned-cost-quality .legend") or ""
        assert "current threshold 0.80" in legend
        assert "small-local (held out)" in (page.text_content("#learned-reliability") or "")
        screenshot(page, "task-class-learned-router")
        assert not page.failed_requests  # type: ignore[attr-defined]
