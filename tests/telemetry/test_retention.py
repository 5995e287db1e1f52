from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from telemetry.partitions import partitions_drop_before, partitions_ensure
from telemetry.retention import decision_prompts_purge

pytestmark = pytest.mark.django_db


def _partitions() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'telemetry_decision'"
        )
        return {r[0] for r in cursor.fetchall()}


def test_partitions_are_created_ahead_and_dropped_whole_after_retention() -> None:
    old = date(2020, 1, 1)
    created = partitions_ensure(old, old + timedelta(days=2))
    assert "telemetry_decision_p20200101" in created
    assert {"telemetry_decision_p20200101", "telemetry_decision_p20200103"} <= _partitions()
    dropped = partitions_drop_before(date(2020, 1, 3))
    assert "telemetry_decision_p20200101" in dropped
    assert "telemetry_decision_p20200102" in dropped
    assert "telemetry_decision_p20200103" not in dropped
    remaining = _partitions()
    assert "telemetry_decision_p20200101" not in remaining
    assert "telemetry_decision_p20200103" in remaining
    assert "telemetry_decision_default" in remaining
    today = timezone.now().date()
    assert f"telemetry_decision_p{today + timedelta(days=14):%Y%m%d}" in remaining


def test_expired_free_text_is_purged(registry: dict[str, Any], settings: Any) -> None:
    """The prompt, the retrieval query and metadata strings expire together; keys, numbers,
    booleans, identifiers and rows without an expiry stay."""
    from telemetry.ids import uuid7, uuid7_time
    from telemetry.models import DecisionRecord

    def record(expires_in: timedelta | None, prompt: str | None = "secret text") -> DecisionRecord:
        ident = uuid7()
        return DecisionRecord.objects.create(
            id=ident,
            created_at=uuid7_time(ident),
            application_id=1,
            application="a",
            task_class="triage",
            model="small-local",
            provider_model="m",
            tier=1,
            locality="local",
            strategy="rule",
            confidence=0.7,
            reason="r",
            routing_table_version=1,
            input_tokens=1,
            context_tokens=1,
            max_output_tokens=1,
            decision_us=1,
            prompt=prompt,
            prompt_expires_at=None if expires_in is None else timezone.now() + expires_in,
            prompt_template_id="triage",
            retrieval_query="orders of jane.doe@example.com",
            retrieval_document_ids=["kb-1"],
            metadata={"reference_answer": "42", "attempt": 2, "shadow": True, "none": None},
        )

    expired, kept = record(-timedelta(minutes=1)), record(timedelta(days=1))
    query_only = record(-timedelta(seconds=1), prompt=None)  # no prompt, a query to forget
    never = record(None, prompt=None)  # nothing free-text was stored with an expiry
    assert decision_prompts_purge() == 2
    for row in (
        DecisionRecord.objects.get(id=expired.id),
        DecisionRecord.objects.get(id=query_only.id),
    ):
        assert row.prompt is None and row.prompt_expires_at is None
        assert row.retrieval_query == ""
        assert row.metadata == {
            "reference_answer": None,
            "attempt": 2,
            "shadow": True,
            "none": None,
        }
        assert row.retrieval_document_ids == ["kb-1"] and row.prompt_template_id == "triage"
    kept_row = DecisionRecord.objects.get(id=kept.id)
    assert kept_row.prompt == "secret text"
    assert kept_row.retrieval_query == "orders of jane.doe@example.com"
    assert kept_row.metadata["reference_answer"] == "42"
    assert DecisionRecord.objects.get(id=never.id).retrieval_query.startswith("orders")
    assert decision_prompts_purge() == 0  # purged rows lose their expiry: nothing to do twice
