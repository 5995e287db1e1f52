"""The demo: graders, schedules and a real first sweep that leaves an approvable proposal."""

from __future__ import annotations

from typing import Any

import pytest
from django_celery_beat.models import PeriodicTask

from controlplane.demo import demo_registry_load
from controlplane.models import ModelEndpoint
from evaluation import services
from evaluation.demo import DEMO_SWEEP_KEY, demo_evaluation_load
from evaluation.fleet import RunningFleet
from evaluation.models import GraderConfig, Proposal, SweepRun
from tests import factories
from tests.evaluation.conftest import decisions_create


@pytest.fixture
def demo_registry(db: Any, gsm8k_fleet: RunningFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_URL", f"{gsm8k_fleet.url}/v1")
    demo_registry_load()


def test_demo_sweep_proposes_a_cheaper_tier_for_multi_step_reasoning(
    demo_registry: None, gsm8k_rows: list[Any]
) -> None:
    gpt4o = ModelEndpoint.objects.get(slug="gpt-4o")
    # Like the demo traffic: GSM8K questions, prompts stored, no recorded reference answers.
    decisions_create(
        task_class="multi-step-reasoning", model=gpt4o, prompts=[r.prompt for r in gsm8k_rows[:300]]
    )

    result = demo_evaluation_load(run_now=True)

    assert result["schedules"] == 5 and result["demo_sweep_status"] == "completed"
    assert PeriodicTask.objects.filter(task="evaluation.tasks.tier_downgrade_sweep").exists()
    assert GraderConfig.objects.get(task_class__slug="multi-step-reasoning").kind == "numeric"
    judge = GraderConfig.objects.get(task_class__slug="pii-redaction")
    assert judge.kind == "llm_judge" and judge.judge_model.locality == "local"

    proposal = Proposal.objects.get()
    assert proposal.task_class.slug == "multi-step-reasoning"
    assert (proposal.from_model.slug, proposal.to_model.slug) == ("gpt-4o", "mistral-small-hosted")
    assert proposal.evidence["graded_against"] == ["primary"]
    assert proposal.evidence["interval_low"] >= 0.85
    assert proposal.evidence["savings_monthly_usd"] > 0
    tried = SweepRun.objects.get(key=DEMO_SWEEP_KEY).summary["classes"]["multi-step-reasoning"]
    assert [c["candidate"] for c in tried["candidates"]] == ["gpt-4o-mini", "mistral-small-hosted"]

    again = demo_evaluation_load(run_now=True)  # idempotent
    assert again["demo_sweep"] == result["demo_sweep"]
    assert Proposal.objects.count() == 1
    assert PeriodicTask.objects.filter(task__startswith="evaluation.").count() == 5

    reviewer = factories.user_create("Reviewer")
    applied = services.proposal_approve(proposal=proposal, user=reviewer)
    assert applied.applied_version is not None
    route = applied.applied_version.routes.get(task_class=proposal.task_class)
    assert route.primary.slug == "mistral-small-hosted"
    assert route.fallbacks[0] == "gpt-4o"


def test_demo_sweep_is_queued_when_the_fleet_is_not_reachable(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_URL", "http://127.0.0.1:9/v1")
    demo_registry_load()
    result = demo_evaluation_load()
    assert result["demo_sweep_status"] == "pending"
    assert SweepRun.objects.get(key=DEMO_SWEEP_KEY).status == "pending"
