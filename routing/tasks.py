"""Celery tasks of the decision path: thin wrappers around services."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from telemetry.retention import decisions_maintain


@shared_task(name="routing.tasks.decisions_maintain_task", ignore_result=True)
def decisions_maintain_task() -> dict[str, Any]:
    """Hourly: decision partitions ahead and behind, expired prompts purged."""
    return decisions_maintain()
