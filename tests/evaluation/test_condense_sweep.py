"""The condensing sweep: a class's long-context requests replayed on the frontier model
over real HTTP (the replay fleet), condensed by the local model with the gateway's own
condense code and in full, both graded with the class's grader; the comparison is stored
on the run, shown on the sweeps page and usable as evidence."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from controlplane.generation import generation_bump
from evaluation.demo import sweep_schedules_ensure
from evaluation.fleet import RunningFleet
from evaluation.models import GraderConfig, SweepKind, SweepRun, SweepSample, SweepStatus
from evaluation.replay import PromptShape, condensable_tokens
from evaluation.tasks import condense_sweeps
from evaluation.workload import WorkloadItem
from routing.condense import prompt_messages, transcript_line
from routing.snapshot import registry_cache
from tests import factories
from tests.evaluation.conftest import decisions_create
from tests.evaluation.test_sweeps import run_sweep

LOCAL = "llama-3.1-8b-local"
DOCUMENT = " ".join(
    f"Clause {i}: the supplier delivers batch {i} within {i + 3} working days, penalties "
    f"of {i}% apply after that, and the buyer may cancel batch {i} in writing."
    for i in range(1, 25)
)


def _conversation(question: str) -> str:
    """A prompt as the gateway records it: its messages as transcript lines."""
    lines = [
        transcript_line("system", f"Contract excerpt:\n{DOCUMENT}"),
        transcript_line("user", "Which clause covers batch 7?"),
        transcript_line("assistant", "Clause 7 covers batch 7."),
        transcript_line("user", question),
    ]
    return "\n".join(lines)


@pytest.fixture
def research(
    eval_registry: dict[str, Any], reasoning_items: Sequence[WorkloadItem]
) -> dict[str, Any]:
    reg = eval_registry
    research = factories.task_class_create(
        slug="research",
        condense_above_tokens=200,
        quality_target=Decimal("0.80"),
        prompt_retention_days=30,
    )
    GraderConfig.objects.create(task_class=research, kind="numeric")
    version = factories.routing_table_create(
        {
            reg["practice"]: (reg["gpt4o"], []),
            reg["strict"]: (reg["mistral"], ["gpt-4o"]),
            research: (reg["gpt4o"], []),
        }
    )
    generation_bump()
    registry_cache.invalidate()
    items = reasoning_items[:40]
    long = decisions_create(
        task_class="research",
        model=reg["gpt4o"],
        prompts=[_conversation(item.prompt) for item in items],
        references=[item.reference for item in items],
    )
    short = decisions_create(
        task_class="research",
        model=reg["gpt4o"],
        prompts=[item.prompt for item in reasoning_items[40:45]],
        references=[item.reference for item in reasoning_items[40:45]],
    )
    return {**reg, "research": research, "version": version, "long": long, "short": short}


def _answered(fleet: RunningFleet, slug: str) -> int:
    models = fleet.state.stats()["models"]
    return int(models.get(slug, {}).get("ok", 0))  # type: ignore[attr-defined]


def test_a_recorded_conversation_is_replayed_as_its_messages() -> None:
    prompt = _conversation("What is 2 + 2?\nShow your work.")
    messages = prompt_messages(prompt)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == f"Contract excerpt:\n{DOCUMENT}"
    assert messages[-1]["content"] == "What is 2 + 2?\nShow your work."
    # A plain prompt is one user message: nothing to condense.
    assert prompt_messages("What is 2 + 2?") == [{"role": "user", "content": "What is 2 + 2?"}]
    assert condensable_tokens("What is 2 + 2?", PromptShape(), 10) == 0
    assert condensable_tokens(prompt, PromptShape(), 200) > 200
    assert condensable_tokens(prompt, PromptShape(), 10_000) == 0


def test_condensed_against_full_context_on_the_class_grader(
    research: dict[str, Any], eval_fleet: RunningFleet
) -> None:
    local_before = _answered(eval_fleet, LOCAL)
    run = run_sweep(kind=SweepKind.CONDENSE, task_class=research["research"])

    assert run.status == SweepStatus.COMPLETED, run.error_message
    # Only the requests whose context the gateway would condense are replayed.
    assert (run.samples_planned, run.samples_done) == (40, 40)
    samples = SweepSample.objects.filter(run=run)
    assert {s.decision_id for s in samples} == {d.id for d in research["long"]}
    assert _answered(eval_fleet, LOCAL) - local_before == 40, "one condensing call each"
    for sample in samples:
        assert sample.candidate_model == sample.primary_model == "gpt-4o"
        assert sample.condensed["model"] == LOCAL
        assert sample.condensed["input_tokens_before"] > 200
        assert 0 < sample.condensed["input_tokens_after"] < sample.condensed["input_tokens_before"]
        # The frontier model was sent fewer tokens with the context condensed.
        assert 0 < sample.candidate_input_tokens < sample.primary_input_tokens
        assert sample.candidate_success is not None and sample.primary_success is not None

    result = run.summary["classes"]["research"]
    assert result["outcome"] == "measured"
    evidence = result["condense"]
    assert evidence["kind"] == "condense" and evidence["sweep_run"] == run.pk
    assert evidence["condenser"] == LOCAL and evidence["to_model"] == "gpt-4o"
    assert evidence["sample_size"] == evidence["compared"] == evidence["condensed"] == 40
    assert evidence["graded_against"] == ["reference"]
    # The fleet answers from the question, which condensing keeps: the same quality.
    assert evidence["success_rate"] == evidence["full_success_rate"] >= 0.85
    assert evidence["quality_delta"] == 0
    assert 0.5 <= evidence["interval_low"] < evidence["success_rate"]
    full, condensed = evidence["input_tokens_full"], evidence["input_tokens_condensed"]
    assert full == sum(s.primary_input_tokens for s in samples)
    assert condensed == sum(s.candidate_input_tokens for s in samples)
    assert evidence["input_tokens_saved_share"] == round(1 - condensed / full, 4) > 0.5
    # Cost: the condensed frontier calls plus the condensing calls against the full calls.
    gpt4o = research["gpt4o"].price_at(run.created_at)
    cost_full = sum(
        (
            (s.primary_input_tokens * gpt4o.input_usd_per_mtok
             + s.primary_output_tokens * gpt4o.output_usd_per_mtok) / Decimal(1_000_000)
            for s in samples
        ),
        Decimal(0),
    )  # fmt: skip
    assert Decimal(evidence["cost_full_usd"]) == cost_full.quantize(Decimal("0.000001"))
    condensing = Decimal(evidence["condensing_cost_usd"])
    assert condensing > 0
    saved = Decimal(evidence["saved_usd"])
    assert saved > 0
    assert saved == Decimal(evidence["cost_full_usd"]) - Decimal(evidence["cost_condensed_usd"])

    # The sweeps page shows the comparison.
    viewer = Client()
    viewer.force_login(factories.user_create("Viewer"))
    html = viewer.get(reverse("sweeps")).content.decode()
    assert 'data-condense="research"' in html
    assert f"input tokens {full} → {condensed}" in html
    assert f"saved ${evidence['saved_usd']}" in html


def test_a_failing_condenser_leaves_the_request_whole_and_says_so(
    research: dict[str, Any], eval_fleet: RunningFleet
) -> None:
    eval_fleet.state.configure(LOCAL, fail_rate=None, down=True)
    try:
        run = run_sweep(
            kind=SweepKind.CONDENSE, task_class=research["research"], params={"sample_size": 5}
        )
    finally:
        eval_fleet.state.reset()
    assert run.status == SweepStatus.COMPLETED, run.error_message
    evidence = run.summary["classes"]["research"]["condense"]
    assert evidence["condensed"] == 0 and evidence["condense_failures"] == 5
    assert evidence["input_tokens_condensed"] == evidence["input_tokens_full"]
    assert Decimal(evidence["saved_usd"]) == 0
    for sample in SweepSample.objects.filter(run=run):
        assert sample.condensed["error"].startswith("error")


def test_classes_that_do_not_condense_are_not_swept_and_operators_can_start_one(
    research: dict[str, Any],
) -> None:
    run = run_sweep(kind=SweepKind.CONDENSE, task_class=research["practice"])
    assert run.status == SweepStatus.COMPLETED
    assert "does not condense" in run.summary["classes"]["math-practice"]["outcome"]
    assert not SweepSample.objects.filter(run=run).exists()
    operator = Client()
    operator.force_login(factories.user_create("Operator"))
    response = operator.post(
        reverse("sweep-start"), {"kind": SweepKind.CONDENSE, "task_class": "research"}
    )
    assert response.status_code == 302
    started = SweepRun.objects.exclude(pk=run.pk).get()
    assert started.kind == SweepKind.CONDENSE and started.task_class == research["research"]
    # The weekly schedule fires one run over the classes that condense.
    fired = condense_sweeps()
    assert SweepRun.objects.get(pk=fired[0]).kind == SweepKind.CONDENSE
    sweep_schedules_ensure()
    html = operator.get(reverse("sweeps")).content.decode()
    assert "evaluation.tasks.condense_sweeps" in html
    assert '<option value="condense">condensed vs full context</option>' in html
