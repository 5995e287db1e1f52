"""Retention of decision data: whole partitions past the retention period, free text past the
task class's prompt retention."""

from __future__ import annotations

from typing import Any

from django.db import connection

from telemetry.partitions import partitions_maintain

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


def decisions_maintain() -> dict[str, Any]:
    """Partitions ahead, old partitions dropped, expired prompts purged."""
    result: dict[str, Any] = dict(partitions_maintain())
    result["prompts_purged"] = decision_prompts_purge()
    return result
