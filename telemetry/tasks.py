"""Celery tasks of the telemetry app: thin wrappers around the rollup and budget services."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from telemetry.budgets import reservations_expire
from telemetry.rollups import rollups_refresh


@shared_task(name="telemetry.tasks.rollups_refresh_task", ignore_result=True)
def rollups_refresh_task() -> dict[str, Any]:
    """Recompute the rollup hours touched since the last run (skips if another worker is)."""
    return rollups_refresh()


@shared_task(name="telemetry.tasks.reservations_expire_task", ignore_result=True)
def reservations_expire_task() -> int:
    """Release budget reservations whose outcome never arrived (SWITCHYARD_RESERVATION_TTL_S)."""
    return reservations_expire()
