"""The dashboard benchmark's load step: secondary indexes dropped for the bulk load must come
back on every partition (pg_indexes gives them as ``CREATE INDEX … ON ONLY <parent>``, which
run as is leaves an invalid index on the parent and none on the partitions)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.db import connection

from bench import bench_dashboards
from telemetry.partitions import partitions_ensure


def _partition_index_counts() -> dict[str, int]:
    """Secondary (non-key) indexes per partition of the two partitioned tables."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, count(i.indexrelid) FILTER (WHERE NOT i.indisprimary) "
            "FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhparent "
            "JOIN pg_class c ON c.oid = h.inhrelid "
            "LEFT JOIN pg_index i ON i.indrelid = c.oid "
            "WHERE p.relname IN ('telemetry_decision', 'telemetry_outcome') GROUP BY c.relname"
        )
        return dict(cursor.fetchall())


def test_dropped_indexes_come_back_on_every_partition(db: Any) -> None:
    today = date.today()
    partitions_ensure(today - timedelta(days=2), today + timedelta(days=1))
    before = _partition_index_counts()
    assert before and all(n > 0 for n in before.values())
    definitions = bench_dashboards._secondary_indexes_drop()
    assert definitions and all(" ON ONLY " in d for d in definitions)
    assert all(n == 0 for n in _partition_index_counts().values())
    with connection.cursor() as cursor:
        for definition in definitions:
            cursor.execute(bench_dashboards._index_recursive(definition))
    assert _partition_index_counts() == before
    assert bench_dashboards.indexes_invalid() == []


def test_an_index_left_on_the_parent_only_is_repaired(db: Any) -> None:
    today = date.today()
    partitions_ensure(today - timedelta(days=1), today + timedelta(days=1))
    before = _partition_index_counts()
    definitions = bench_dashboards._secondary_indexes_drop()
    with connection.cursor() as cursor:
        for definition in definitions:
            cursor.execute(definition)  # what the load used to do
    assert sorted(bench_dashboards.indexes_invalid()) == sorted(d.split()[2] for d in definitions)
    assert sorted(bench_dashboards.indexes_repair()) == sorted(d.split()[2] for d in definitions)
    assert bench_dashboards.indexes_invalid() == []
    assert _partition_index_counts() == before
