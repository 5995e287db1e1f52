"""Reviewer pages and the proposals API: roles, htmx partials, bounded query counts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse

from controlplane import services as registry
from controlplane.models import RoutingTableVersion, VersionStatus
from evaluation import services
from evaluation.models import Proposal, SweepKind, SweepRun, SweepSample
from evaluation.workload import WorkloadItem
from tests import factories
from tests.evaluation.conftest import workload_decisions


@pytest.fixture
def swept(eval_registry: dict[str, Any], reasoning_items: Sequence[WorkloadItem]) -> dict[str, Any]:
    """The registry after a tier-downgrade sweep that proposed math-practice → tier 2."""
    workload_decisions(
        reasoning_items, task_class="math-practice", model=eval_registry["gpt4o"], count=200
    )
    run, _ = services.sweep_run_create(kind=SweepKind.TIER_DOWNGRADE, enqueue=False)
    services.sweep_run_execute(run_id=run.pk)
    return {**eval_registry, "proposal": Proposal.objects.get(), "run": run}


def logged_in(role: str) -> Client:
    client = Client()
    client.force_login(factories.user_create(role))
    return client


def test_pages_need_sign_in(swept: dict[str, Any]) -> None:
    for url in (reverse("proposals"), reverse("sweeps")):
        response = Client().get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]


def test_queue_lists_proposals_with_bounded_queries(
    swept: dict[str, Any], django_assert_max_num_queries: Any
) -> None:
    client = logged_in("Viewer")
    with django_assert_max_num_queries(8):
        response = client.get(reverse("proposals"))
    assert response.status_code == 200
    body = response.content.decode()
    assert swept["proposal"].title in body and "<html" in body
    assert f'href="{reverse("proposal-detail", args=[swept["proposal"].public_id])}"' in body


def test_queue_htmx_request_gets_only_the_partial(swept: dict[str, Any]) -> None:
    response = logged_in("Viewer").get(
        reverse("proposals") + "?status=all", headers={"HX-Request": "true"}
    )
    body = response.content.decode()
    assert response.status_code == 200 and "<html" not in body
    assert body.strip().startswith('<table class="card" id="queue">')


def test_evidence_page_places_charts_and_pairs(
    swept: dict[str, Any], django_assert_max_num_queries: Any
) -> None:
    proposal = swept["proposal"]
    client = logged_in("Viewer")
    with django_assert_max_num_queries(14):
        response = client.get(reverse("proposal-detail", args=[proposal.public_id]))
    body = response.content.decode()
    assert response.status_code == 200
    assert "/static/evaluation/plotly.min.js" in body and "cdn" not in body.lower()
    assert 'id="chart-success-data"' in body and 'id="chart-latency-data"' in body
    assert "Example pairs" in body and "95 % Wilson interval" in body
    assert 'data-testid="approve"' not in body  # a Viewer sees no review buttons


def test_plotly_is_served_from_static_files() -> None:
    path = finders.find("evaluation/plotly.min.js")
    assert path and str(path).endswith("plotly.min.js")


def test_reviewer_approves_through_the_page(swept: dict[str, Any]) -> None:
    proposal = swept["proposal"]
    url = reverse("proposal-review", args=[proposal.public_id])
    assert logged_in("Viewer").post(url, {"action": "approve"}).status_code == 403

    response = logged_in("Reviewer").post(url, {"action": "approve", "comment": "ok"})
    assert response.status_code == 302
    proposal.refresh_from_db()
    assert proposal.status == "applied"
    active = RoutingTableVersion.objects.get(status=VersionStatus.ACTIVE)
    assert active.routes.get(task_class=swept["practice"]).primary == swept["mistral"]


def test_htmx_review_returns_the_review_panel(swept: dict[str, Any]) -> None:
    proposal = swept["proposal"]
    response = logged_in("Reviewer").post(
        reverse("proposal-review", args=[proposal.public_id]),
        {"action": "reject", "comment": ""},
        headers={"HX-Request": "true"},
    )
    body = response.content.decode()
    assert response.status_code == 200 and body.strip().startswith(
        '<section class="card" id="review">'
    )
    assert "Say why" in body
    proposal.refresh_from_db()
    assert proposal.status == "proposed"


def test_stale_proposal_offers_re_evaluation(swept: dict[str, Any]) -> None:
    newer = registry.routing_version_draft_create()
    registry.routing_version_activate(version=newer)
    proposal = swept["proposal"]
    client = logged_in("Reviewer")
    body = client.get(reverse("proposal-detail", args=[proposal.public_id])).content.decode()
    assert "Stale" in body and 'value="reevaluate"' in body and 'value="approve"' not in body
    client.post(reverse("proposal-review", args=[proposal.public_id]), {"action": "reevaluate"})
    proposal.refresh_from_db()
    assert proposal.status == "superseded"
    assert SweepRun.objects.filter(task_class=swept["practice"]).count() == 1


def test_sweeps_page_and_operator_actions(
    swept: dict[str, Any], django_assert_max_num_queries: Any
) -> None:
    from evaluation.demo import sweep_schedules_ensure

    sweep_schedules_ensure()
    viewer = logged_in("Viewer")
    with django_assert_max_num_queries(6):
        response = viewer.get(reverse("sweeps"))
    body = response.content.decode()
    assert response.status_code == 200
    assert f'id="run-{swept["run"].pk}"' in body and "evaluation.tasks.tier_downgrade_sweep" in body
    start = reverse("sweep-start")
    assert logged_in("Reviewer").post(start, {"kind": "tier_downgrade"}).status_code == 403
    assert logged_in("Operator").post(start, {"kind": "tier_downgrade"}).status_code == 302
    assert SweepRun.objects.count() == 2
    failed = SweepRun.objects.create(key="x", kind="tier_downgrade", status="failed")
    logged_in("Operator").post(reverse("sweep-resume", args=[failed.pk]))
    failed.refresh_from_db()
    assert failed.status == "pending"


# --- API ----------------------------------------------------------------------------------


def test_api_lists_proposals_for_read_keys(
    swept: dict[str, Any], django_assert_max_num_queries: Any
) -> None:
    team = registry.team_get_or_create(slug="t")
    app = registry.application_get_or_create(slug="a", team=team)
    _, secret = registry.api_key_create(application=app, scopes=["read"])
    client = Client(headers={"Authorization": f"Bearer {secret}"})
    with django_assert_max_num_queries(6):
        response = client.get("/api/v1/proposals?status=open")
    assert response.status_code == 200
    [item] = response.json()
    assert item["id"] == str(swept["proposal"].public_id)
    assert item["task_class"] == "math-practice" and item["to_model"] == "mistral-small-hosted"
    assert item["is_stale"] is False and item["evidence"]["sample_size"] == 200
    detail = client.get(f"/api/v1/proposals/{item['id']}")
    assert detail.status_code == 200
    refused = client.post(
        f"/api/v1/proposals/{item['id']}/approve", {}, content_type="application/json"
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    bad = client.get("/api/v1/proposals?status=nope")
    assert bad.status_code == 400 and "status" in bad.json()["error"]["fields"]


def test_api_review_by_a_signed_in_reviewer(swept: dict[str, Any]) -> None:
    proposal = swept["proposal"]
    client = logged_in("Reviewer")
    reject = client.post(
        f"/api/v1/proposals/{proposal.public_id}/reject", {}, content_type="application/json"
    )
    assert reject.status_code == 400 and reject.json()["error"]["fields"]["comment"]
    approve = client.post(
        f"/api/v1/proposals/{proposal.public_id}/approve",
        json.dumps({"comment": "ship it"}),
        content_type="application/json",
    )
    assert approve.status_code == 200, approve.content
    assert approve.json()["status"] == "applied" and approve.json()["applied_version"] == 2
    again = client.post(
        f"/api/v1/proposals/{proposal.public_id}/approve", {}, content_type="application/json"
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    missing = client.get("/api/v1/proposals/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404


def test_samples_are_unique_per_run_request_and_candidate(swept: dict[str, Any]) -> None:
    sample = SweepSample.objects.filter(run=swept["run"]).first()
    assert sample is not None
    sample.pk = None
    with pytest.raises(Exception, match="one_sample_per_request"):
        sample.save()


def test_operators_edit_schedules_and_graders_in_admin(swept: dict[str, Any]) -> None:
    operator = logged_in("Operator")
    for url in (
        "/admin/django_celery_beat/periodictask/add/",
        "/admin/evaluation/graderconfig/add/",
        "/admin/evaluation/shadowconfig/add/",
        "/admin/evaluation/judgeprompt/add/",
        "/admin/evaluation/proposal/",
        "/admin/evaluation/sweeprun/",
    ):
        assert operator.get(url).status_code == 200, url
    assert (
        operator.get(f"/admin/evaluation/proposal/{swept['proposal'].pk}/delete/").status_code
        == 403
    )
    assert logged_in("Reviewer").get("/admin/evaluation/graderconfig/add/").status_code == 302


def test_a_reviewers_own_proposal_needs_another_reviewer(eval_registry: dict[str, Any]) -> None:
    author = logged_in("Reviewer")
    refused = author.post(
        reverse("proposal-propose"),
        {"task_class": "math-strict", "to_model": "gpt-4o", "rationale": ""},
        follow=True,
    )
    assert "Explain why" in refused.content.decode() and not Proposal.objects.exists()

    response = author.post(
        reverse("proposal-propose"),
        {"task_class": "math-strict", "to_model": "gpt-4o", "rationale": "customers complain"},
    )
    proposal = Proposal.objects.get()
    assert response["Location"] == reverse("proposal-detail", args=[proposal.public_id])
    assert proposal.is_manual and proposal.change == "upgrade"
    assert proposal.new_fallbacks == []  # the tier-2 model is dropped from an upgrade's chain
    page = author.get(response["Location"]).content.decode()
    assert "customers complain" in page

    review = reverse("proposal-review", args=[proposal.public_id])
    body = author.post(review, {"action": "approve"}, follow=True).content.decode()
    assert "your own proposal" in body
    proposal.refresh_from_db()
    assert proposal.status == "proposed"
    logged_in("Reviewer").post(review, {"action": "approve"})
    proposal.refresh_from_db()
    assert proposal.status == "applied"


def test_a_manual_proposal_must_respect_the_data_policy(eval_registry: dict[str, Any]) -> None:
    local_only = factories.task_class_create(slug="redact", data_policy="local_only")
    version = registry.routing_version_draft_create()
    registry.route_set(version=version, task_class=local_only, primary=eval_registry["llama"])
    registry.routing_version_activate(version=version)
    body = (
        logged_in("Reviewer")
        .post(
            reverse("proposal-propose"),
            {"task_class": "redact", "to_model": "gpt-4o", "rationale": "quality"},
            follow=True,
        )
        .content.decode()
    )
    assert "local-only" in body and not Proposal.objects.exists()


def test_sweeps_htmx_refresh_returns_the_runs_partial(swept: dict[str, Any]) -> None:
    response = logged_in("Viewer").get(reverse("sweeps"), headers={"HX-Request": "true"})
    body = response.content.decode()
    assert body.strip().startswith('<section class="card" id="runs"')
    assert 'hx-trigger="every 10s"' in body and "<html" not in body
