"""Demo evaluation data: graders, the judge prompt, sweep schedules and a real first sweep.

``demo_evaluation_load()`` is idempotent. Call it after the demo registry and the demo
traffic exist: the first weekly tier-downgrade sweep replays, for every class routed above
tier 1, the most recent stored prompts (the generated workload, ``evaluation.workload``) on
the models one tier down through the replay fleet, grades them against the recorded
reference answers, and proposes the cheapest model whose 95 % lower bound reaches the
class's quality target. With the fleet's skill profiles, multi-step-reasoning moves from
gpt-4o to mistral-small-hosted (gpt-4o-mini is tried first and falls short), while
sql-generation, long-report-synthesis and customer-reply-draft stay where they are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
from django.db import transaction
from django.db.models.signals import post_save
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from controlplane.models import DataPolicy, ModelEndpoint, TaskClass
from evaluation import services
from evaluation.graders import DEFAULT_JUDGE_TEMPLATE
from evaluation.models import (
    GraderConfig,
    JudgePrompt,
    Proposal,
    SweepKind,
    SweepRun,
    SweepStatus,
)
from evaluation.workload import SQL_READ_ONLY_PATTERN
from telemetry.models import DecisionRecord

logger = logging.getLogger(__name__)

DEMO_SWEEP_KEY = "demo:tier_downgrade:first-week"
DEMO_SWEEP_SAMPLE_SIZE = 200  # per class and candidate
# The classes routed above tier 1 in the demo table, the quick numeric one first so that its
# proposal shows within seconds; the judge-graded ones (four calls a sample) follow.
DEMO_SWEEP_CLASSES = (
    "multi-step-reasoning",
    "sql-generation",
    "customer-reply-draft",
    "long-report-synthesis",
)
PROPOSAL_READY = "Proposal ready:"
DEMO_SWEEP_DELAY_S = 30  # when queued: give `make run` time to start the fleet

# name → (task, crontab "m h dom mon dow" or None, interval seconds or None, kwargs)
SCHEDULES: list[tuple[str, str, str | None, int | None, dict[str, Any]]] = [
    (
        "evaluation: tier-downgrade sweep (weekly)",
        "evaluation.tasks.tier_downgrade_sweep",
        "0 3 * * 1",
        None,
        {},
    ),
    (
        "evaluation: escalation-rate monitor (daily)",
        "evaluation.tasks.escalation_monitor",
        "30 4 * * *",
        None,
        {},
    ),
    (
        "evaluation: shadow sweeps (hourly)",
        "evaluation.tasks.shadow_sweeps",
        "15 * * * *",
        None,
        {},
    ),
    ("evaluation: reap stale sweep runs", "evaluation.tasks.sweep_reap_stale", None, 60, {}),
    (
        "evaluation: purge expired sweep samples",
        "evaluation.tasks.sweep_samples_purge",
        "45 * * * *",
        None,
        {},
    ),
]

# task class → (grader kind, params); the other classes (prose) go to the LLM judge.
GRADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "multi-step-reasoning": ("numeric", {}),
    "field-extraction": ("json_schema", {}),
    "intent-detection": ("normalised", {}),
    "ticket-triage": ("exact", {}),
    "short-summary": ("similarity", {"threshold": 0.5}),
    "sql-generation": ("regex", {"pattern": SQL_READ_ONLY_PATTERN, "full": True}),
}
JUDGE_MODEL, LOCAL_JUDGE_MODEL = "gpt-4o", "qwen2.5-7b-local"


def sweep_schedules_ensure() -> list[PeriodicTask]:
    """The default sweep schedules; existing ones (possibly edited by Operators) are kept."""
    tasks = []
    for name, task, cron, every, kwargs in SCHEDULES:
        existing = PeriodicTask.objects.filter(name=name).first()
        if existing is not None:
            tasks.append(existing)
            continue
        fields: dict[str, Any] = {"task": task, "kwargs": json.dumps(kwargs)}
        if cron is not None:
            minute, hour, dom, month, dow = cron.split()
            fields["crontab"], _ = CrontabSchedule.objects.get_or_create(
                minute=minute,
                hour=hour,
                day_of_month=dom,
                month_of_year=month,
                day_of_week=dow,
                timezone="UTC",
            )
        else:
            fields["interval"], _ = IntervalSchedule.objects.get_or_create(
                every=every, period=IntervalSchedule.SECONDS
            )
        tasks.append(PeriodicTask.objects.create(name=name, **fields))
    return tasks


def demo_graders_load() -> None:
    prompt, _ = JudgePrompt.objects.get_or_create(
        slug="answer-quality", version=1, defaults={"template": DEFAULT_JUDGE_TEMPLATE}
    )
    judges = {
        m.slug: m for m in ModelEndpoint.objects.filter(slug__in=[JUDGE_MODEL, LOCAL_JUDGE_MODEL])
    }
    for task_class in TaskClass.objects.all():
        if GraderConfig.objects.filter(task_class=task_class).exists():
            continue
        kind, params = GRADERS.get(task_class.slug, ("llm_judge", {"threshold": 0.5}))
        judge = None
        if kind == "llm_judge":
            # Personal data never leaves: a local-only class is judged by a local model.
            local = task_class.data_policy == DataPolicy.LOCAL_ONLY
            judge = judges.get(LOCAL_JUDGE_MODEL if local else JUDGE_MODEL)
            if judge is None:
                continue
        GraderConfig.objects.create(
            task_class=task_class,
            kind=kind,
            params=params,
            judge_model=judge,
            judge_prompt=prompt if judge else None,
        )


def fleet_reachable() -> bool:
    model = ModelEndpoint.objects.filter(status="active").first()
    if model is None:
        return False
    health = model.base_url.rstrip("/").removesuffix("/v1") + "/healthz"
    try:
        return httpx.get(health, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def demo_sweep_start(*, run_now: bool | None = None) -> SweepRun | None:
    """The demo's first tier-downgrade sweep (every class): run now when the fleet answers,
    else queued for the worker."""
    if not TaskClass.objects.exists():
        return None
    if run_now is None:
        run_now = fleet_reachable()
    run, created = services.sweep_run_create(
        kind=SweepKind.TIER_DOWNGRADE,
        key=DEMO_SWEEP_KEY,
        params={
            "sample_size": DEMO_SWEEP_SAMPLE_SIZE,
            "classes": list(DEMO_SWEEP_CLASSES),
            "reason": "demo: first weekly sweep",
        },
        enqueue=False,
    )
    if run.status == SweepStatus.FAILED:
        run = services.sweep_run_resume(run=run, countdown=DEMO_SWEEP_DELAY_S)
    elif created and run_now:
        return services.sweep_run_execute(run_id=run.pk)
    elif created:
        services.sweep_run_enqueue(run=run, countdown=DEMO_SWEEP_DELAY_S)
    return run


@contextmanager
def proposals_announce(base_url: str, say: Callable[[str], object]) -> Iterator[None]:
    """While active, say ``Proposal ready: <url>`` as each new proposal is committed (the
    launcher echoes these lines from the demo log)."""

    def announce(sender: type[Proposal], instance: Proposal, created: bool, **_: Any) -> None:
        if created:
            url = base_url.rstrip("/") + reverse("proposal-detail", args=[instance.public_id])
            transaction.on_commit(lambda: say(f"{PROPOSAL_READY} {url} ({instance.title})"))

    post_save.connect(announce, sender=Proposal, weak=False)
    try:
        yield
    finally:
        post_save.disconnect(announce, sender=Proposal)


def demo_evaluation_load(*, run_now: bool | None = None) -> dict[str, Any]:
    with transaction.atomic():
        schedules = sweep_schedules_ensure()
        demo_graders_load()
    run = demo_sweep_start(run_now=run_now)
    return {
        "schedules": len(schedules),
        "graders": GraderConfig.objects.count(),
        "demo_sweep": run.pk if run else None,
        "demo_sweep_status": run.status if run else None,
    }


DESK_DRAFTS: tuple[tuple[str, dict[str, Any], int], ...] = (
    (
        "Dear customer,\n\nI am sorry your order arrived damaged. We will send a replacement "
        "today and you will not need to return the damaged item.\n\nKind regards,\nSupport",
        {
            "customer_message": "The vase arrived in pieces. This is the second time!!",
            "order": 88123,
        },
        240,
    ),
    (
        "Hello,\n\nWe have approved a full refund of 149.00 EUR to your original payment "
        "method; it arrives within 5 working days.\n\nBest,\nSupport",
        {"customer_message": "Cancel it and give me my money back.", "order": 88140},
        30,
    ),
    (
        "Hi,\n\nThanks for your patience. Our engineers found the cause of the outage and "
        "your account is credited with one month of service.\n\nSupport",
        {"customer_message": "Your service was down for 6 hours during our launch.", "plan": "pro"},
        120,
    ),
)
DESK_LEAKY_OUTPUT = (
    "Hello,\n\nI have forwarded your complaint to our billing lead, maria.keller@example.com, "
    "who will call you back today. Your refund is guaranteed.\n\nSupport"
)


def demo_desk_load(task_class: str = "customer-reply-draft") -> dict[str, int]:
    """A few pending handoffs (one past its SLA) and a failed output check that put a leaky
    draft on the desk (idempotent: nothing is added once the desk has items)."""
    from evaluation.models import Handoff, OutputCheckAction, OutputCheckPolicy
    from evaluation.services.checks import output_check_run
    from evaluation.services.handoffs import HandoffSubmission, handoff_submit

    if Handoff.objects.exists():
        return {"handoffs": 0, "checks": 0}
    decisions = list(
        DecisionRecord.objects.filter(task_class=task_class).order_by("-created_at")[:4]
    )
    if len(decisions) < 4:
        return {"handoffs": 0, "checks": 0}
    klass = TaskClass.objects.get(slug=task_class)
    OutputCheckPolicy.objects.update_or_create(
        task_class=klass,
        defaults={
            "forbidden_terms": ["guaranteed", "legal advice"],
            "regex_rules": [{"name": "no-card-numbers", "pattern": r"\b(?:\d[ -]?){13,19}\b"}],
            "max_chars": 4000,
            "on_failure": OutputCheckAction.HANDOFF,
            "handoff_sla_minutes": 60,
        },
    )
    now = timezone.now()
    with transaction.atomic():
        for (draft, context, sla), record in zip(DESK_DRAFTS, decisions, strict=False):
            handoff, _ = handoff_submit(
                record=record,
                submission=HandoffSubmission(draft=draft, context=context, sla_minutes=sla),
            )
            # Spread the ages: the refund draft has waited past its 30-minute SLA.
            waited = timedelta(minutes=45 if sla == 30 else 10)
            Handoff.objects.filter(pk=handoff.pk).update(
                created_at=now - waited, due_at=now - waited + timedelta(minutes=sla)
            )
        check = output_check_run(
            record=decisions[3],
            output=DESK_LEAKY_OUTPUT,
            input_text="I want my money back for order 88151.",
        )
    return {"handoffs": Handoff.objects.count(), "checks": 0 if check.passed else 1}
