"""Retention of decision data: whole partitions past the retention period, prompts past theirs."""

from __future__ import annotations

from typing import Any

from django.db import connection

from telemetry.partitions import partitions_maintain


def decision_prompts_purge() -> int:
    """Forget stored prompts whose task class's retention has passed."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE telemetry_decision SET prompt = NULL, prompt_expires_at = NULL "
            "WHERE prompt IS NOT NULL AND prompt_expires_at < now()"
        )
        return int(cursor.rowcount)


def decisions_maintain() -> dict[str, Any]:
    """Partitions ahead, old partitions dropped, expired prompts purged."""
    result: dict[str, Any] = dict(partitions_maintain())
    result["prompts_purged"] = decision_prompts_purge()
    return result
