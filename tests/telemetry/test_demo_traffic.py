"""Demo traffic goes through the real ingestion path and tells the intended story."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management import call_command
from django.db.models import Count

from controlplane.models import BudgetSpend, RoutingTableVersion
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
    tier1 = after.filter(tier=1).count() / after.count()
    assert tier1 > 2 * before.filter(tier=1).count() / before.count()


def test_prompts_are_kept_only_within_retention(demo_world: dict[str, Any]) -> None:
    gsm8k = DecisionRecord.objects.filter(task_class="multi-step-reasoning")
    assert gsm8k.exclude(prompt=None).exists()
    sample = gsm8k.exclude(prompt=None).first()
    assert sample is not None and sample.prompt_expires_at is not None
    assert sample.prompt_expires_at == sample.created_at + timedelta(days=30)
    assert "?" in (sample.prompt or "") or len(sample.prompt or "") > 40  # a real word problem
    assert (
        not DecisionRecord.objects.filter(task_class="pii-redaction").exclude(prompt=None).exists()
    )  # retention 0: never stored


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
