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
