"""Learned-router thresholds re-calibrated to a target on the deployment's own graded
traffic: a share on the strongest model or a quality target; a moved threshold is a new
version proposed with its evidence; the beat task runs every enabled target."""

from __future__ import annotations

from typing import Any

import pytest

from evaluation import services
from evaluation.models import (
    LearnedRouter,
    LearnedRouterStatus,
    LearnedThresholdTarget,
    Proposal,
    ProposalChange,
    ProposalStatus,
)
from evaluation.services.learned import learned_router_propose
from evaluation.services.thresholds import learned_threshold_calibrate
from tests import factories
from tests.conftest import client_for
from tests.evaluation.test_learned import trained, world  # noqa: F401  (fixtures)


@pytest.fixture
def serving(trained: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    """The trained router (threshold 0.80) approved: it routes the class."""
    proposal = learned_router_propose(trained["router"])
    assert proposal is not None
    services.proposal_approve(proposal=proposal, user=factories.user_create("Reviewer"))
    trained["router"].refresh_from_db()
    assert trained["router"].status == LearnedRouterStatus.ACTIVE
    return trained


def test_share_target_proposes_a_new_threshold_with_evidence(serving: dict[str, Any]) -> None:
    target = LearnedThresholdTarget.objects.create(
        task_class=serving["class"], kind="strong_share", target=0.2, window_days=30,
        min_requests=100,
    )  # fmt: skip
    result = learned_threshold_calibrate(target)
    print({k: result[k] for k in ("status", "requests", "current", "calibrated")})
    assert result["status"] == "proposed" and result["target_met"]
    assert result["requests"] >= 300  # distinct prompts of the recent graded traffic
    assert abs(result["calibrated"]["strongest_share"] - 0.2) <= 0.02
    assert result["current"]["threshold"] == 0.8
    assert result["calibrated"]["threshold"] != 0.8
    # The candidate: same coefficients, the calibrated threshold; its routing shares on the
    # same traffic agree with the calibration.
    candidate = LearnedRouter.objects.get(task_class=serving["class"], version=2)
    assert candidate.status == LearnedRouterStatus.CANDIDATE
    assert candidate.coefficients == serving["router"].coefficients
    assert candidate.threshold == result["calibrated"]["threshold"]
    share = candidate.metrics["routing"]["strongest_share"]
    assert share == pytest.approx(result["calibrated"]["strongest_share"], abs=1e-3)
    proposal = Proposal.objects.get(status=ProposalStatus.PROPOSED)
    assert proposal.change == ProposalChange.LEARNED
    assert proposal.evidence["learned_router_id"] == candidate.pk
    assert proposal.evidence["calibration"]["calibrated"] == result["calibrated"]
    assert "0.80 →" in proposal.title and "20% on the strongest model" in proposal.title
    page = client_for("Viewer").get(f"/proposals/{proposal.public_id}/")
    assert page.status_code == 200
    assert b'data-testid="threshold-calibration"' in page.content
    assert b"0.20 of traffic on the strongest model" in page.content
    target.refresh_from_db()
    assert target.last_result["status"] == "proposed" and target.last_run_at is not None
    dashboard = client_for("Viewer").get(f"/dashboards/task-classes/{serving['class'].slug}/")
    text = dashboard.content.decode()
    assert "learned router v1" in text and "threshold 0.80" in text
    assert 'data-testid="threshold-target"' in text and "proposed" in text
    # While it waits for a Reviewer nothing more is proposed.
    assert learned_threshold_calibrate(target)["status"] == "proposal_open"
    services.proposal_approve(proposal=proposal, user=factories.user_create("Reviewer"))
    candidate.refresh_from_db()
    assert candidate.status == LearnedRouterStatus.ACTIVE
    # Same traffic, same target: the threshold stays.
    assert learned_threshold_calibrate(target)["status"] == "unchanged"


def test_quality_target_takes_the_cheapest_threshold_that_meets_it(
    serving: dict[str, Any],
) -> None:
    target = LearnedThresholdTarget.objects.create(
        task_class=serving["class"], kind="quality", target=0.8, window_days=30,
        min_requests=100,
    )  # fmt: skip
    result = learned_threshold_calibrate(target, propose=False)
    assert result["target_met"]
    assert result["calibrated"]["expected_success"] >= 0.8
    # Any cheaper point of the curve misses the target.
    cheaper = [p for p in result["curve"] if p["mean_cost"] < result["calibrated"]["mean_cost"]]
    assert all(p["expected_success"] < 0.8 for p in cheaper)
    # An unreachable target: the best expected success, reported as missed.
    target.target = 0.999
    target.save()
    missed = learned_threshold_calibrate(target, propose=False)
    assert not missed["target_met"]


def test_nothing_without_a_serving_router_or_enough_traffic(trained: dict[str, Any]) -> None:  # noqa: F811
    target = LearnedThresholdTarget.objects.create(
        task_class=trained["class"], kind="strong_share", target=0.3, window_days=30
    )
    assert learned_threshold_calibrate(target)["status"] == "no_router"
    proposal = learned_router_propose(trained["router"])
    assert proposal is not None
    services.proposal_approve(proposal=proposal, user=factories.user_create("Reviewer"))
    target.min_requests = 100_000
    target.save()
    assert learned_threshold_calibrate(target)["status"] == "too_few_requests"
    assert not Proposal.objects.filter(status=ProposalStatus.PROPOSED).exists()


def test_beat_task_runs_every_enabled_target(serving: dict[str, Any]) -> None:
    from evaluation.tasks import learned_thresholds_calibrate_task

    LearnedThresholdTarget.objects.create(
        task_class=serving["class"], kind="strong_share", target=0.05, window_days=30,
        min_requests=100,
    )  # fmt: skip
    assert learned_thresholds_calibrate_task() == ["multi-step-reasoning: proposed"]
    LearnedThresholdTarget.objects.update(enabled=False)
    assert learned_thresholds_calibrate_task() == []
