"""A Reviewer approves a proposal in headless Chromium; the new routing table goes live."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from controlplane.models import RoutingTableVersion, VersionStatus
from evaluation import services
from evaluation.fleet import RunningFleet
from evaluation.models import Proposal, SweepKind
from evaluation.workload import WorkloadItem
from tests.browser import browser_page, login, screenshot
from tests.evaluation.conftest import eval_registry_create, workload_decisions

pytestmark = pytest.mark.browser


def test_reviewer_approves_a_proposal_in_the_browser(
    live_server: Any, eval_fleet: RunningFleet, reasoning_items: Sequence[WorkloadItem]
) -> None:
    reg = eval_registry_create(eval_fleet.url)
    workload_decisions(reasoning_items, task_class="math-practice", model=reg["gpt4o"], count=200)
    run, _ = services.sweep_run_create(kind=SweepKind.TIER_DOWNGRADE, enqueue=False)
    services.sweep_run_execute(run_id=run.pk)
    proposal = Proposal.objects.get()
    reviewer = User.objects.create_user("rita", password="review-pass-123")
    reviewer.groups.add(Group.objects.get(name="Reviewer"))

    with browser_page() as page:
        login(page, live_server.url, "rita", "review-pass-123")
        page.click("nav >> text=Proposals")
        page.wait_for_selector("#queue")
        assert proposal.title in page.inner_text("#queue")
        page.click(f"#queue >> text={proposal.title}")
        page.wait_for_selector("#chart-success .main-svg")  # Plotly drew the chart
        page.wait_for_selector("#chart-latency .main-svg")
        assert proposal.evidence["success_rate"] >= 0.9  # mistral on the word problems
        assert page.inner_text("[data-testid=success-rate]").startswith("0.9")
        screenshot(page, "evaluation-proposal-evidence")

        page.fill("input[name=comment]", "Wilson lower bound clears the target")
        page.click("[data-testid=approve]")
        page.wait_for_selector("[data-testid=proposal-status]:has-text('applied')")
        review = page.inner_text("#review")
        assert "routing table v2 is active" in review
        screenshot(page, "evaluation-proposal-applied")
        assert not page.failed_requests  # type: ignore[attr-defined]

    proposal.refresh_from_db()
    assert proposal.status == "applied" and proposal.reviewed_by == reviewer
    active = RoutingTableVersion.objects.get(status=VersionStatus.ACTIVE)
    assert active.routes.get(task_class=reg["practice"]).primary == reg["mistral"]
