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
        "evaluation: condensed vs full context (weekly)",
        "evaluation.tasks.condense_sweeps",
        "0 5 * * 2",
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


# The demo class routed by a learned router: ticket-triage's first attempts follow the fleet's
# skill profiles (telemetry.demo_traffic), so the small local model fails the hard tickets
# (a second topic, shouting) and the router has something real to learn; three tiers.
DEMO_LEARNED_CLASS = "ticket-triage"
DEMO_REVIEWER = "reviewer"  # the demo's Reviewer (controlplane.demo.USERS)


def demo_learned_load() -> dict[str, Any]:
    """Route the demo's :data:`DEMO_LEARNED_CLASS` by a learned router through the normal
    flow: train it on the class's graded demo traffic (``learned_router_train``), propose it
    with its evidence (``learned_router_propose``) and approve it as the demo Reviewer
    (``proposal_approve``: audited; a new routing-table version whose route has strategy
    learned, the router active). Idempotent: nothing is done once the class has a learned
    router. Needs the demo registry, users and traffic."""
    from django.contrib.auth.models import User

    from evaluation.models import LearnedRouter
    from evaluation.services.learned import learned_router_propose, learned_router_train

    task_class = TaskClass.objects.filter(slug=DEMO_LEARNED_CLASS).first()
    reviewer = User.objects.filter(username=DEMO_REVIEWER).first()
    if task_class is None or reviewer is None:
        return {"status": "no demo registry"}
    if LearnedRouter.objects.filter(task_class=task_class).exists():
        return {"status": "present"}
    started = timezone.now()
    router = learned_router_train(task_class)
    if router is None:
        return {"status": "not enough graded traffic"}
    trained_s = (timezone.now() - started).total_seconds()
    proposal = learned_router_propose(router)
    if proposal is None:  # an open proposal for the class already waits for review
        return {"status": "proposal open", "router": router.version}
    held_out = ", ".join(
        f"{slug} Brier {m['brier']:.3f} vs base rate {m['brier_base']:.3f}"
        for slug, m in router.metrics.items()
        if slug in router.coefficients and isinstance(m, dict) and m.get("brier") is not None
    )
    comment = f"demo review: held out {held_out or 'nothing'}"
    applied = services.proposal_approve(proposal=proposal, user=reviewer, comment=comment)
    return {
        "status": "applied",
        "router": router.version,
        "proposal": str(applied.public_id),
        "version": applied.applied_version.number if applied.applied_version else None,
        "train_s": round(trained_s, 1),
        "total_s": round((timezone.now() - started).total_seconds(), 1),
    }


# Live requests the demo loader sends once its data is in (``demo_live_load``): tickets for
# the learned route, customer messages for the semantic one (complaints match its
# "upset-customer" route), then one cascade check of a cheap attempt.
DEMO_LIVE_TICKETS = 12
DEMO_LIVE_MESSAGES = 10
DEMO_SEMANTIC_CLASS = "intent-detection"


def demo_live_load(secret: str) -> dict[str, Any]:
    """Live decisions through the decision pipeline that answers POST /api/v1/decisions
    (``routing.services.decision_create``, with the demo key ``secret``), so the explorer
    shows decisions made by the learned router and the semantic routes, and one cascade
    check (``evaluation.services.cascade.cascade_check``, what POST
    /api/v1/decisions/{id}/cascade runs) of the cheap model's real answer from the replay
    fleet (skipped when the fleet does not answer). Returns counts by strategy."""
    import orjson

    from evaluation.client import chat_complete
    from evaluation.selectors import model_target
    from evaluation.services.cascade import cascade_check
    from evaluation.workload import workload_items
    from routing.schemas import CascadeInput
    from routing.services import decision_create
    from routing.snapshot import registry_cache

    with transaction.atomic():
        demo_graders_load()  # the cascade call reads what the class's answers look like
    registry_cache.invalidate()  # decide on the table just approved, not a cached one
    authorization = f"Bearer {secret}"
    strategies: dict[str, int] = {}
    routed: list[tuple[int, str, str, str]] = []  # learned: (tier, decision id, model, prompt)
    requests = [
        (DEMO_LEARNED_CLASS, item.prompt, "triage-v3")
        for item in workload_items(DEMO_LEARNED_CLASS)[-DEMO_LIVE_TICKETS:]
    ]
    messages = workload_items(DEMO_SEMANTIC_CLASS)
    complaints = [i for i in messages if i.reference == "complaint"][:3]
    others = [i for i in messages[-40:] if i.reference != "complaint"]
    requests += [
        (DEMO_SEMANTIC_CLASS, item.prompt, "intent-v2")
        for item in complaints + others[: DEMO_LIVE_MESSAGES - len(complaints)]
    ]
    for task_class, prompt, template in requests:
        body = {
            "task_class": task_class,
            "prompt": prompt,
            "prompt_template": {"id": template, "version": "1"},  # as in the demo traffic
        }
        _, answer = decision_create(authorization=authorization, body=orjson.dumps(body))
        strategies[answer["strategy"]] = strategies.get(answer["strategy"], 0) + 1
        if task_class == DEMO_LEARNED_CLASS:
            model = answer["model"]
            routed.append((model["tier"], answer["decision_id"], model["slug"], prompt))
    cascade: dict[str, Any] | None = None
    if routed and fleet_reachable():  # the cheapest attempt: the model answers, is it enough?
        _, decision_id, slug, prompt = min(routed, key=lambda r: r[0])
        attempt = chat_complete(
            model_target(ModelEndpoint.objects.get(slug=slug)),
            [{"role": "user", "content": prompt}],
            max_tokens=64,
            retries=1,
        )
        if attempt.status == "ok":
            record = DecisionRecord.objects.get(id=decision_id)
            cascade = cascade_check(
                record=record,
                attempt=CascadeInput(output=attempt.content, finish_reason=attempt.finish_reason),
            )
    return {"strategies": strategies, "cascade": cascade["action"] if cascade else None}
