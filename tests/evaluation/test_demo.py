"""The demo: graders, schedules and a real first sweep over the generated demo traffic.

Real PostgreSQL, the demo traffic loaded through the ingestion code, the replay fleet over
HTTP: the first tier-downgrade sweep proposes the class whose cheaper tier is good enough and
nothing for the classes whose cheaper tier falls short.
"""

from __future__ import annotations

from typing import Any

import pytest
from django_celery_beat.models import PeriodicTask

from controlplane.demo import demo_registry_load
from controlplane.models import TaskClass
from evaluation import services
from evaluation.demo import DEMO_SWEEP_KEY, demo_evaluation_load, proposals_announce
from evaluation.fleet import RunningFleet
from evaluation.models import GraderConfig, Proposal, SweepRun, SweepSample
from telemetry.demo_traffic import demo_traffic_load
from telemetry.models import DecisionRecord
from tests import factories

PASSES = "multi-step-reasoning"  # gpt-4o → tier 2: mistral-small-hosted holds the target
FAIL = ("sql-generation", "long-report-synthesis", "customer-reply-draft")


@pytest.fixture
def demo_registry(db: Any, eval_fleet: RunningFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_URL", f"{eval_fleet.url}/v1")
    demo_registry_load()


def test_first_sweep_proposes_where_the_cheaper_tier_passes_and_nowhere_else(
    demo_registry: None, django_capture_on_commit_callbacks: Any
) -> None:
    demo_traffic_load(decisions=7000, days=3, seed=5)
    stored = DecisionRecord.objects.filter(task_class=PASSES).exclude(prompt=None)
    assert stored.count() >= 200
    assert all(r.metadata.get("reference_answer") for r in stored[:50])

    said: list[str] = []
    with (
        django_capture_on_commit_callbacks(execute=True),
        proposals_announce("http://127.0.0.1:8000", said.append),
    ):
        result = demo_evaluation_load(run_now=True)

    assert result["schedules"] == 6 and result["demo_sweep_status"] == "completed"
    assert PeriodicTask.objects.filter(task="evaluation.tasks.tier_downgrade_sweep").exists()
    assert PeriodicTask.objects.filter(task="evaluation.tasks.condense_sweeps").exists()
    kinds = set(GraderConfig.objects.values_list("kind", flat=True))
    assert kinds == {
        "numeric",
        "json_schema",
        "normalised",
        "exact",
        "similarity",
        "regex",
        "llm_judge",
    }
    judge = GraderConfig.objects.get(task_class__slug="pii-redaction")
    assert judge.kind == "llm_judge" and judge.judge_model.locality == "local"

    run = SweepRun.objects.get(key=DEMO_SWEEP_KEY)
    classes = run.summary["classes"]
    assert set(classes) == set(FAIL) | {PASSES}
    first = SweepSample.objects.filter(run=run).order_by("pk").first()
    assert first is not None and first.task_class == PASSES  # replayed first: quick to show

    proposal = Proposal.objects.get()  # exactly one: the class whose cheaper tier passes
    assert proposal.task_class.slug == PASSES
    assert (proposal.from_model.slug, proposal.to_model.slug) == ("gpt-4o", "mistral-small-hosted")
    evidence = proposal.evidence
    target = float(TaskClass.objects.get(slug=PASSES).quality_target)
    assert evidence["graded_against"] == ["reference"]
    assert evidence["sample_size"] >= 190  # 200 replayed, a rare call failure aside
    assert evidence["interval_low"] >= target
    assert evidence["primary_success_rate"] >= evidence["success_rate"] - 0.02
    assert evidence["savings_monthly_usd"] > 0
    assert len(evidence["example_sample_ids"]) == 6
    tried = classes[PASSES]["candidates"]
    assert [c["candidate"] for c in tried] == ["gpt-4o-mini", "mistral-small-hosted"]
    assert tried[0]["outcome"] == "below target" and tried[0]["interval"][0] < target
    assert said == [
        f"Proposal ready: http://127.0.0.1:8000/proposals/{proposal.public_id}/ ({proposal.title})"
    ]

    for slug in FAIL:  # the cheaper tier's lower bound misses the target: nothing proposed
        outcome = classes[slug]
        quality_target = float(TaskClass.objects.get(slug=slug).quality_target)
        assert outcome["outcome"] == "below target", (slug, outcome)
        assert outcome["sample_size"] >= 190
        assert all(c["interval"][0] < quality_target for c in outcome["candidates"]), slug
    assert classes["sql-generation"]["candidate"] in ("llama-3.1-8b-local", "qwen2.5-7b-local")

    again = demo_evaluation_load(run_now=True)  # idempotent
    assert again["demo_sweep"] == result["demo_sweep"]
    assert Proposal.objects.count() == 1
    assert PeriodicTask.objects.filter(task__startswith="evaluation.").count() == 6

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


@pytest.mark.django_db(transaction=True)
def test_demo_routes_triage_by_a_learned_router_approved_through_the_normal_flow(
    eval_fleet: RunningFleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, client: Any
) -> None:
    """The demo loader trains a learned router on the generated graded traffic, proposes it
    with its evidence, approves it as the demo Reviewer (audited); live decisions on that
    class are then learned, with the router's prediction as their confidence; the live
    step also goes through the semantic routes and makes a cascade check."""
    from controlplane.demo import demo_load
    from controlplane.models import AuditLog, Route, RoutingTableVersion
    from evaluation.demo import DEMO_LEARNED_CLASS, demo_learned_load, demo_live_load
    from evaluation.models import LearnedRouter
    from evaluation.selectors import learned_router_info
    from evaluation.workload import workload_items
    from routing.learned import predict_success, request_features
    from tests.browser import roles_ensure

    roles_ensure()  # a transactional test: an earlier flush removed the role groups
    monkeypatch.setenv("FLEET_URL", f"{eval_fleet.url}/v1")
    monkeypatch.setattr("controlplane.demo.CREDENTIALS_PATH", tmp_path / "creds.json")
    monkeypatch.setattr("controlplane.demo.VAR_DIR", tmp_path)
    credentials = demo_load()
    demo_traffic_load(decisions=9000, days=30, seed=5, processes=1)

    result = demo_learned_load()
    assert result["status"] == "applied", result
    router = LearnedRouter.objects.get(task_class__slug=DEMO_LEARNED_CLASS)
    assert router.status == "active" and router.version == result["router"]
    # Both models that were routed in the demo period learned (v1: gpt-4o-mini, v2: 8B).
    assert set(router.coefficients) == {"llama-3.1-8b-local", "gpt-4o-mini"}
    assert router.metrics["ladder"] == ["llama-3.1-8b-local", "gpt-4o-mini", "gpt-4o"]
    proposal = Proposal.objects.get(task_class__slug=DEMO_LEARNED_CLASS)
    assert proposal.change == "learned" and proposal.status == "applied"
    assert proposal.evidence["learned_router_id"] == router.pk
    assert proposal.evidence["metrics"]["llama-3.1-8b-local"]["brier"] is not None
    assert proposal.reviewed_by is not None and proposal.reviewed_by.username == "reviewer"
    approval = AuditLog.objects.get(
        action="approve", object_type="proposal", object_id=str(proposal.pk)
    )
    assert approval.actor == proposal.reviewed_by and "held out" in approval.comment
    active = RoutingTableVersion.objects.get(status="active")
    assert active == proposal.applied_version and active.number == result["version"]
    route = Route.objects.get(version=active, task_class__slug=DEMO_LEARNED_CLASS)
    assert route.strategy == "learned"
    assert Route.objects.get(version=active, task_class__slug="intent-detection").strategy == (
        "semantic"
    )
    assert demo_learned_load() == {"status": "present"}  # idempotent

    live = demo_live_load(credentials["api_key"]["secret"])
    assert live["strategies"]["learned"] == 12, live
    assert live["strategies"]["semantic"] >= 3, live  # the complaints
    assert live["cascade"] in ("accept", "escalate"), live
    checked = DecisionRecord.objects.filter(path__has_key="cascade").get()
    live_tiers = DecisionRecord.objects.filter(strategy="learned").values_list("tier", flat=True)
    assert checked.task_class == DEMO_LEARNED_CLASS and checked.tier == min(live_tiers)
    assert checked.path["cascade"][0]["action"] == live["cascade"]

    # POST /api/v1/decisions: learned, and the confidence is the router's prediction for
    # the chosen model on this request (or, for a model it has none for, its class rate).
    info = learned_router_info(router)
    secret = credentials["api_key"]["secret"]
    # (Shown, not asserted: 9,000 decisions are too few to learn difficulty reliably; the
    # full demo's router is measured in the README.)
    local: dict[int, list[float]] = {1: [], 2: [], 3: []}  # the 8B's predicted success
    confidences = set()
    for item in workload_items(DEMO_LEARNED_CLASS)[:60]:
        body = factories.decision_post(
            client,
            secret,
            {
                "task_class": DEMO_LEARNED_CLASS,
                "prompt": item.prompt,
                "prompt_template": {"id": "triage-v3", "version": "1"},
            },
        ).json()
        assert body["strategy"] == "learned", body
        chosen = body["model"]["slug"]
        predicted = predict_success(
            info, request_features(info.spec, item.prompt, template="triage-v3@1")
        )
        if chosen in predicted:
            assert body["confidence"] == pytest.approx(predicted[chosen], abs=1e-3)
            assert body["confidence"] >= router.threshold
        confidences.add(body["confidence"])
        local[item.difficulty].append(predicted["llama-3.1-8b-local"])
    assert len(confidences) > 10  # per-request probabilities, not a tier constant
    means = {d: sum(p) / len(p) for d, p in local.items() if p}
    print("demo learned router, the 8B's predicted success by difficulty:", means)
