"""Hourly rollups of decisions and outcomes: what every dashboard reads.

A rollup row sums one hour × team × application × task class × model × tier (see
``telemetry.models.HourlyRollup``); daily rows sum the hourly ones for long ranges. Rows
are never incremented in place: an hour is always recomputed whole from the raw
partitions (DELETE + INSERT … SELECT in one transaction), then its day from its hours.
That makes every run idempotent — a re-reported outcome, a late commit or two overlapping
runs cannot count anything twice — and keeps one SQL statement as the single definition of
every figure's numbers.

Incremental refresh (``rollups_refresh``, every minute from Celery beat):

1. Lock the watermark row with ``SELECT … FOR UPDATE SKIP LOCKED``; if another worker holds
   it, return at once (it is doing this run's work).
2. The window is (position − overlap, now − settle]: the overlap catches rows whose
   transaction committed after the previous run read past their timestamps.
3. The hours touched in the window are the hours of decisions created in it and of
   decisions whose outcome was reported in it (both read through indexes).
4. Those hours are recomputed, the watermark moves to the window's end, and everything
   commits together: a crashed run leaves the old rollups and the old watermark.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from controlplane.models import ModelPrice
from routing.pricing import price_ranges, price_schedule
from telemetry.models import LATENCY_BOUNDS_MS, LATENCY_BUCKET_FIELDS, RollupWatermark

logger = logging.getLogger(__name__)

WATERMARK = "hourly"
OVERLAP = timedelta(minutes=5)
SETTLE = timedelta(seconds=2)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # watermark of a rollup that never ran
_LOCK_KEY = 0x5759_0001  # pg advisory lock: one recomputation at a time


def _bucket_expressions() -> str:
    """One ``count(*) FILTER`` per fixed latency bucket (only for reported outcomes)."""
    parts = []
    lower: int | None = None
    for name, upper in zip(LATENCY_BUCKET_FIELDS, (*LATENCY_BOUNDS_MS, None), strict=True):
        conditions = ["o_latency IS NOT NULL"]
        if lower is not None:
            conditions.append(f"o_latency >= {lower}")
        if upper is not None:
            conditions.append(f"o_latency < {upper}")
        parts.append(f"count(*) FILTER (WHERE {' AND '.join(conditions)}) AS {name}")
        lower = upper
    return ",\n               ".join(parts)


_COLUMNS = (
    "hour", "team", "application", "task_class", "model", "tier", "routed_model",
    "decisions", "outcomes",
    "successes", "escalations", "input_tokens", "output_tokens", "cost_usd",
    "baseline_cost_usd", "quality_sum", "quality_count", "latency_sum_ms",
    *LATENCY_BUCKET_FIELDS,
    "cache_hits", "cache_saved_usd", "condensed", "condensed_tokens", "condense_saved_usd",
)  # fmt: skip

# A decimal amount as the gateway writes it (outcome validation is also client input: any
# other value counts as nothing rather than failing the rollup).
_AMOUNT = r"'^[0-9]{1,9}(\.[0-9]{1,12})?$'"
_INT = r"'^[0-9]{1,12}$'"

# The baseline model's dated prices as [effective_from, until) ranges
# (routing.pricing.price_ranges, the one "price in force at t" rule): the savings figure
# prices the same token counts at the baseline price in force at decision time.
_ROLLUP_SQL = f"""
WITH baseline AS (
    SELECT effective_from, coalesce(until, 'infinity'::timestamptz) AS until,
           input_usd_per_mtok, output_usd_per_mtok
    FROM unnest(%(b_from)s::timestamptz[], %(b_until)s::timestamptz[],
                %(b_in)s::numeric[], %(b_out)s::numeric[])
        AS b(effective_from, until, input_usd_per_mtok, output_usd_per_mtok)
),
rows AS (
    SELECT date_trunc('hour', d.created_at) AS hour, d.team, d.application, d.task_class,
           coalesce(o.final_model, d.model) AS model, coalesce(o.final_tier, d.tier) AS tier,
           d.model AS routed_model,
           o.decision_id IS NOT NULL AS reported, o.final_status, o.escalated,
           o.input_tokens, o.output_tokens, o.cost_usd, o.quality_score,
           o.latency_ms AS o_latency,
           (o.input_tokens * b.input_usd_per_mtok + o.output_tokens * b.output_usd_per_mtok)
               / 1000000 AS baseline_cost,
           o.validation->>'gateway' IS NOT NULL AND o.validation->>'cache' = 'hit' AS cache_hit,
           CASE WHEN o.validation->>'gateway' IS NOT NULL AND o.validation->>'cache' = 'hit'
                 AND o.validation->>'saved_usd' ~ {_AMOUNT}
                THEN (o.validation->>'saved_usd')::numeric END AS cache_saved,
           CASE WHEN o.validation->>'gateway' IS NOT NULL
                 AND o.validation->'condensed'->>'input_tokens_before' ~ {_INT}
                 AND o.validation->'condensed'->>'input_tokens_after' ~ {_INT}
                THEN (o.validation->'condensed'->>'input_tokens_before')::bigint
                     - (o.validation->'condensed'->>'input_tokens_after')::bigint
           END AS condensed_tokens,
           CASE WHEN o.validation->>'gateway' IS NOT NULL
                 AND o.validation->'condensed'->>'saved_usd' ~ {_AMOUNT}
                THEN (o.validation->'condensed'->>'saved_usd')::numeric END AS condense_saved
    FROM telemetry_decision d
    LEFT JOIN telemetry_outcome o
        ON o.decision_id = d.id AND o.decision_created_at = d.created_at
       AND o.decision_created_at >= %(start)s AND o.decision_created_at < %(end)s
    LEFT JOIN baseline b ON d.created_at >= b.effective_from AND d.created_at < b.until
    WHERE d.created_at >= %(start)s AND d.created_at < %(end)s
)
INSERT INTO telemetry_rollup_hourly ({", ".join(_COLUMNS)})
SELECT hour, team, application, task_class, model, tier, routed_model,
       count(*),
       count(*) FILTER (WHERE reported),
       count(*) FILTER (WHERE final_status = 'ok'),
       count(*) FILTER (WHERE escalated),
       coalesce(sum(input_tokens), 0),
       coalesce(sum(output_tokens), 0),
       coalesce(sum(cost_usd), 0),
       coalesce(sum(baseline_cost), 0),
       coalesce(sum(quality_score), 0),
       count(quality_score),
       coalesce(sum(o_latency), 0),
       {_bucket_expressions()},
       count(*) FILTER (WHERE cache_hit),
       coalesce(sum(cache_saved), 0),
       count(condensed_tokens),
       coalesce(sum(condensed_tokens), 0),
       coalesce(sum(condense_saved), 0)
FROM rows
GROUP BY hour, team, application, task_class, model, tier, routed_model
"""  # noqa: S608 (column names are constants)


_DAILY_SQL = f"""
INSERT INTO telemetry_rollup_daily (day, {", ".join(_COLUMNS[1:])})
SELECT date_trunc('day', hour), team, application, task_class, model, tier, routed_model,
       {", ".join(f"sum({c})" for c in _COLUMNS[7:])}
FROM telemetry_rollup_hourly
WHERE hour >= %(start)s AND hour < %(end)s
GROUP BY 1, 2, 3, 4, 5, 6, 7
"""  # noqa: S608 (column names are constants)


def day_floor(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def hour_floor(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _ranges(hours: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """Contiguous [start, end) ranges covering the given hour starts."""
    ranges: list[tuple[datetime, datetime]] = []
    for hour in sorted(set(hours)):
        if ranges and ranges[-1][1] == hour:
            ranges[-1] = (ranges[-1][0], hour + HOUR)
        else:
            ranges.append((hour, hour + HOUR))
    return ranges


def rollups_recompute(*, start: datetime, end: datetime, cursor: Any = None) -> int:
    """Recompute the rollup rows of every hour in [start, end) from the raw tables."""
    start, end = hour_floor(start), hour_floor(end - timedelta(microseconds=1)) + HOUR
    baseline = price_ranges(
        price_schedule(ModelPrice.objects.filter(model__slug=settings.SWITCHYARD_BASELINE_MODEL))
    )
    params: dict[str, Any] = {
        "start": start,
        "end": end,
        "b_from": [r[0] for r in baseline],
        "b_until": [r[1] for r in baseline],
        "b_in": [r[2] for r in baseline],
        "b_out": [r[3] for r in baseline],
    }
    with transaction.atomic():
        own = cursor is None
        cur = cursor or connection.cursor()
        try:
            # Recomputations of overlapping hours take turns (rebuild vs refresh).
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
            cur.execute(
                "DELETE FROM telemetry_rollup_hourly WHERE hour >= %(start)s AND hour < %(end)s",
                params,
            )
            cur.execute(_ROLLUP_SQL, params)
            written = int(cur.rowcount)
            # The days containing those hours are summed again from the hourly rows.
            days = {"start": day_floor(start), "end": day_floor(end - HOUR) + DAY}
            cur.execute(
                "DELETE FROM telemetry_rollup_daily WHERE day >= %(start)s AND day < %(end)s",
                days,
            )
            cur.execute(_DAILY_SQL, days)
            return written
        finally:
            if own:
                cur.close()


def rollups_rebuild(*, start: datetime | None = None, end: datetime | None = None) -> int:
    """Rebuild every rollup from the raw rows (or those in [start, end)), day by day.

    Rollups of hours whose raw partitions were already dropped (retention) are kept.
    Moves the watermark to now, so the incremental refresh carries on from here.
    """
    now = timezone.now()
    with connection.cursor() as cursor:
        if start is None:
            cursor.execute("SELECT min(created_at) FROM telemetry_decision")
            first = cursor.fetchone()[0]
            start = now if first is None else first
        end = end or now + HOUR
        written = 0
        day = hour_floor(start)
        stop = hour_floor(end - timedelta(microseconds=1)) + HOUR
        # A day at a time keeps each transaction's hash join small.
        while day < stop:
            upper = min(day + timedelta(days=1), stop)
            written += rollups_recompute(start=day, end=upper, cursor=cursor)
            day = upper
    _watermark_set(now - SETTLE)
    return written


def _watermark_set(position: datetime) -> None:
    now = timezone.now()
    RollupWatermark.objects.update_or_create(
        name=WATERMARK, defaults={"position": position, "updated_at": now}
    )


def _touched_hours(cursor: Any, low: datetime, high: datetime) -> list[datetime]:
    cursor.execute(
        """
        SELECT DISTINCT date_trunc('hour', created_at) FROM telemetry_decision
        WHERE created_at > %(low)s AND created_at <= %(high)s
        UNION
        SELECT DISTINCT date_trunc('hour', decision_created_at) FROM telemetry_outcome
        WHERE reported_at > %(low)s AND reported_at <= %(high)s
        """,
        {"low": low, "high": high},
    )
    return [row[0] for row in cursor.fetchall()]


def rollups_refresh(*, now: datetime | None = None) -> dict[str, Any]:
    """Recompute the hours touched since the watermark; see the module doc for the steps."""
    now = now or timezone.now()
    high = now - SETTLE
    RollupWatermark.objects.get_or_create(
        name=WATERMARK, defaults={"position": EPOCH, "updated_at": now}
    )
    with transaction.atomic():
        # 1. Claim the watermark (one worker at a time; the others skip).
        mark = (
            RollupWatermark.objects.select_for_update(skip_locked=True)
            .filter(name=WATERMARK)
            .first()
        )
        if mark is None:
            return {"claimed": False, "hours": 0, "rows": 0}
        with connection.cursor() as cursor:
            if mark.position == EPOCH:
                # Never ran: everything up to now is new.
                cursor.execute("SELECT min(created_at) FROM telemetry_decision")
                first = cursor.fetchone()[0]
                hours = [] if first is None else [hour_floor(first), hour_floor(high)]
                ranges = [(hours[0], hours[1] + HOUR)] if hours else []
            else:
                # 2./3. The window and the hours it touched.
                hours = _touched_hours(cursor, mark.position - OVERLAP, high)
                ranges = _ranges(hours)
            rows = 0
            # 4. Recompute them and move the watermark, in the same transaction.
            for start, end in ranges:
                rows += rollups_recompute(start=start, end=end, cursor=cursor)
        RollupWatermark.objects.filter(pk=mark.pk).update(position=high, updated_at=now)
    if rows:
        logger.info("rollups: %d hour ranges recomputed (%d rows)", len(ranges), rows)
    return {"claimed": True, "hours": len(hours), "rows": rows}


def hours_touched_ranges(hours: Sequence[datetime]) -> list[tuple[datetime, datetime]]:
    """Public for tests: the contiguous ranges a refresh recomputes."""
    return _ranges(hours)
