"""Retention of decision data: idempotency keys past their window, whole partitions past the
retention period, prompts past theirs."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.utils import timezone

from telemetry.partitions import partitions_maintain
from telemetry.recorder import idempotency_window


def decision_prompts_purge() -> int:
    """Forget stored prompts whose task class's retention has passed."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE telemetry_decision SET prompt = NULL, prompt_expires_at = NULL "
            "WHERE prompt IS NOT NULL AND prompt_expires_at < now()"
        )
        return int(cursor.rowcount)


def idempotency_keys_purge() -> int:
    """Delete idempotency keys older than the window (SWITCHYARD_IDEMPOTENCY_WINDOW_HOURS,
    never longer than decision retention), so keys go before the decisions they point to."""
    cutoff = timezone.now() - idempotency_window()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM telemetry_decision_idempotency WHERE created_at < %s", [cutoff])
        return int(cursor.rowcount)


def decisions_maintain() -> dict[str, Any]:
    """Expired idempotency keys purged, partitions ahead, old partitions dropped, expired
    prompts purged."""
    keys_purged = idempotency_keys_purge()
    result: dict[str, Any] = dict(partitions_maintain())
    result["idempotency_keys_purged"] = keys_purged
    result["prompts_purged"] = decision_prompts_purge()
    return result
