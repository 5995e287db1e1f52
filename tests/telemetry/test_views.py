"""Dashboard pages, htmx partials, the explorer, decision detail and CSV export."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from telemetry.models import DecisionOutcome, DecisionRecord
from tests.factories import user_create

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def viewer(demo_world: dict[str, Any]) -> Client:
    client = Client()
    client.force_login(user_create("Viewer"))
    return client


def test_signed_out_visitors_go_to_login(demo_world: dict[str, Any], client: Client) -> None:
    for url in ("/", "/decisions/", "/decisions/export.csv", "/dashboards/models/gpt-4o/"):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"], url


def test_people_without_a_role_are_refused(demo_world: dict[str, Any]) -> None:
    client = Client()
    client.force_login(user_create(None))
    assert client.get("/").status_code == 403


def test_overview_shows_headline_numbers_and_every_chart(viewer: Client) -> None:
    response = viewer.get("/?range=7d")
    assert response.status_code == 200
    html = response.content.decode()
    for kpi in ("spend", "savings", "tier1", "escalation", "p95"):
        assert f'data-kpi="{kpi}"' in html
    for chart in (
        "spend",
        "savings",
        "tiers",
        "escalation",
        "latency",
        "quality",
        "trend",
        "qpd",
        "pareto",
        "volume",
    ):
        assert f'id="chart-{chart}"' in html and f'id="fig-{chart}"' in html
    assert 'hx-trigger="every 30s"' in html
    assert 'id="budgets"' in html and "analytics-monthly" in html


def test_filter_change_returns_only_the_dashboard_partial(viewer: Client) -> None:
    response = viewer.get("/?range=24h&team=support", HTTP_HX_TARGET="dashboard", **HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="dashboard"') and "<html" not in html
    assert "team=support" in html  # the 30 s refresh keeps the filters


def test_spend_stack_switch_returns_one_chart(viewer: Client) -> None:
    response = viewer.get("/?range=7d&stack=tier", HTTP_HX_TARGET="chart-spend", **HTMX)
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card chart-card wide" id="chart-spend"')
    assert '"name":"tier 1"' in html and 'class="on" aria-current="true">tier<' in html
    assert viewer.get("/", HTTP_HX_TARGET="chart-nope", **HTMX).status_code == 404


def test_budget_partial(viewer: Client) -> None:
    response = viewer.get("/", HTTP_HX_TARGET="budgets", **HTMX)
    assert response.content.decode().lstrip().startswith('<section class="card wide" id="budgets"')


def test_invalid_filters_are_a_400_that_names_the_field(viewer: Client) -> None:
    response = viewer.get("/?range=custom&start=yesterday")
    assert response.status_code == 400
    assert "start" in response.content.decode()
    assert viewer.get("/?team=Not A Slug").status_code == 400


def test_custom_range_uses_its_own_bucket(viewer: Client) -> None:
    response = viewer.get("/?range=custom&start=2026-01-01&end=2026-01-02T12:00")
    assert response.status_code == 200
    assert "buckets of 1 hour" in response.content.decode()


def test_task_class_and_model_pages_show_route_and_changes(viewer: Client) -> None:
    page = viewer.get("/dashboards/task-classes/ticket-triage/?range=30d").content.decode()
    assert "Current route" in page and "llama-3.1-8b-local" in page and "Route history" in page
    assert "table v2" in page  # the activation inside the range is marked on the charts
    page = viewer.get("/dashboards/models/gpt-4o-mini/").content.decode()
    assert "sql-generation" in page and "(primary)" in page
    assert viewer.get("/dashboards/models/nope/").status_code == 404


PAGES = [
    "/?range=30d",
    "/dashboards/task-classes/ticket-triage/",
    "/dashboards/models/gpt-4o/",
    "/decisions/",
    "/decisions/?task_class=sql-generation&tier=2",
]


@pytest.mark.parametrize("url", PAGES)
def test_page_query_counts_are_bounded(
    viewer: Client, url: str, django_assert_max_num_queries: Any
) -> None:
    # 17: the overview's "needs attention" list also reads the reviewers' desk (one query).
    with django_assert_max_num_queries(17):
        assert viewer.get(url).status_code == 200


@pytest.mark.parametrize("target", ["dashboard", "chart-spend", "chart-pareto", "budgets"])
def test_partial_query_counts_are_bounded(
    viewer: Client, target: str, django_assert_max_num_queries: Any
) -> None:
    # 11: the dashboard partial's "needs attention" list also reads the desk (one query).
    with django_assert_max_num_queries(11 if target == "dashboard" else 10):
        assert viewer.get("/", HTTP_HX_TARGET=target, **HTMX).status_code == 200


def test_dashboards_never_read_raw_decision_rows(viewer: Client) -> None:
    with CaptureQueriesContext(connection) as queries:
        viewer.get("/?range=90d")
        viewer.get("/dashboards/task-classes/sql-generation/")
    tables = " ".join(q["sql"] for q in queries.captured_queries)
    assert "telemetry_rollup_hourly" in tables
    assert "telemetry_decision" not in tables and "telemetry_outcome" not in tables


def test_explorer_pages_through_every_decision_newest_first(viewer: Client) -> None:
    seen: list[str] = []
    url = "/decisions/?range=7d&task_class=ticket-triage"
    html = viewer.get(url).content.decode()
    while True:
        ids = [
            part.split("/")[0]
            for part in html.split('href="/decisions/')[1:]
            if part[:8] != "export.c" and part.split("/")[0]
        ]
        seen.extend(i for i in ids if len(i) == 36)
        if "cursor=" not in html:
            break
        cursor = html.split("cursor=")[1].split('"')[0]
        html = viewer.get(
            f"{url}&cursor={cursor}", HTTP_HX_TARGET="decision-more", **HTMX
        ).content.decode()
        assert "<html" not in html
    expected = list(
        DecisionRecord.objects.filter(task_class="ticket-triage")
        .order_by("-created_at", "-id")
        .values_list("id", flat=True)
    )
    assert seen == [str(i) for i in expected]


def test_decision_detail_shows_the_whole_path(viewer: Client) -> None:
    outcome = DecisionOutcome.objects.filter(escalated=True).first()
    assert outcome is not None
    record = DecisionRecord.objects.get(id=outcome.decision_id)
    html = viewer.get(f"/decisions/{record.id}/").content.decode()
    for text in (
        "Policy gate",
        "Candidates",
        "Fallback chain",
        "Attempts",
        "Outcome",
        record.reason,
        outcome.final_model,
        record.prompt_template_id,
    ):
        assert str(text) in html, text
    assert html.count("<td>") > 10
    assert viewer.get("/decisions/00000000-0000-7000-8000-000000000000/").status_code == 404


def test_csv_export_streams_the_filtered_set(viewer: Client) -> None:
    response = viewer.get("/decisions/export.csv?range=7d&team=analytics")
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:3] == ["decision_id", "created_at", "application"]
    assert len(rows) - 1 == DecisionRecord.objects.filter(team="analytics").count()
    assert {r[3] for r in rows[1:]} == {"analytics"}


def test_csv_export_reads_in_keyset_chunks(demo_world: dict[str, Any]) -> None:
    from telemetry.selectors import DashboardFilters, decision_export_rows

    rows = list(decision_export_rows(DashboardFilters.for_range("7d"), chunk=97))
    assert len(rows) == DecisionRecord.objects.count()
    assert len({r[0] for r in rows}) == len(rows)
    keys = [(r[1], r[0]) for r in rows]
    assert keys == sorted(keys, reverse=True)


def test_model_page_counts_escalations_away_from_the_model(viewer: Client) -> None:
    from telemetry.selectors import DashboardFilters, escalation_frame

    routed = DecisionOutcome.objects.filter(routed_model="llama-3.1-8b-local")
    frame = escalation_frame(DashboardFilters.for_range("7d"), routed_model="llama-3.1-8b-local")
    assert frame["outcomes"].sum() == routed.count()
    assert frame["escalations"].sum() == routed.filter(escalated=True).count()
    html = viewer.get("/dashboards/models/llama-3.1-8b-local/?range=7d").content.decode()
    assert "Escalations away from this model" in html


def test_detail_query_count_is_bounded(viewer: Client, django_assert_max_num_queries: Any) -> None:
    record = DecisionRecord.objects.first()
    assert record is not None
    with django_assert_max_num_queries(7):
        assert viewer.get(f"/decisions/{record.id}/").status_code == 200


def test_a_fresh_install_explains_what_to_do_next(db: Any) -> None:
    client = Client()
    client.force_login(user_create("Viewer"))
    html = client.get("/").content.decode()
    assert 'data-testid="getting-started"' in html
    assert "curl -s http://testserver/api/v1/decisions" in html
    assert "create_api_key" in html and "manage.py demo_load" in html
    assert 'href="/api/docs/"' in html and 'href="/proposals/"' in html
    assert "proposals-waiting" not in html
    # The htmx refresh keeps it until traffic arrives.
    partial = client.get("/", HTTP_HX_TARGET="dashboard", **HTMX).content.decode()
    assert 'data-testid="getting-started"' in partial


def test_the_landing_page_points_to_proposals_waiting_for_review(
    registry: dict[str, Any],
) -> None:
    from evaluation import services as evaluation_services

    client = Client()
    client.force_login(user_create("Viewer"))
    assert "proposals-waiting" not in client.get("/").content.decode()
    evaluation_services.proposal_create_manual(
        task_class=registry["triage"],
        to_model=registry["mid"],
        user=user_create("Reviewer"),
        rationale="cheaper",
    )
    html = client.get("/").content.decode()
    assert 'href="/proposals/?status=open"' in html
    assert "1 proposal waiting for review" in html


def test_no_getting_started_once_traffic_arrived(viewer: Client) -> None:
    html = viewer.get("/").content.decode()
    assert "getting-started" not in html
