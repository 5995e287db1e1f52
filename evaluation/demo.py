"""Demo evaluation data: graders, the judge prompt, sweep schedules and a real first sweep.

``demo_evaluation_load()`` is idempotent. Call it after the demo registry and the demo
traffic exist: the tier-downgrade sweep it starts replays the demo's stored
multi-step-reasoning prompts (GSM8K) on the tier-2 models through the replay fleet, graded
against the current tier-3 primary's answers, and proposes the cheapest tier-2 model whose
95 % lower bound reaches the class's quality target.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from controlplane.models import DataPolicy, ModelEndpoint, TaskClass
from evaluation import services
from evaluation.graders import DEFAULT_JUDGE_TEMPLATE
from evaluation.models import GraderConfig, JudgePrompt, SweepKind, SweepRun, SweepStatus

logger = logging.getLogger(__name__)

DEMO_SWEEP_KEY = "demo:tier_downgrade:multi-step-reasoning"
DEMO_SWEEP_CLASS = "multi-step-reasoning"
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

# task class → (grader kind, params); prose classes go to the LLM judge.
GRADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "multi-step-reasoning": ("numeric", {}),
    "field-extraction": ("json_schema", {}),
    "intent-detection": ("normalised", {}),
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
    """The demo's first tier-downgrade sweep: run now when the fleet answers, else queued."""
    task_class = TaskClass.objects.filter(slug=DEMO_SWEEP_CLASS).first()
    if task_class is None:
        return None
    if run_now is None:
        run_now = fleet_reachable()
    run, created = services.sweep_run_create(
        kind=SweepKind.TIER_DOWNGRADE,
        key=DEMO_SWEEP_KEY,
        task_class=task_class,
        params={"sample_size": 400, "reason": "demo"},
        enqueue=False,
    )
    if run.status == SweepStatus.FAILED:
        run = services.sweep_run_resume(run=run, countdown=DEMO_SWEEP_DELAY_S)
    elif created and run_now:
        return services.sweep_run_execute(run_id=run.pk)
    elif created:
        services.sweep_run_enqueue(run=run, countdown=DEMO_SWEEP_DELAY_S)
    return run


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
