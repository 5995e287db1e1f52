"""Celery tasks of the telemetry app: thin wrappers around the rollup service."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from telemetry.rollups import rollups_refresh


@shared_task(name="telemetry.tasks.rollups_refresh_task", ignore_result=True)
def rollups_refresh_task() -> dict[str, Any]:
    """Recompute the rollup hours touched since the last run (skips if another worker is)."""
    return rollups_refresh()
