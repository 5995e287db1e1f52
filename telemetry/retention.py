"""Retention of decision data: idempotency keys past their window, whole partitions past the
retention period, free text (prompt, retrieval query, metadata strings) past the task class's
prompt retention."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.utils import timezone

from telemetry.partitions import partitions_maintain
from telemetry.recorder import idempotency_window

# Every free-text field expires with the prompt (routing.pii.request_free_text_stored decides
# what is stored and sets prompt_expires_at): the prompt, the retrieval query and the string
# values of the metadata (keys, numbers and booleans stay; evaluation reads
# metadata["reference_answer"] only while the prompt is kept).
_PURGE_SQL = """
UPDATE telemetry_decision SET
    prompt = NULL,
    prompt_expires_at = NULL,
    retrieval_query = '',
    metadata = CASE
        WHEN jsonb_typeof(metadata) = 'object' THEN (
            SELECT coalesce(
                jsonb_object_agg(
                    entry.key,
                    CASE WHEN jsonb_typeof(entry.value) = 'string' THEN 'null'::jsonb
                         ELSE entry.value END
                ),
                '{}'::jsonb
            )
            FROM jsonb_each(metadata) AS entry
        )
        ELSE metadata
    END
WHERE prompt_expires_at < now()
"""


def decision_prompts_purge() -> int:
    """Forget the prompts, retrieval queries and metadata strings whose retention has passed."""
    with connection.cursor() as cursor:
        cursor.execute(_PURGE_SQL)
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
