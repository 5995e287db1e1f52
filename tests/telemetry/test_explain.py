"""The explorer, detail and export queries reach decisions through indexes, never a scan."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from telemetry.models import DecisionRecord
from telemetry.selectors import (
    DashboardFilters,
    _decision_queryset,
    decision_export_rows,
    keyset_decode,
    keyset_encode,
)


@pytest.fixture
def no_seqscan(demo_world: dict[str, Any]) -> Iterator[None]:
    """Make a sequential scan the planner's last resort: if one remains, no index serves."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE telemetry_decision")
        cursor.execute("SET enable_seqscan = off")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET enable_seqscan")


def plan(sql: str, params: Any) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def assert_no_decision_scan(text: str) -> None:
    assert "telemetry_decision" in text, text
    scans = [
        line for line in text.splitlines() if "Seq Scan" in line and "telemetry_decision" in line
    ]
    assert not scans, text


@pytest.mark.parametrize(
    "dims",
    [{}, {"task_class": "sql-generation"}, {"team": "support", "tier": 1}, {"model": "gpt-4o"}],
)
def test_explorer_first_and_next_pages_use_an_index(no_seqscan: None, dims: dict) -> None:
    filters = DashboardFilters.for_range("30d", **dims)
    queryset = _decision_queryset(filters).order_by("-created_at", "-id")[:51]
    assert_no_decision_scan(queryset.explain())
    last = DecisionRecord.objects.order_by("created_at").first()
    assert last is not None
    after = keyset_decode(keyset_encode(last.created_at, last.id))
    assert after is not None
    from django.db.models import Q

    later = (
        _decision_queryset(filters)
        .filter(Q(created_at__lt=after[0]) | Q(created_at=after[0], id__lt=after[1]))
        .order_by("-created_at", "-id")[:51]
    )
    assert_no_decision_scan(later.explain())


def test_detail_lookup_uses_the_primary_key(no_seqscan: None) -> None:
    record = DecisionRecord.objects.first()
    assert record is not None
    text = DecisionRecord.objects.filter(id=record.id, created_at=record.created_at).explain()
    assert_no_decision_scan(text)
    assert "Index" in text


def test_export_chunks_use_an_index(no_seqscan: None, monkeypatch: Any) -> None:
    captured: list[tuple[str, Any]] = []
    original = connection.cursor

    class Spy:
        def __init__(self) -> None:
            self.inner = original()

        def __enter__(self) -> Spy:
            self.inner.__enter__()
            return self

        def __exit__(self, *exc: Any) -> None:
            self.inner.__exit__(*exc)

        def execute(self, sql: str, params: Any) -> None:
            captured.append((sql, params))
            self.inner.execute(sql, params)

        def fetchall(self) -> Any:
            return self.inner.fetchall()

    monkeypatch.setattr(connection, "cursor", Spy)
    rows = list(decision_export_rows(DashboardFilters.for_range("7d", team="support"), chunk=50))
    monkeypatch.undo()
    assert len(captured) >= 2 and rows
    for sql, params in captured[:2]:  # the first chunk and a keyset continuation
        assert_no_decision_scan(plan(sql, params))
