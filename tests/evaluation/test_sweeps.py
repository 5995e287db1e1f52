"""Sweeps executed in-process against the replay fleet over HTTP (generated workload)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from evaluation import services
from evaluation.fleet import RunningFleet
from evaluation.models import (
    GraderConfig,
    Proposal,
    ShadowConfig,
    SweepKind,
    SweepRun,
    SweepSample,
    SweepStatus,
)
from evaluation.services import sweeps as sweep_services
from evaluation.workload import INVOICE_SCHEMA, WorkloadItem, workload_items
from tests import factories
from tests.evaluation.conftest import decisions_create, roles_ensure, workload_decisions


def run_sweep(kind: str = SweepKind.TIER_DOWNGRADE, **fields: Any) -> SweepRun:
    run, created = services.sweep_run_create(kind=kind, enqueue=False, **fields)
    assert created
    result = services.sweep_run_execute(run_id=run.pk)
    assert result is not None
    return result


def test_downgrade_proposed_only_where_the_lower_tier_is_good_enough(
    eval_registry: dict[str, Any], reasoning_items: Sequence[WorkloadItem]
) -> None:
    reg = eval_registry
    workload_decisions(reasoning_items, task_class="math-practice", model=reg["gpt4o"], count=200)
    workload_decisions(
        reasoning_items, task_class="math-strict", model=reg["mistral"], count=200, offset=200
    )

    run = run_sweep(params={"sample_size": 200})

    assert run.status == SweepStatus.COMPLETED, run.error_message
    assert (run.samples_planned, run.samples_done, run.samples_failed) == (400, 400, 0)
    proposal = Proposal.objects.get()
    assert proposal.task_class == reg["practice"]
    assert (proposal.from_model, proposal.to_model) == (reg["gpt4o"], reg["mistral"])
    assert proposal.change == "downgrade" and proposal.status == "proposed"
    assert proposal.new_fallbacks == ["gpt-4o"]
    assert proposal.based_on_version == reg["version"].number
    evidence = proposal.evidence
    assert evidence["sample_size"] == 200
    assert evidence["graded_against"] == ["reference"]
    assert 0.75 <= evidence["interval_low"] < evidence["success_rate"] < evidence["interval_high"]
    assert 0.9 <= evidence["success_rate"] <= 0.99  # mistral on the difficulty mix: ≈ 0.95
    assert evidence["primary_success_rate"] > evidence["success_rate"]
    assert evidence["quality_delta"] < 0
    assert evidence["latency_p50_ms"]["candidate"] is not None
    assert evidence["savings_monthly_usd"] > 0
    assert evidence["volume_30d"]["requests"] == 200
    assert len(evidence["example_sample_ids"]) == 6

    strict = run.summary["classes"]["math-strict"]
    assert strict["outcome"] == "below target"
    assert strict["candidate"] == "llama-3.1-8b-local"
    assert 0.55 <= strict["success_rate"] <= 0.8  # the tier-1 model: about 70 %
    assert strict["interval"][1] < 0.95


def test_weak_model_is_not_proposed_at_a_95_percent_target(
    db: Any, eval_fleet: RunningFleet, reasoning_items: Sequence[WorkloadItem]
) -> None:
    """Skill profiles: llama right ≈ 70 %, gpt-4o ≈ 97 % on the word problems; target 95 %."""
    roles_ensure()
    url = f"{eval_fleet.url}/v1"
    factories.model_create(
        slug="llama-3.1-8b-local", provider_model="llama-3.1-8b-local", base_url=url, tier=1
    )
    strong = factories.model_create(
        slug="gpt-4o", provider_model="gpt-4o", base_url=url, tier=2, locality="cloud"
    )
    math = factories.task_class_create(
        slug="math", quality_target=Decimal("0.95"), prompt_retention_days=7
    )
    GraderConfig.objects.create(task_class=math, kind="numeric")
    factories.routing_table_create({math: (strong, [])})
    workload_decisions(reasoning_items, task_class="math", model=strong, count=300)

    run = run_sweep()

    assert not Proposal.objects.exists()
    outcome = run.summary["classes"]["math"]
    assert outcome["success_rate"] == pytest.approx(0.70, abs=0.07)
    samples = SweepSample.objects.filter(run=run)
    primary_rate = samples.filter(primary_success=True).count() / samples.count()
    assert primary_rate == pytest.approx(0.97, abs=0.03)
    # Harder items fail more often: the grader sees the difficulty the generator put in.
    by_prompt = {item.prompt: item.difficulty for item in reasoning_items[:300]}
    rates = {}
    for level in (1, 3):
        graded = [s for s in samples if by_prompt[s.prompt] == level]
        rates[level] = sum(bool(s.candidate_success) for s in graded) / len(graded)
    assert rates[1] > rates[3] + 0.2


def test_personal_data_is_never_sent_to_a_cloud_candidate(
    eval_registry: dict[str, Any], reasoning_items: Sequence[WorkloadItem], eval_fleet: RunningFleet
) -> None:
    reg = eval_registry
    clean = workload_decisions(
        reasoning_items, task_class="math-practice", model=reg["gpt4o"], count=40
    )
    personal = decisions_create(
        task_class="math-practice",
        model=reg["gpt4o"],
        prompts=[f"Customer Jane Roe (jane{i}@example.com) asks about 2 + {i}?" for i in range(5)],
        classification="personal",
    )
    pii = decisions_create(
        task_class="math-practice",
        model=reg["gpt4o"],
        prompts=[f"Call me on +44 20 7946 09{i:02d}: what is 3 + {i}?" for i in range(5)],
        pii_types=["phone"],
    )

    def answered() -> int:  # completions served (transient 429/500 retries not counted)
        models = eval_fleet.state.stats()["models"]
        return sum(m["ok"] for m in models.values())  # type: ignore[attr-defined]

    before = answered()

    run = run_sweep(task_class=reg["practice"])

    replayed = set(SweepSample.objects.filter(run=run).values_list("decision_id", flat=True))
    assert replayed == {d.id for d in clean}
    assert not replayed & {d.id for d in personal + pii}
    assert run.samples_skipped == 10
    assert answered() - before == 2 * len(clean)


def test_expired_prompts_are_not_replayed_and_samples_are_purged(
    eval_registry: dict[str, Any], reasoning_items: Sequence[WorkloadItem]
) -> None:
    reg = eval_registry
    kept = workload_decisions(
        reasoning_items, task_class="math-practice", model=reg["gpt4o"], count=30
    )
    workload_decisions(
        reasoning_items,
        task_class="math-practice",
        model=reg["gpt4o"],
        count=10,
        offset=30,
        age=timedelta(days=2),
        retention=timedelta(days=1),
    )
    run = run_sweep(task_class=reg["practice"])
    assert SweepSample.objects.filter(run=run).count() == len(kept)

    SweepSample.objects.filter(run=run).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert services.sweep_samples_purge() == len(kept)
    assert not SweepSample.objects.filter(prompt__isnull=False).exists()
    assert not SweepSample.objects.filter(candidate_output__isnull=False).exists()


def test_a_run_is_claimed_once(eval_registry: dict[str, Any]) -> None:
    run, _ = services.sweep_run_create(kind=SweepKind.TIER_DOWNGRADE, enqueue=False)
    assert services.sweep_claim(run.pk) is not None
    assert services.sweep_claim(run.pk) is None
    assert services.sweep_run_execute(run_id=run.pk) is None  # a second worker: no-op
    again, created = services.sweep_run_create(kind=SweepKind.TIER_DOWNGRADE, key=run.key)
    assert again.pk == run.pk and not created


def test_crashed_run_is_reaped_and_resumes_without_duplicates(
    eval_registry: dict[str, Any],
    reasoning_items: Sequence[WorkloadItem],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reg = eval_registry
    workload_decisions(reasoning_items, task_class="math-practice", model=reg["gpt4o"], count=200)
    monkeypatch.setattr("django.conf.settings.SWITCHYARD_SWEEP_CONCURRENCY", 4)  # 64 per batch
    real_heartbeat = sweep_services.sweep_heartbeat
    beats = {"n": 0}

    def crash_after_two_batches(run_id: int, token: Any, **changes: Any) -> None:
        real_heartbeat(run_id, token, **changes)
        beats["n"] += 1
        if beats["n"] == 3:  # planning beat + two batches stored
            raise SystemExit("worker killed")  # not an Exception: nothing marks the run

    monkeypatch.setattr(sweep_services, "sweep_heartbeat", crash_after_two_batches)
    run, _ = services.sweep_run_create(kind=SweepKind.TIER_DOWNGRADE, enqueue=False)
    with pytest.raises(SystemExit):
        services.sweep_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == SweepStatus.RUNNING and run.samples_done == 128
    monkeypatch.setattr(sweep_services, "sweep_heartbeat", real_heartbeat)

    assert services.sweep_reap_stale(stale_seconds=3600) == 0  # heartbeat still fresh
    later = timezone.now() + timedelta(minutes=10)
    assert services.sweep_reap_stale(now=later, stale_seconds=60) == 1
    run.refresh_from_db()
    assert run.status == SweepStatus.FAILED and "stale heartbeat" in run.error_message

    services.sweep_run_resume(run=run)
    run = services.sweep_run_execute(run_id=run.pk)  # type: ignore[assignment]
    assert run.status == SweepStatus.COMPLETED and run.claims == 2
    assert SweepSample.objects.filter(run=run).count() == 200 == run.samples_done
    assert Proposal.objects.count() == 1
    assert services.sweep_run_execute(run_id=run.pk) is None
    with pytest.raises(Exception, match="failed"):
        services.sweep_run_resume(run=run)


def test_escalation_monitor_proposes_upgrades_and_schedules_downgrade_trials(
    eval_registry: dict[str, Any],
) -> None:
    reg = eval_registry
    decisions_create(
        task_class="math-strict",
        model=reg["mistral"],
        prompts=[f"q{i}" for i in range(100)],
        escalated=[i % 5 == 0 for i in range(100)],  # 20 %
    )
    decisions_create(
        task_class="math-practice",
        model=reg["gpt4o"],
        prompts=[f"p{i}" for i in range(250)],
        escalated=[i < 2 for i in range(250)],  # 0.8 %
    )

    run = run_sweep(SweepKind.ESCALATION_MONITOR)

    upgrade = Proposal.objects.get()
    assert upgrade.change == "upgrade" and upgrade.task_class == reg["strict"]
    assert (upgrade.from_model, upgrade.to_model) == (reg["mistral"], reg["gpt4o"])
    assert upgrade.evidence["escalation_rate"] == pytest.approx(0.2)
    assert upgrade.evidence["savings_monthly_usd"] < 0  # a stronger tier costs more
    practice = run.summary["classes"]["math-practice"]
    assert practice["outcome"] == "downgrade trial scheduled"
    trial = SweepRun.objects.get(pk=practice["trial_run"])
    assert trial.kind == SweepKind.TIER_DOWNGRADE and trial.task_class == reg["practice"]

    again = run_sweep(SweepKind.ESCALATION_MONITOR)  # the next day's run: nothing duplicated
    assert Proposal.objects.count() == 1
    assert again.summary["classes"]["math-practice"]["outcome"] == "trial already ran"


def test_shadow_sweep_samples_at_the_configured_rate(
    eval_registry: dict[str, Any], reasoning_items: Sequence[WorkloadItem]
) -> None:
    reg = eval_registry
    workload_decisions(reasoning_items, task_class="math-strict", model=reg["mistral"], count=400)
    config = ShadowConfig.objects.create(
        task_class=reg["strict"], candidate_model=reg["llama"], sample_rate=Decimal("0.25")
    )
    runs = services.sweep_schedule_fire(kind=SweepKind.SHADOW)
    assert [r.shadow_config_id for r in runs] == [config.pk]
    assert services.sweep_schedule_fire(kind=SweepKind.SHADOW)[0].pk == runs[0].pk  # same slot
    run = services.sweep_run_execute(run_id=runs[0].pk)
    assert run is not None and run.status == SweepStatus.COMPLETED, run.error_message
    assert 70 <= run.samples_done <= 130
    assert run.summary["outcome"] == "below target"  # the weak model at a 95 % target
    assert not Proposal.objects.exists()


def test_shadow_sweep_of_a_prompt_template_measures_without_proposing(
    eval_registry: dict[str, Any], reasoning_items: Sequence[WorkloadItem]
) -> None:
    from evaluation.models import PromptTemplate

    reg = eval_registry
    workload_decisions(reasoning_items, task_class="math-practice", model=reg["gpt4o"], count=60)
    template = PromptTemplate.objects.create(
        slug="math", version="2", system_prompt="Show your work, end with '#### N'."
    )
    config = ShadowConfig.objects.create(
        task_class=reg["practice"], candidate_template=template, sample_rate=Decimal("1")
    )
    run, _ = services.sweep_run_create(
        kind=SweepKind.SHADOW, shadow_config=config, task_class=reg["practice"], enqueue=False
    )
    run = services.sweep_run_execute(run_id=run.pk)  # type: ignore[assignment]
    assert run.status == SweepStatus.COMPLETED and run.samples_done == 60
    assert run.summary["outcome"].startswith("measured")
    assert run.summary["success_rate"] >= 0.7  # the primary itself, with the new template
    assert not Proposal.objects.exists()


def test_a_model_url_changed_to_a_metadata_address_is_refused_during_a_sweep(
    eval_registry: dict[str, Any], reasoning_items: Sequence[WorkloadItem], eval_fleet: RunningFleet
) -> None:
    """Registration validates URLs; a row changed behind the services' back is still refused
    when the sweep calls it."""
    from controlplane.models import ModelEndpoint

    reg = eval_registry
    workload_decisions(reasoning_items, task_class="math-practice", model=reg["gpt4o"], count=40)
    ModelEndpoint.objects.filter(pk=reg["mistral"].pk).update(
        base_url="http://169.254.169.254/latest/v1"
    )
    run = run_sweep(task_class=reg["practice"])
    samples = SweepSample.objects.filter(run=run)
    assert samples.count() == 40 == run.samples_failed
    assert set(samples.values_list("candidate_status", flat=True)) == {"error"}
    assert "metadata" in run.errors[0]
    assert not Proposal.objects.exists()


def test_schema_classes_are_graded_for_valid_structured_output(
    eval_registry: dict[str, Any],
) -> None:
    """A class with an output schema asks for JSON-schema output and grades both models
    without a reference: generated invoices, where malformed or incomplete JSON fails and a
    well-formed answer with a wrong value passes (schema validity is all this grader sees)."""
    from controlplane import services as registry

    reg = eval_registry
    invoices = factories.task_class_create(
        slug="invoices",
        output_schema=INVOICE_SCHEMA,
        quality_target=Decimal("0.85"),
        prompt_retention_days=7,
    )
    version = registry.routing_version_draft_create()
    registry.route_set(version=version, task_class=invoices, primary=reg["gpt4o"])
    registry.routing_version_activate(version=version)
    items = workload_items("field-extraction")[:150]
    workload_decisions(
        items, task_class="invoices", model=reg["gpt4o"], count=150, with_reference=False
    )

    run = run_sweep(task_class=invoices)

    outcome = run.summary["classes"]["invoices"]
    assert outcome["candidate"] == "mistral-small-hosted"
    assert outcome["success_rate"] == pytest.approx(0.96, abs=0.04)
    proposal = Proposal.objects.get(task_class=invoices)
    assert proposal.evidence["graded_against"] == ["none"]  # schema validity needs no reference
    assert proposal.evidence["primary_success_rate"] == pytest.approx(0.98, abs=0.03)
    samples = SweepSample.objects.filter(run=run)
    failed = samples.filter(candidate_success=False)
    assert failed.exists()
    assert all(s.detail for s in failed)  # why: not JSON, a missing field, a wrong type
    by_prompt = {item.prompt: item for item in items}
    valid_but_wrong = [
        s
        for s in samples.filter(candidate_success=True)
        if not by_prompt[s.prompt].is_correct(s.candidate_output or "")
    ]
    assert valid_but_wrong  # a weak grader: right shape, wrong total or vendor still passes
