"""Celery tasks for evaluation: thin wrappers that call the services.

Schedules live in the database (django-celery-beat); Operators edit them in Django admin.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from controlplane.audit import audit_actor
from controlplane.models import TaskClass
from evaluation import services
from evaluation.models import SweepKind


@shared_task(acks_late=True, reject_on_worker_lost=True)
def sweep_run_execute(run_id: int) -> str:
    """Execute one run (claimed atomically: a redelivered message is a no-op)."""
    with audit_actor(label="sweep"):
        run = services.sweep_run_execute(run_id=run_id)
    return run.status if run is not None else "not claimed"


def _fire(kind: str, task_class: str | None, params: dict[str, Any] | None) -> list[int]:
    scope = TaskClass.objects.get(slug=task_class) if task_class else None
    runs = services.sweep_schedule_fire(kind=kind, task_class=scope, params=params)
    return [run.pk for run in runs]


@shared_task
def tier_downgrade_sweep(task_class: str | None = None, **params: Any) -> list[int]:
    return _fire(SweepKind.TIER_DOWNGRADE, task_class, params)


@shared_task
def escalation_monitor(task_class: str | None = None, **params: Any) -> list[int]:
    return _fire(SweepKind.ESCALATION_MONITOR, task_class, params)


@shared_task
def condense_sweeps(task_class: str | None = None, **params: Any) -> list[int]:
    """Condensed against full context, for the classes that condense (or the one named)."""
    return _fire(SweepKind.CONDENSE, task_class, params)


@shared_task
def shadow_sweeps(**params: Any) -> list[int]:
    return _fire(SweepKind.SHADOW, None, params)


@shared_task
def sweep_reap_stale() -> int:
    return services.sweep_reap_stale()


@shared_task
def sweep_samples_purge() -> int:
    return services.sweep_samples_purge()


@shared_task(name="evaluation.tasks.graded_counts_refresh_task", ignore_result=True)
def graded_counts_refresh_task() -> int:
    """Recompute the graded success counts behind decisions' confidence."""
    from evaluation.services.calibration import graded_counts_refresh

    return graded_counts_refresh()


@shared_task(name="evaluation.tasks.learned_routers_train_task", ignore_result=True)
def learned_routers_train_task() -> list[int]:
    """Train a candidate learned router per class with enough graded data; propose the good
    ones (a Reviewer approves)."""
    from evaluation.services.learned import learned_routers_train_all

    with audit_actor(label="learned-router-training"):
        return [r.pk for r in learned_routers_train_all()]


@shared_task(name="evaluation.tasks.learned_thresholds_calibrate_task", ignore_result=True)
def learned_thresholds_calibrate_task() -> list[str]:
    """Re-calibrate learned-router thresholds to their targets on recent traffic; a moved
    threshold becomes a proposal (a Reviewer approves)."""
    from evaluation.services.thresholds import learned_thresholds_calibrate_all

    with audit_actor(label="threshold-calibration"):
        return [f"{r['task_class']}: {r['status']}" for r in learned_thresholds_calibrate_all()]


@shared_task(acks_late=True, reject_on_worker_lost=True)
def webhook_deliver(delivery_id: int) -> str:
    """One delivery attempt; on failure the next is scheduled with backoff and jitter."""
    from evaluation.services.handoffs import webhook_delivery_attempt

    delay = webhook_delivery_attempt(delivery_id)
    if delay is None:
        return "done"
    webhook_deliver.apply_async((delivery_id,), countdown=delay)
    return f"retry in {delay:.2f} s"


@shared_task
def webhook_deliveries_due() -> int:
    """Celery beat: re-enqueue pending deliveries whose retry message was lost."""
    from evaluation.services.handoffs import webhook_deliveries_due as due

    return len(due())
