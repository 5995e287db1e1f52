"""Daily partitions of the decision and outcome tables: created ahead, dropped after retention.

``partitions_maintain`` runs in the initial migration, at every ``make run`` start and hourly
from Celery beat. A DEFAULT partition catches any row outside the prepared range, so an
insert never fails for want of a partition.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection as default_connection

logger = logging.getLogger(__name__)

PARTITIONED = {"telemetry_decision": "created_at", "telemetry_outcome": "decision_created_at"}


def _name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _existing(cursor: Any, table: str) -> set[str]:
    cursor.execute(
        """
        SELECT child.relname FROM pg_inherits
        JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
        JOIN pg_class child ON child.oid = pg_inherits.inhrelid
        WHERE parent.relname = %s
        """,
        [table],
    )
    return {row[0] for row in cursor.fetchall()}


def partitions_ensure(start: date, end: date, *, connection: Any = None) -> list[str]:
    """Create the daily partitions for [start, end] that do not exist yet."""
    conn = connection or default_connection
    created = []
    with conn.cursor() as cursor:
        for table in PARTITIONED:
            existing = _existing(cursor, table)
            day = start
            while day <= end:
                name = _name(table, day)
                if name not in existing:
                    lower = datetime(day.year, day.month, day.day, tzinfo=UTC)
                    upper = lower + timedelta(days=1)
                    cursor.execute(
                        f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF "{table}" '
                        f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
                    )
                    created.append(name)
                day += timedelta(days=1)
    return created


def partitions_drop_before(cutoff: date, *, connection: Any = None) -> list[str]:
    """Drop whole daily partitions that end on or before ``cutoff`` (retention)."""
    conn = connection or default_connection
    dropped = []
    with conn.cursor() as cursor:
        for table in PARTITIONED:
            for name in sorted(_existing(cursor, table)):
                suffix = name.rsplit("_p", 1)[-1]
                if not suffix.isdigit():
                    continue  # the default partition
                day = datetime.strptime(suffix, "%Y%m%d").date()
                if day + timedelta(days=1) <= cutoff:
                    cursor.execute(f'DROP TABLE IF EXISTS "{name}"')
                    dropped.append(name)
    return dropped


def partitions_maintain(
    *, today: date | None = None, days_back: int = 2, connection: Any = None
) -> dict[str, list[str]]:
    today = today or datetime.now(UTC).date()
    ahead = getattr(settings, "SWITCHYARD_PARTITIONS_AHEAD_DAYS", 14)
    retention = getattr(settings, "SWITCHYARD_DECISION_RETENTION_DAYS", 90)
    created = partitions_ensure(
        today - timedelta(days=days_back), today + timedelta(days=ahead), connection=connection
    )
    dropped = partitions_drop_before(today - timedelta(days=retention), connection=connection)
    if created or dropped:
        logger.info("partitions: created %d, dropped %d", len(created), len(dropped))
    return {"created": created, "dropped": dropped}
