"""Celery tasks of the telemetry app: thin wrappers around the rollup and budget services."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from telemetry.budgets import budget_leases_expire
from telemetry.rollups import rollups_refresh


@shared_task(name="telemetry.tasks.rollups_refresh_task", ignore_result=True)
def rollups_refresh_task() -> dict[str, Any]:
    """Recompute the rollup hours touched since the last run (skips if another worker is)."""
    return rollups_refresh()


@shared_task(name="telemetry.tasks.budget_leases_expire_task", ignore_result=True)
def budget_leases_expire_task() -> int:
    """Release what expired budget leases still hold: holds whose outcome never arrived
    (SWITCHYARD_RESERVATION_TTL_S) and the unused part of a holder that died."""
    return budget_leases_expire()
