"""A Viewer uses the dashboards in headless Chromium: filters swap the charts in place,
a decision's whole path opens, and the filtered CSV downloads."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from controlplane.demo import demo_registry_load, demo_users_load
from telemetry.demo_traffic import demo_traffic_load
from telemetry.models import DecisionRecord
from tests.browser import browser_page, login, roles_ensure, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _mark_dashboard(page: Any) -> None:
    page.evaluate("document.getElementById('dashboard').dataset.stale = '1'")


def _wait_swapped(page: Any) -> None:
    page.wait_for_selector("#dashboard:not([data-stale])")
    page.wait_for_selector("#chart-spend .main-svg")


def test_viewer_filters_the_overview_opens_a_decision_and_downloads_csv(
    live_server: Any,
) -> None:
    roles_ensure()
    demo_registry_load()
    demo_users_load()
    demo_traffic_load(decisions=1500, days=3, seed=5, processes=1)

    with browser_page() as page:
        login(page, live_server.url, "viewer", "switchyard-viewer")
        assert page.url.rstrip("/") == live_server.url  # the overview is the landing page
        page.wait_for_selector("#chart-spend .main-svg")  # Plotly drew the charts
        page.wait_for_selector("#chart-pareto .main-svg")
        page.wait_for_selector("#budgets .main-svg")
        spend_30d = page.inner_text("[data-kpi=spend]")
        screenshot(page, "dashboards-overview")

        # Time range: htmx swaps #dashboard, the URL follows, the numbers change.
        _mark_dashboard(page)
        page.click("label.range:has-text('24h')")
        _wait_swapped(page)
        assert "range=24h" in page.url
        assert "buckets of 1 hour" in page.inner_text("[data-testid=period]")
        assert page.inner_text("[data-kpi=spend]") != spend_30d

        # A filter: only the analytics team's traffic.
        figure_before = page.inner_text("#fig-volume")
        _mark_dashboard(page)
        page.select_option("select[name=team]", "analytics")
        _wait_swapped(page)
        assert "team=analytics" in page.url and "range=24h" in page.url
        assert page.inner_text("#fig-volume") != figure_before
        classes = page.text_content("#chart-escalation .main-svg") or ""
        assert "ticket-triage" not in classes and "sql-generation" in classes
        screenshot(page, "dashboards-overview-filtered")

        # The spend chart's stack switch swaps only that chart.
        page.click("#chart-spend nav >> text=tier")
        page.wait_for_selector("#chart-spend .switch a.on:has-text('tier')")
        page.wait_for_selector("#chart-spend .main-svg")
        assert "tier " in (page.text_content("#chart-spend .legend") or "")

        # Explorer → a decision's whole path.
        page.click("nav >> text=Decisions")
        page.wait_for_selector("table.decisions tbody tr")
        screenshot(page, "dashboards-explorer")
        page.click("table.decisions tbody tr:first-child td:first-child a")
        page.wait_for_selector("text=4 · Candidates")
        assert "Attempts" in page.inner_text("main") and "Policy gate" in page.inner_text("main")
        screenshot(page, "dashboards-decision")

        # The filtered CSV.
        page.goto(f"{live_server.url}/decisions/?range=7d&team=analytics")
        with page.expect_download() as download_info:
            page.click("text=Download CSV")
        content = Path(download_info.value.path()).read_text(encoding="utf-8")
        rows = list(csv.reader(io.StringIO(content)))
        assert rows[0][0] == "decision_id"
        assert len(rows) - 1 == DecisionRecord.objects.filter(team="analytics").count() > 0

        # A missing resource shows as a console error too; failed_requests (which ignores
        # the favicon) says which, so only script errors are checked here.
        errors = [e for e in page.console_errors if "Failed to load resource" not in e]  # type: ignore[attr-defined]
        assert not errors, errors
        assert not page.failed_requests, page.failed_requests  # type: ignore[attr-defined]


def test_a_fresh_install_first_screen_says_what_to_do_next(live_server: Any) -> None:
    from tests.factories import user_create

    roles_ensure()
    user_create("Operator", username="first-operator")
    with browser_page() as page:
        login(page, live_server.url, "first-operator", "test-password-123")
        assert page.url.rstrip("/") == live_server.url
        panel = page.locator("[data-testid=getting-started]")
        panel.wait_for()
        text = panel.inner_text()
        assert "Create an API key" in text and f"curl -s {live_server.url}/api/v1/decisions" in text
        for href in ("/registry/keys/", "/api/docs/", "/proposals/"):  # an Operator's links
            assert panel.locator(f"a[href='{href}']").count() == 1, href
        page.wait_for_selector("#chart-spend .main-svg")  # the empty charts still draw
        screenshot(page, "fresh-install-overview")
        errors = [e for e in page.console_errors if "Failed to load resource" not in e]  # type: ignore[attr-defined]
        assert not errors, errors
        assert not page.failed_requests, page.failed_requests  # type: ignore[attr-defined]
