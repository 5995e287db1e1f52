"""Graded success counts per (model, task class): the data behind every decision's
``confidence`` (its meaning and the estimate are in ``routing.confidence``).

Run off the request path (Celery beat, ``SWITCHYARD_CONFIDENCE_REFRESH_S``; after the demo
load): one aggregate over the window's live outcomes and one over its sweep samples, and
the table is replaced whole in one transaction. Decision processes re-read it with their
snapshot refresh (``routing.snapshot``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from evaluation.models import GradedCount
from evaluation.selectors import GRADED_OUTCOME_SQL, ROUTED_SUCCESS_SQL
from routing.confidence import QUALITY_PASS

_LIVE_SQL = f"""
SELECT o.task_class, o.routed_model,
       count(*) AS trials,
       count(*) FILTER (WHERE {ROUTED_SUCCESS_SQL}) AS successes
FROM telemetry_outcome o
WHERE o.decision_created_at >= %(since)s AND o.decision_created_at < %(until)s
  AND {GRADED_OUTCOME_SQL}
GROUP BY 1, 2
"""  # noqa: S608 (constant fragments)

_SWEEP_SQL = """
SELECT task_class, model, count(*), count(*) FILTER (WHERE success)
FROM (
    SELECT task_class, candidate_model AS model, candidate_success AS success
    FROM evaluation_sweepsample
    WHERE created_at >= %(since)s AND created_at < %(until)s AND candidate_success IS NOT NULL
    UNION ALL
    SELECT task_class, primary_model, primary_success
    FROM evaluation_sweepsample
    WHERE created_at >= %(since)s AND created_at < %(until)s
      AND primary_success IS NOT NULL AND primary_model <> ''
) s
GROUP BY 1, 2
"""


def graded_counts_refresh(*, now: datetime | None = None) -> int:
    """Recompute the graded counts of the last ``SWITCHYARD_CONFIDENCE_WINDOW_DAYS``;
    returns the number of (model, task class) pairs."""
    now = now or timezone.now()
    since = now - timedelta(days=settings.SWITCHYARD_CONFIDENCE_WINDOW_DAYS)
    pairs: dict[tuple[str, str], list[int]] = {}  # (class, model) → [succ, trials, live, sweep]
    with connection.cursor() as cursor:
        cursor.execute(_LIVE_SQL, {"since": since, "until": now, "pass": QUALITY_PASS})
        for task_class, model, trials, successes in cursor.fetchall():
            acc = pairs.setdefault((task_class, model), [0, 0, 0, 0])
            acc[0] += successes
            acc[1] += trials
            acc[2] += trials
        cursor.execute(_SWEEP_SQL, {"since": since, "until": now})
        for task_class, model, trials, successes in cursor.fetchall():
            acc = pairs.setdefault((task_class, model), [0, 0, 0, 0])
            acc[0] += successes
            acc[1] += trials
            acc[3] += trials
    rows = [
        GradedCount(
            task_class=task_class,
            model=model,
            successes=s,
            trials=n,
            live_trials=live,
            sweep_trials=sweep,
            window_start=since,
            computed_at=now,
        )
        for (task_class, model), (s, n, live, sweep) in sorted(pairs.items())
    ]
    with transaction.atomic():
        GradedCount.objects.all().delete()
        GradedCount.objects.bulk_create(rows)
    return len(rows)
