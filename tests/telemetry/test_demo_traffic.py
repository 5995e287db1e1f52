"""Demo traffic goes through the real ingestion path and tells the intended story."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management import call_command
from django.db.models import Count

from controlplane.models import BudgetSpend, RoutingTableVersion
from evaluation.fleet import DEFAULT_FLEET, AnswerEngine
from evaluation.workload import TASK_CLASSES, workload_items
from telemetry.demo_traffic import demo_traffic_load
from telemetry.models import DecisionOutcome, DecisionRecord, HourlyRollup


def test_every_decision_has_an_outcome_and_rollups(demo_world: dict[str, Any]) -> None:
    count = DecisionRecord.objects.count()
    assert count == demo_world["decisions"] > 1000
    assert DecisionOutcome.objects.count() == count
    assert sum(HourlyRollup.objects.values_list("decisions", flat=True)) == count
    assert BudgetSpend.objects.exists()  # outcome reporting charged the budgets


def test_a_second_load_is_skipped(demo_world: dict[str, Any]) -> None:
    assert demo_traffic_load(decisions=500, days=1)["skipped"] is True
    call_command("demo_traffic_load", decisions=500, days=1)
    assert DecisionRecord.objects.count() == demo_world["decisions"]


def test_decisions_follow_the_table_active_at_their_time(db: Any) -> None:
    from controlplane.demo import demo_registry_load

    demo_registry_load()
    v2 = RoutingTableVersion.objects.get(number=2)
    assert v2.activated_at is not None
    demo_traffic_load(decisions=1200, days=20, seed=2, processes=1)
    before = DecisionRecord.objects.filter(created_at__lt=v2.activated_at)
    after = DecisionRecord.objects.filter(created_at__gte=v2.activated_at)
    assert set(before.values_list("routing_table_version", flat=True)) == {1}
    assert set(after.values_list("routing_table_version", flat=True)) == {2}
    # v2's tier-1 rollout: triage moved from gpt-4o-mini to the local 8B model.
    triage_before = set(
        before.filter(task_class="ticket-triage", strategy="rule").values_list("model", flat=True)
    )
    triage_after = set(
        after.filter(task_class="ticket-triage", strategy="rule").values_list("model", flat=True)
    )
    assert triage_before == {"gpt-4o-mini"} and triage_after == {"llama-3.1-8b-local"}
    # v2 routes intent detection semantically: upset customers to the mid model.
    intents = after.filter(task_class="intent-detection")
    semantic = intents.filter(strategy="semantic")
    assert set(semantic.values_list("model", flat=True)) == {"gpt-4o-mini"}
    assert 0.05 < semantic.count() / intents.count() < 0.4
    assert set(intents.filter(strategy="rule").values_list("model", flat=True)) == {
        "llama-3.1-8b-local"
    }
    tier1 = after.filter(tier=1).count() / after.count()
    assert tier1 > 2 * before.filter(tier=1).count() / before.count()


def test_prompts_are_kept_only_within_retention(demo_world: dict[str, Any]) -> None:
    reasoning = DecisionRecord.objects.filter(task_class="multi-step-reasoning")
    assert reasoning.exclude(prompt=None).exists()
    sample = reasoning.exclude(prompt=None).first()
    assert sample is not None and sample.prompt_expires_at is not None
    assert sample.prompt_expires_at == sample.created_at + timedelta(days=30)
    # A generated word problem, stored with the number a grader compares with.
    items = {i.prompt: i for i in workload_items("multi-step-reasoning")}
    assert sample.prompt in items and sample.prompt.endswith("?")
    assert sample.metadata["reference_answer"] == items[sample.prompt].reference
    redactions = DecisionRecord.objects.filter(task_class="pii-redaction")
    assert redactions.exists() and not redactions.exclude(prompt=None).exists()  # retention 0
    assert not redactions.filter(metadata__has_key="reference_answer").exists()


def test_every_class_draws_gradeable_prompts_from_the_generated_workload(
    demo_world: dict[str, Any],
) -> None:
    for task_class in TASK_CLASSES:
        stored = DecisionRecord.objects.filter(task_class=task_class).exclude(prompt=None)
        known = {i.prompt: i.reference for i in workload_items(task_class)}
        for record in stored[:40]:
            assert known[record.prompt] == record.metadata["reference_answer"], task_class


def test_reasoning_outcomes_follow_the_fleet_skill_profiles(demo_world: dict[str, Any]) -> None:
    """The first attempt of a reasoning request succeeds exactly when the replay fleet
    answers that item correctly as that model."""
    engine = AnswerEngine()
    fleet = {m.slug: m for m in DEFAULT_FLEET}
    outcomes = DecisionOutcome.objects.filter(task_class="multi-step-reasoning")
    records = {
        r.id: r
        for r in DecisionRecord.objects.filter(task_class="multi-step-reasoning").exclude(
            prompt=None
        )
    }
    checked = 0
    for outcome in outcomes:
        record = records.get(outcome.decision_id)
        first = outcome.attempts[0] if outcome.attempts else None
        if record is None or first is None or first["model"] == "llama-3.1-8b-local":
            continue  # (the local model's outage overrides its skill)
        expected = engine.answer(fleet[first["model"]], record.prompt or "").correct
        assert (first["status"] == "ok") is expected
        checked += 1
    assert checked >= 30


def test_the_outage_escalates_requests(db: Any) -> None:
    from controlplane.demo import demo_registry_load

    demo_registry_load()
    demo_traffic_load(decisions=4000, days=7, seed=4, processes=1)
    outage = DecisionOutcome.objects.filter(routed_model="llama-3.1-8b-local")
    by_status = dict(
        outage.filter(escalated=True).values_list("final_status").annotate(n=Count("*"))
    )
    assert sum(by_status.values()) > 0
    timeouts = [
        a
        for o in outage.filter(escalated=True)[:200]
        for a in o.attempts
        if a["model"] == "llama-3.1-8b-local" and a["status"] == "timeout"
    ]
    assert timeouts


def test_the_query_count_does_not_grow_with_the_traffic(
    db: Any, django_assert_max_num_queries: Any
) -> None:
    """Outcomes are charged from the simulated rows, never by reading each decision back
    (a per-outcome read made a 205,000-decision demo take five minutes)."""
    from controlplane.demo import demo_registry_load

    demo_registry_load()
    with django_assert_max_num_queries(400):
        result = demo_traffic_load(decisions=2500, days=3, seed=5, processes=1)
    assert result["outcomes"] == result["decisions"] > 2000
