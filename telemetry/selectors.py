"""Reads for the dashboards, the decision explorer and the router's observed statistics.

Every chart reads ``telemetry_rollup_hourly`` (never the raw decision rows): one query
returns the rollups of the filtered range summed per time bucket × dimensions, and pandas
shapes that frame into each figure. The explorer and the CSV export read the raw
partitions through the (created_at DESC, id DESC) index with keyset pagination.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from django.conf import settings
from django.db import connection
from django.db.models import Q, QuerySet
from django.utils import timezone

from controlplane.models import (
    ApiKey,
    Application,
    Budget,
    BudgetSpend,
    ModelEndpoint,
    Route,
    RoutingTableVersion,
    TaskClass,
    Team,
)
from telemetry.ids import is_uuid7, uuid7_time
from telemetry.models import (
    LATENCY_BOUNDS_MS,
    LATENCY_BUCKET_FIELDS,
    DecisionOutcome,
    DecisionRecord,
)

# Time ranges offered on every page and the bucket size each one charts with.
RANGES: dict[str, tuple[timedelta, timedelta]] = {
    "1h": (timedelta(hours=1), timedelta(hours=1)),
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "7d": (timedelta(days=7), timedelta(hours=6)),
    "30d": (timedelta(days=30), timedelta(days=1)),
    "90d": (timedelta(days=90), timedelta(days=1)),
}
DEFAULT_RANGE = "30d"
DIMENSIONS = ("team", "application", "task_class", "model", "tier")
SUM_COLUMNS = (
    "decisions", "outcomes", "successes", "escalations", "input_tokens", "output_tokens",
    "cost_usd", "baseline_cost_usd", "quality_sum", "quality_count", "latency_sum_ms",
    *LATENCY_BUCKET_FIELDS,
    "cache_hits", "cache_saved_usd", "condensed", "condensed_tokens", "condense_saved_usd",
)  # fmt: skip


def bucket_for_span(span: timedelta) -> timedelta:
    """Chart bucket for a custom range: hours up to two days, 6 h up to ten, then days."""
    if span <= timedelta(days=2):
        return timedelta(hours=1)
    if span <= timedelta(days=10):
        return timedelta(hours=6)
    return timedelta(days=1)


@dataclass(frozen=True, slots=True)
class DashboardFilters:
    start: datetime
    end: datetime
    bucket: timedelta
    range_key: str = DEFAULT_RANGE
    team: str = ""
    application: str = ""
    task_class: str = ""
    model: str = ""
    tier: int | None = None

    @classmethod
    def for_range(cls, range_key: str = DEFAULT_RANGE, **dims: Any) -> DashboardFilters:
        span, bucket = RANGES[range_key]
        now = timezone.now()
        return cls(start=now - span, end=now, bucket=bucket, range_key=range_key, **dims)

    def dimension_items(self) -> list[tuple[str, Any]]:
        items: list[tuple[str, Any]] = [
            (name, getattr(self, name)) for name in DIMENSIONS if name != "tier"
        ]
        items.append(("tier", self.tier))
        return [(k, v) for k, v in items if v not in ("", None)]


def _where(filters: DashboardFilters, *, time_column: str, alias: str = "") -> tuple[str, dict]:
    prefix = f"{alias}." if alias else ""
    clauses = [f"{prefix}{time_column} >= %(start)s", f"{prefix}{time_column} < %(end)s"]
    params: dict[str, Any] = {"start": filters.start, "end": filters.end}
    for name, value in filters.dimension_items():
        clauses.append(f"{prefix}{name} = %({name})s")
        params[name] = value
    return " AND ".join(clauses), params


def _hour_floor(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# ---------------------------------------------------------------------------------------
# Rollup frame: the one query behind every chart
# ---------------------------------------------------------------------------------------


_DAY = timedelta(days=1)


def _day_floor(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def rollup_rows_sql(filters: DashboardFilters, *, daily: bool) -> tuple[str, dict[str, Any]]:
    """A subquery of rollup rows covering the filtered range, time column ``t``.

    With ``daily``, whole UTC days come from the daily rollups and only the partial first
    and last days from the hourly ones (three index range scans, no OR).
    """
    start = _hour_floor(filters.start)
    columns = ", ".join((*DIMENSIONS, "routed_model", *SUM_COLUMNS))
    params: dict[str, Any] = {}
    dims = ""
    for name, value in filters.dimension_items():
        dims += f" AND {name} = %({name})s"
        params[name] = value
    parts: list[tuple[str, str, datetime, datetime]] = []
    first_day = _day_floor(start) + (_DAY if _day_floor(start) < start else timedelta(0))
    last_day = _day_floor(filters.end)
    if daily and first_day < last_day:
        parts = [
            ("telemetry_rollup_hourly", "hour", start, first_day),
            ("telemetry_rollup_daily", "day", first_day, last_day),
            ("telemetry_rollup_hourly", "hour", last_day, filters.end),
        ]
    else:
        parts = [("telemetry_rollup_hourly", "hour", start, filters.end)]
    selects = []
    for index, (table, column, lower, upper) in enumerate(parts):
        params[f"lo{index}"], params[f"hi{index}"] = lower, upper
        selects.append(
            f"SELECT {column} AS t, {columns} FROM {table} "  # noqa: S608 (constants)
            f"WHERE {column} >= %(lo{index})s AND {column} < %(hi{index})s{dims}"
        )
    return " UNION ALL ".join(selects), params


def rollup_frame(filters: DashboardFilters, *, daily: bool | None = None) -> pd.DataFrame:
    """Rollups in the filtered range, summed per (bucket, team, application, task class,
    model, tier). Columns: bucket (UTC timestamp), the dimensions and ``SUM_COLUMNS``.
    Whole-day buckets read the daily rollups unless ``daily=False``."""
    if daily is None:
        daily = filters.bucket % _DAY == timedelta(0)
    rows_sql, params = rollup_rows_sql(filters, daily=daily)
    params["bucket"] = filters.bucket
    # float8 sums: numeric (cost) sums would come back as Decimal objects, slow to convert.
    sums = ", ".join(f"sum({c})::float8" for c in SUM_COLUMNS)
    bucket = "date_bin(%(bucket)s, t, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
    sql = (
        f"SELECT {bucket} AS bucket, team, application, task_class, model, tier, {sums} "  # noqa: S608
        f"FROM ({rows_sql}) r GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    columns = ["bucket", *DIMENSIONS, *SUM_COLUMNS]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    numeric = list(SUM_COLUMNS)
    frame[numeric] = frame[numeric].astype("float64")
    frame["tier"] = frame["tier"].astype("int64")
    frame["bucket"] = pd.to_datetime(frame["bucket"], utc=True)
    return frame


@dataclass(frozen=True)
class GatewaySavings:
    cache_hits: int
    cache_saved_usd: float
    condensed: int  # calls whose context a local model condensed
    condensed_tokens: int  # input tokens of context removed
    condense_saved_usd: float  # frontier input spend saved, net of the local calls


def gateway_savings(frame: pd.DataFrame) -> GatewaySavings:
    """What the gateway saved, from the rollup frame: answers reused from its answer cache
    (what producing each had cost) and long contexts condensed before a frontier call."""
    return GatewaySavings(
        cache_hits=int(frame["cache_hits"].sum()),
        cache_saved_usd=float(frame["cache_saved_usd"].sum()),
        condensed=int(frame["condensed"].sum()),
        condensed_tokens=int(frame["condensed_tokens"].sum()),
        condense_saved_usd=float(frame["condense_saved_usd"].sum()),
    )


def escalation_frame(filters: DashboardFilters, *, routed_model: str) -> pd.DataFrame:
    """Per bucket: outcomes and escalations of the requests the router sent to
    ``routed_model``, whichever model finally served them (a model page's view of its
    outages: those requests are served, and so counted, elsewhere)."""
    unfiltered = replace(filters, model="", tier=None)
    rows_sql, params = rollup_rows_sql(unfiltered, daily=filters.bucket % _DAY == timedelta(0))
    params.update(bucket=filters.bucket, routed=routed_model)
    bucket = "date_bin(%(bucket)s, t, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {bucket}, sum(escalations)::float8, sum(outcomes)::float8 "  # noqa: S608
            f"FROM ({rows_sql}) r WHERE routed_model = %(routed)s GROUP BY 1 ORDER BY 1",
            params,
        )
        rows = cursor.fetchall()
    frame = pd.DataFrame.from_records(rows, columns=["bucket", "escalations", "outcomes"])
    frame["bucket"] = pd.to_datetime(frame["bucket"], utc=True)
    return frame


def latency_percentile(counts: Sequence[float] | np.ndarray, q: float) -> float | None:
    """The q-quantile (0–1) of a fixed-bucket latency histogram, interpolated in its bucket.

    The open last bucket reports its lower bound.
    """
    values = np.asarray(counts, dtype="float64")
    total = float(values.sum())
    if total <= 0:
        return None
    target = q * total
    cumulative = np.cumsum(values)
    index = int(np.searchsorted(cumulative, target, side="left"))
    index = min(index, len(values) - 1)
    lower = 0.0 if index == 0 else float(LATENCY_BOUNDS_MS[index - 1])
    if index >= len(LATENCY_BOUNDS_MS):
        return lower
    upper = float(LATENCY_BOUNDS_MS[index])
    before = float(cumulative[index - 1]) if index > 0 else 0.0
    inside = float(values[index])
    fraction = (target - before) / inside if inside else 0.0
    return lower + (upper - lower) * fraction


def latency_bucket_counts(latencies: Sequence[int]) -> list[int]:
    """Raw latencies into the fixed buckets (the same rule the rollup SQL applies)."""
    counts = [0] * len(LATENCY_BUCKET_FIELDS)
    bounds = np.asarray(LATENCY_BOUNDS_MS)
    for value in latencies:
        counts[int(np.searchsorted(bounds, value, side="right"))] += 1
    return counts


@dataclass(frozen=True, slots=True)
class Headline:
    decisions: int
    spend_usd: float
    baseline_usd: float
    savings_usd: float
    savings_pct: float | None
    tier1_share: float | None
    escalation_rate: float | None
    success_rate: float | None
    p50_latency_ms: float | None
    p95_latency_ms: float | None


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def headline(frame: pd.DataFrame) -> Headline:
    """The numbers on top of every dashboard, from the rollup frame."""
    decisions = float(frame["decisions"].sum())
    spend = float(frame["cost_usd"].sum())
    baseline = float(frame["baseline_cost_usd"].sum())
    outcomes = float(frame["outcomes"].sum())
    tier1 = float(frame.loc[frame["tier"] == 1, "decisions"].sum())
    hist = frame[list(LATENCY_BUCKET_FIELDS)].sum().to_numpy()
    return Headline(
        decisions=int(decisions),
        spend_usd=spend,
        baseline_usd=baseline,
        savings_usd=baseline - spend,
        savings_pct=_ratio(baseline - spend, baseline),
        tier1_share=_ratio(tier1, decisions),
        escalation_rate=_ratio(float(frame["escalations"].sum()), outcomes),
        success_rate=_ratio(float(frame["successes"].sum()), outcomes),
        p50_latency_ms=latency_percentile(hist, 0.50),
        p95_latency_ms=latency_percentile(hist, 0.95),
    )


def latency_by_model(frame: pd.DataFrame) -> pd.DataFrame:
    """p50/p95/p99 and request count per model (merged histograms)."""
    if frame.empty:
        return pd.DataFrame(columns=["model", "p50", "p95", "p99", "outcomes"])
    grouped = frame.groupby("model")[[*LATENCY_BUCKET_FIELDS, "outcomes"]].sum()
    rows = []
    for model, row in grouped.iterrows():
        hist = row[list(LATENCY_BUCKET_FIELDS)].to_numpy()
        rows.append(
            {
                "model": model,
                "p50": latency_percentile(hist, 0.50),
                "p95": latency_percentile(hist, 0.95),
                "p99": latency_percentile(hist, 0.99),
                "outcomes": int(row["outcomes"]),
            }
        )
    return pd.DataFrame(rows).sort_values("p95", na_position="first")


def quality_by_model_class(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task class): requests, success rate, mean score, cost per 1k requests."""
    columns = ["decisions", "outcomes", "successes", "quality_sum", "quality_count", "cost_usd"]
    grouped = frame.groupby(["model", "task_class"])[columns].sum().reset_index()
    outcomes = grouped["outcomes"].replace(0, np.nan)
    grouped["success_rate"] = grouped["successes"] / outcomes
    grouped["mean_score"] = grouped["quality_sum"] / grouped["quality_count"].replace(0, np.nan)
    grouped["cost_per_1k"] = grouped["cost_usd"] / outcomes * 1000
    return grouped


def quality_per_dollar_by_class(frame: pd.DataFrame) -> pd.DataFrame:
    """Successful requests per dollar spent, per task class."""
    grouped = frame.groupby("task_class")[["successes", "outcomes", "cost_usd"]].sum()
    grouped["per_dollar"] = grouped["successes"] / grouped["cost_usd"].replace(0, np.nan)
    grouped["success_rate"] = grouped["successes"] / grouped["outcomes"].replace(0, np.nan)
    return grouped.reset_index().sort_values("per_dollar", ascending=False)


def escalation_by_class(frame: pd.DataFrame) -> pd.DataFrame:
    grouped = frame.groupby("task_class")[["escalations", "outcomes"]].sum()
    grouped["rate"] = grouped["escalations"] / grouped["outcomes"].replace(0, np.nan)
    return grouped.reset_index().sort_values("rate", ascending=False)


def pareto_front(points: pd.DataFrame, *, cost: str, quality: str) -> pd.DataFrame:
    """Points no other point beats on both cost (lower) and quality (higher)."""
    ordered = points.dropna(subset=[cost, quality]).sort_values(
        [cost, quality], ascending=[True, False]
    )
    best = -np.inf
    keep = []
    for index, row in ordered.iterrows():
        if row[quality] > best:
            keep.append(index)
            best = row[quality]
    return ordered.loc[keep]


@dataclass(frozen=True, slots=True)
class EscalationBand:
    """Below ``downgrade`` a class could try a cheaper tier; above ``upgrade`` it needs a
    stronger one. The sweeps' monitor judges with the same two settings."""

    downgrade: float
    upgrade: float

    @staticmethod
    def percent(rate: float) -> str:
        return f"{rate * 100:g} %"

    @property
    def guide(self) -> str:
        return (
            f"Below {self.percent(self.downgrade)}: try a cheaper tier. "
            f"Above {self.percent(self.upgrade)}: the class needs a stronger one."
        )


def escalation_band() -> EscalationBand:
    return EscalationBand(
        downgrade=float(settings.SWITCHYARD_ESCALATION_DOWNGRADE_RATE),
        upgrade=float(settings.SWITCHYARD_ESCALATION_UPGRADE_RATE),
    )


@dataclass(frozen=True, slots=True)
class Attention:
    """One thing a manager should look at, with the page that shows it."""

    level: str  # "bad" | "warn" | "info"
    text: str
    task_class: str = ""
    budget: str = ""
    url: str = ""  # a page elsewhere that shows it (the reviewers' desk)


def attention_items(
    frame: pd.DataFrame,
    burns: Sequence[BudgetBurn],
    *,
    min_outcomes: int = 50,
    escalations: bool = True,
) -> list[Attention]:
    """What needs a look, most urgent first: escalation rates outside the escalation band,
    budgets past their soft limit or projected to run out this period, and task classes
    whose grader score fell (last quarter of the range against its first half)."""
    items: list[Attention] = []
    for burn in burns:
        if burn.spent_usd >= burn.limit_usd:
            items.append(
                Attention(
                    "bad",
                    f"Budget {burn.name} has reached its limit (${burn.limit_usd:,.0f}).",
                    budget=burn.name,
                )
            )
        elif burn.exhaustion_at is not None:
            items.append(
                Attention(
                    "bad" if burn.spent_usd >= burn.soft_limit_usd else "warn",
                    f"Budget {burn.name} is at {burn.used_pct:.0f} % and runs out "
                    f"{burn.exhaustion_at:%-d %b %H:%M} at ${burn.rate_per_day:,.2f}/day.",
                    budget=burn.name,
                )
            )
        elif burn.spent_usd >= burn.soft_limit_usd:
            items.append(
                Attention(
                    "warn",
                    f"Budget {burn.name} is past its soft limit "
                    f"({burn.used_pct:.0f} %): requests are downgraded.",
                    budget=burn.name,
                )
            )
    if frame.empty:
        return items
    by_class = frame.groupby("task_class")[["escalations", "outcomes"]].sum()
    tiers = frame.groupby(["task_class", "tier"])["decisions"].sum().reset_index()
    main_tier = tiers.sort_values("decisions").groupby("task_class")["tier"].last()
    band = escalation_band()
    for task_class, row in by_class.iterrows():
        # On a model page the frame holds what the model served: requests that escalated
        # onto it are not its escalation rate (its own is charted from the routed model).
        if not escalations or row["outcomes"] < min_outcomes:
            continue
        rate = row["escalations"] / row["outcomes"]
        if rate > band.upgrade:
            items.append(
                Attention(
                    "bad",
                    f"{task_class} escalates {rate * 100:.1f} % of "
                    "requests: it needs a stronger tier.",
                    task_class=str(task_class),
                )
            )
        elif rate < band.downgrade and int(main_tier.get(task_class, 1)) > 1:
            items.append(
                Attention(
                    "info",
                    f"{task_class} escalates only {rate * 100:.1f} % "
                    "on tier "
                    f"{int(main_tier[task_class])}: try a cheaper tier.",
                    task_class=str(task_class),
                )
            )
    # Drift: the same model on the same class, so a routing change is not mistaken for it.
    buckets = sorted(frame["bucket"].unique())
    if len(buckets) >= 8:
        keys = ["task_class", "model"]
        sums = ["quality_sum", "quality_count"]
        early = frame[frame["bucket"] <= buckets[len(buckets) // 2]].groupby(keys)[sums].sum()
        late = frame[frame["bucket"] >= buckets[-max(2, len(buckets) // 4)]]
        after = late.groupby(keys)[sums].sum()
        both = early.join(after, lsuffix="_old", rsuffix="_new", how="inner")
        both = both[
            (both["quality_count_old"] >= min_outcomes)
            & (both["quality_count_new"] >= min_outcomes)
        ]
        for (task_class, model), row in both.iterrows():
            old = row["quality_sum_old"] / row["quality_count_old"]
            new = row["quality_sum_new"] / row["quality_count_new"]
            if old - new >= 0.05:
                items.append(
                    Attention(
                        "warn",
                        f"{task_class} on {model}: grader score fell from {old:.2f} to {new:.2f}.",
                        task_class=str(task_class),
                    )
                )
    order = {"bad": 0, "warn": 1, "info": 2}
    return sorted(items, key=lambda item: order[item.level])


# ---------------------------------------------------------------------------------------
# Routing changes, current routes, budgets, filter options
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoutingChange:
    number: int
    activated_at: datetime
    note: str


def routing_changes(*, start: datetime, end: datetime) -> list[RoutingChange]:
    versions = RoutingTableVersion.objects.filter(
        activated_at__gte=start, activated_at__lt=end
    ).order_by("activated_at")
    return [
        RoutingChange(v.number, v.activated_at, v.note)
        for v in versions.only("number", "activated_at", "note")
        if v.activated_at is not None
    ]


def active_routes(*, task_class: str = "", model: str = "") -> list[Route]:
    """Routes of the active table for one task class, or those that use one model."""
    routes = Route.objects.filter(version__status="active").select_related(
        "task_class", "primary", "version"
    )
    if task_class:
        routes = routes.filter(task_class__slug=task_class)
    if model:
        routes = routes.filter(Q(primary__slug=model) | Q(fallbacks__contains=[model]))
    return list(routes)


@dataclass
class BudgetBurn:
    budget_id: int
    name: str
    scope: str
    scope_key: str | None
    period: str
    limit_usd: float
    soft_limit_usd: float
    spent_usd: float
    period_start: datetime
    period_end: datetime
    times: list[datetime] = field(default_factory=list)
    cumulative: list[float] = field(default_factory=list)
    rate_per_day: float = 0.0
    exhaustion_at: datetime | None = None  # projected (or actual) time the limit is reached
    # Held by decisions whose outcome has not arrived (worst case); counts against the limit.
    reserved_usd: float = 0.0

    @property
    def used_pct(self) -> float:
        return 100.0 * self.spent_usd / self.limit_usd if self.limit_usd else 0.0

    @property
    def committed_usd(self) -> float:
        """Spent plus reserved: what admission judges against the limit."""
        return self.spent_usd + self.reserved_usd

    @property
    def committed_pct(self) -> float:
        return 100.0 * self.committed_usd / self.limit_usd if self.limit_usd else 0.0


def _period_end(period: str, start: datetime) -> datetime:
    if period == "day":
        return start + timedelta(days=1)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month)


def budget_burns(*, now: datetime | None = None, task_class: str = "") -> list[BudgetBurn]:
    """Every active budget's spend so far this period, its curve and projected exhaustion.

    1. The spend is the budget's own counter (``BudgetSpend``, charged with every outcome),
       beside what in-flight decisions hold reserved (``BudgetSpend.reserved_usd``).
    2. The curve is the cumulative rollup cost of the budget's scope since the period
       start: daily points for monthly budgets, hourly for daily ones.
    3. The rate is the average of the last 7 days (monthly) or of today so far (daily);
       the limit is reached at now + (limit − spent) / rate, if that falls in the period.
    """
    now = now or timezone.now()
    budgets = list(
        Budget.objects.filter(is_active=True).select_related("team", "application", "task_class")
    )
    if task_class:
        budgets = [b for b in budgets if b.scope == "global" or b.scope_key == task_class]
    if not budgets:
        return []
    starts = {b.pk: b.period_start(now) for b in budgets}
    period_spends = list(
        BudgetSpend.objects.filter(
            budget_id__in=list(starts), period_start__in=set(starts.values())
        )
    )
    spends = {(s.budget_id, s.period_start): float(s.spent_usd) for s in period_spends}
    reserved = {(s.budget_id, s.period_start): float(s.reserved_usd) for s in period_spends}
    earliest = min(starts.values())
    span = DashboardFilters(start=earliest, end=now, bucket=_DAY)
    rows_sql, params = rollup_rows_sql(span, daily=True)
    with connection.cursor() as cursor:
        # Whole days come from the daily rollups and today from the hourly ones, so the
        # slot is a day before today and an hour today.
        cursor.execute(
            f"SELECT t, date_trunc('day', t), team, application, task_class, "  # noqa: S608
            f"sum(cost_usd)::float8 FROM ({rows_sql}) r GROUP BY 1, 2, 3, 4, 5 ORDER BY 1",
            params,
        )
        rows = cursor.fetchall()
    frame = pd.DataFrame.from_records(
        rows, columns=["slot", "day", "team", "application", "task_class", "cost"]
    )
    frame["cost"] = frame["cost"].astype("float64")
    # Typed time columns even when no row came back: a budget with no traffic in its scope
    # yet must still chart (an empty, time-indexed series), not compare untyped objects.
    frame["slot"] = pd.to_datetime(frame["slot"], utc=True)
    frame["day"] = pd.to_datetime(frame["day"], utc=True)
    burns = []
    for b in budgets:
        start = starts[b.pk]
        end = _period_end(b.period, start)
        scoped = frame[frame["slot"] >= start]
        key = b.scope_key
        if b.scope in {"team", "application", "task_class"}:
            scoped = scoped[scoped[b.scope] == key]
        series = scoped.groupby("day" if b.period == "month" else "slot")["cost"].sum()
        spent = spends.get((b.pk, start), float(series.sum()))
        limit = float(b.limit_usd)
        burn = BudgetBurn(
            budget_id=b.pk,
            name=b.name,
            scope=b.scope,
            scope_key=key,
            period=b.period,
            limit_usd=limit,
            soft_limit_usd=limit * float(b.soft_limit_pct) / 100,
            spent_usd=spent,
            period_start=start,
            period_end=end,
            reserved_usd=reserved.get((b.pk, start), 0.0),
        )
        cumulative = series.cumsum()
        burn.times = [start] + [
            (t + (timedelta(days=1) if b.period == "month" else timedelta(hours=1))).to_pydatetime()
            for t in cumulative.index
        ]
        burn.cumulative = [0.0, *[float(v) for v in cumulative.to_numpy()]]
        if burn.times and burn.times[-1] > now:
            burn.times[-1] = now
        if b.period == "month":
            window_start = max(start, now - timedelta(days=7))
            recent = float(series[series.index >= pd.Timestamp(window_start).floor("D")].sum())
            days = max((now - window_start).total_seconds() / 86400, 1 / 24)
        else:
            recent = spent
            days = max((now - start).total_seconds() / 86400, 1 / 24)
        burn.rate_per_day = recent / days
        if spent >= limit:
            burn.exhaustion_at = now
        elif burn.rate_per_day > 0:
            days_left = (limit - spent) / burn.rate_per_day
            # A trickle of spend projects exhaustion centuries away (past datetime's range):
            # only a date inside the period is one.
            if days_left < (end - now).total_seconds() / 86400:
                burn.exhaustion_at = now + timedelta(days=days_left)
        burns.append(burn)
    return burns


def traffic_seen() -> bool:
    """Has any decision reached the dashboards yet (a fresh install has none)?"""
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM telemetry_rollup_hourly)")
        row = cursor.fetchone()
    return bool(row and row[0])


@dataclass(frozen=True, slots=True)
class GettingStarted:
    """What a fresh install's first screen shows: how to send the first decision."""

    decisions_url: str
    task_class: str
    task_classes: int
    api_keys: int


def getting_started(*, decisions_url: str) -> GettingStarted:
    example = (
        TaskClass.objects.filter(is_active=True).order_by("slug").values_list("slug", flat=True)
    )
    return GettingStarted(
        decisions_url=decisions_url,
        task_class=example.first() or "ticket-triage",
        task_classes=example.count(),
        api_keys=ApiKey.objects.filter(revoked_at__isnull=True).count(),
    )


@dataclass(frozen=True, slots=True)
class FilterOptions:
    teams: list[str]
    applications: list[str]
    task_classes: list[str]
    models: list[str]


def filter_options() -> FilterOptions:
    return FilterOptions(
        teams=list(Team.objects.order_by("slug").values_list("slug", flat=True)),
        applications=list(Application.objects.order_by("slug").values_list("slug", flat=True)),
        task_classes=list(TaskClass.objects.order_by("slug").values_list("slug", flat=True)),
        models=list(ModelEndpoint.objects.order_by("tier", "slug").values_list("slug", flat=True)),
    )


# ---------------------------------------------------------------------------------------
# Decision explorer and export (raw rows, keyset pagination)
# ---------------------------------------------------------------------------------------

PAGE_SIZE = 50


def _decision_queryset(filters: DashboardFilters) -> QuerySet[DecisionRecord]:
    queryset = DecisionRecord.objects.filter(
        created_at__gte=filters.start, created_at__lt=filters.end
    )
    for name, value in filters.dimension_items():
        queryset = queryset.filter(**{name: value})
    return queryset


def keyset_encode(created_at: datetime, decision_id: uuid.UUID) -> str:
    return f"{created_at.timestamp():.6f}_{decision_id}"


def keyset_decode(value: str) -> tuple[datetime, uuid.UUID] | None:
    try:
        stamp, raw_id = value.split("_", 1)
        return datetime.fromtimestamp(float(stamp), tz=UTC), uuid.UUID(raw_id)
    except (ValueError, OverflowError):
        return None


@dataclass(frozen=True, slots=True)
class DecisionPage:
    decisions: list[DecisionRecord]
    outcomes: dict[uuid.UUID, DecisionOutcome]
    next_cursor: str | None


EXPLORER_FIELDS = (
    "id", "created_at", "application", "team", "task_class", "model", "tier", "strategy",
    "confidence", "routing_table_version", "handoff_required", "input_tokens",
)  # fmt: skip


def decision_page(
    filters: DashboardFilters,
    *,
    after: tuple[datetime, uuid.UUID] | None = None,
    size: int = PAGE_SIZE,
) -> DecisionPage:
    """One page of decisions, newest first, continuing after the keyset cursor ``after``."""
    queryset = _decision_queryset(filters)
    if after is not None:
        created_at, decision_id = after
        queryset = queryset.filter(
            Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=decision_id)
        )
    rows = list(queryset.order_by("-created_at", "-id").only(*EXPLORER_FIELDS)[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    outcomes: dict[uuid.UUID, DecisionOutcome] = {}
    if rows:
        for outcome in DecisionOutcome.objects.filter(
            decision_id__in=[r.id for r in rows],
            decision_created_at__gte=rows[-1].created_at,
            decision_created_at__lte=rows[0].created_at,
        ).only(
            "decision_id",
            "final_model",
            "final_status",
            "escalated",
            "cost_usd",
            "latency_ms",
            "quality_score",
        ):
            outcomes[outcome.decision_id] = outcome
    cursor = keyset_encode(rows[-1].created_at, rows[-1].id) if more else None
    return DecisionPage(rows, outcomes, cursor)


def decision_get(decision_id: uuid.UUID) -> tuple[DecisionRecord, DecisionOutcome | None] | None:
    """A decision and its outcome; the id's timestamp names the partition to read."""
    if not is_uuid7(decision_id):
        return None
    created_at = uuid7_time(decision_id)
    record = DecisionRecord.objects.filter(id=decision_id, created_at=created_at).first()
    if record is None:
        return None
    outcome = DecisionOutcome.objects.filter(
        decision_id=decision_id, decision_created_at=created_at
    ).first()
    return record, outcome


EXPORT_HEADER = (
    "decision_id", "created_at", "application", "team", "task_class", "model", "tier",
    "strategy", "confidence", "routing_table_version", "input_tokens", "handoff_required",
    "final_model", "final_tier", "final_status", "escalated", "attempts", "output_tokens",
    "cost_usd", "latency_ms", "quality_score", "reason",
)  # fmt: skip
EXPORT_CHUNK = 5000


def decision_export_rows(
    filters: DashboardFilters, *, chunk: int = EXPORT_CHUNK
) -> Iterator[tuple[Any, ...]]:
    """Every filtered decision with its outcome, newest first, read in keyset chunks.

    Each chunk is its own short query (no transaction held open while the client reads),
    so a million-row export streams in constant memory.
    """
    where, params = _where(filters, time_column="created_at", alias="d")
    sql = f"""
        SELECT d.id, d.created_at, d.application, d.team, d.task_class, d.model, d.tier,
               d.strategy, d.confidence, d.routing_table_version, d.input_tokens,
               d.handoff_required, o.final_model, o.final_tier, o.final_status, o.escalated,
               o.attempt_count, o.output_tokens, o.cost_usd, o.latency_ms, o.quality_score,
               d.reason
        FROM telemetry_decision d
        LEFT JOIN telemetry_outcome o
            ON o.decision_id = d.id AND o.decision_created_at = d.created_at
        WHERE {where} {{keyset}}
        ORDER BY d.created_at DESC, d.id DESC
        LIMIT {int(chunk)}
    """  # noqa: S608 (identifiers are constants; values are parameters)
    after: tuple[datetime, uuid.UUID] | None = None
    while True:
        keyset = ""
        query_params = dict(params)
        if after is not None:
            keyset = "AND (d.created_at, d.id) < (%(after_at)s, %(after_id)s)"
            query_params["after_at"], query_params["after_id"] = after
        with connection.cursor() as cursor:
            cursor.execute(sql.format(keyset=keyset), query_params)
            rows = cursor.fetchall()
        yield from rows
        if len(rows) < chunk:
            return
        after = (rows[-1][1], rows[-1][0])


# ---------------------------------------------------------------------------------------
# Observed statistics for the router
# ---------------------------------------------------------------------------------------


def model_stats_recent(*, now: datetime | None = None) -> dict[str, dict[Any, Any]]:
    """What the router uses for latency budgets and confidence, from the rollups:

    ``{"latency": {model: {"p95_ms": float, "requests": int}},       # last hour
       "success": {(model, task_class): success rate 0–1}}``        # last 24 hours
    """
    now = now or timezone.now()
    buckets = ", ".join(f"sum({c})" for c in LATENCY_BUCKET_FIELDS)
    latency: dict[str, dict[str, float | int]] = {}
    success: dict[tuple[str, str], float] = {}
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT model, sum(outcomes), {buckets} FROM telemetry_rollup_hourly "  # noqa: S608
            "WHERE hour >= %s GROUP BY model",
            [_hour_floor(now - timedelta(hours=1))],
        )
        for model, outcomes, *hist in cursor.fetchall():
            p95 = latency_percentile([float(h) for h in hist], 0.95)
            if p95 is not None:
                latency[model] = {"p95_ms": p95, "requests": int(outcomes)}
        cursor.execute(
            "SELECT model, task_class, sum(successes), sum(outcomes) "
            "FROM telemetry_rollup_hourly WHERE hour >= %s GROUP BY model, task_class",
            [_hour_floor(now - timedelta(hours=24))],
        )
        for model, task_class, successes, outcomes in cursor.fetchall():
            if outcomes:
                success[(model, task_class)] = float(successes) / float(outcomes)
    return {"latency": latency, "success": success}
