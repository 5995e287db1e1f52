"""Thirty days of realistic demo traffic, through the project's own ingestion code.

Every decision is made by the routing engine (``decide``) on a snapshot of the registry as
it was at that moment — the routing table version active then and the budget spend so far
in the period — turned into the stored row by ``decision_row_build``, written with
``decision_rows_copy`` (COPY) and its simulated outcome reported with
``outcome_report_batch`` (dated prices, budgets charged). Rollups are rebuilt at the end.

Traffic follows a daily rhythm (business hours) and a weekly one (quiet weekends), and
holds three incidents a manager should spot on the dashboards:

1. an outage of ``llama-3.1-8b-local`` six days ago (13:00–16:00 UTC): its attempts time
   out or fail and requests escalate to the fallbacks;
2. the analytics team's long reports burn its monthly budget: it passes the soft limit
   (the router then downgrades) and the burn-down projects exhaustion;
3. the quality of ``short-summary`` on the local model drifts down over the last 8 days.

Every request carries a prompt of the project's generated workload (``evaluation.workload``)
and, while its prompt is stored, the item's reference answer in
``metadata["reference_answer"]``, so evaluation sweeps replay and grade real samples. The
first attempt of a multi-step-reasoning or ticket-triage request succeeds exactly when the
replay fleet's skill profile says that model answers that item correctly (hard tickets —
a second topic, shouting — trip the small models: what the demo's learned router learns).
Prompts are stored only while the task class keeps them.

Decisions carry the confidence the live system would give them: every
``GRADED_REFRESH_EVERY`` requests the graded outcomes so far (last
``SWITCHYARD_CONFIDENCE_WINDOW_DAYS`` days) are folded into the counts and the snapshot's
estimates refreshed (``routing.confidence``); at the end the stored counts are recomputed
(``evaluation.services.calibration``).
"""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.db import OperationalError, connection, connections, transaction
from django.utils import timezone

from controlplane.models import (
    Application,
    Route,
    RoutingTableVersion,
    TaskClass,
)
from evaluation.fleet.skills import SKILLS, verdict
from evaluation.services.calibration import graded_counts_refresh
from evaluation.workload import WorkloadItem, workload_items
from routing.confidence import SuccessCount, graded_success, success_probabilities
from routing.engine import (
    Decision,
    DecisionRequest,
    RoutingError,
    Snapshot,
    decide,
    snapshot_build,
)
from routing.services import RECORD_FOR_OUTCOME
from routing.snapshot import registry_snapshot_build, route_info
from telemetry.ids import uuid7, uuid7_time
from telemetry.models import DecisionRecord
from telemetry.partitions import partitions_ensure
from telemetry.record import decision_row_build
from telemetry.recorder import DecisionRow, decision_rows_copy
from telemetry.rollups import rollups_rebuild
from telemetry.services import (
    AttemptInput,
    OutcomeInput,
    decision_record_unsaved,
    outcome_report_batch,
)

logger = logging.getLogger(__name__)

DEMO_MARKER = "demo-traffic"  # metadata["source"] of every generated decision
DEFAULT_DECISIONS = 205_000
DEFAULT_DAYS = 30
BATCH = 3000
# Confidence estimates are refreshed from the graded outcomes every this many requests.
GRADED_REFRESH_EVERY = 150


@dataclass(frozen=True, slots=True)
class ClassProfile:
    """How one task class's requests look: size, success by tier, prompt template id
    (the prompts themselves come from the generated workload)."""

    input_tokens: int
    output_tokens: int
    context_tokens: int = 0
    # Probability that an attempt succeeds, by tier of the model that tries it.
    success_by_tier: tuple[float, float, float] = (0.96, 0.975, 0.985)
    quality_by_tier: tuple[float, float, float] = (0.86, 0.9, 0.93)
    template: str = ""


PROFILES: dict[str, ClassProfile] = {
    "ticket-triage": ClassProfile(
        900,
        24,
        template="triage-v3",
    ),
    "intent-detection": ClassProfile(
        300,
        8,
        template="intent-v2",
    ),
    "field-extraction": ClassProfile(
        6000,
        400,
        success_by_tier=(0.95, 0.97, 0.985),
        template="invoice-fields-v5",
    ),
    "short-summary": ClassProfile(
        1400,
        140,
        template="summary-v1",
    ),
    "policy-check": ClassProfile(
        2500,
        80,
        success_by_tier=(0.965, 0.975, 0.985),
        template="policy-v4",
    ),
    "pii-redaction": ClassProfile(
        2200,
        1500,
        success_by_tier=(0.97, 0.98, 0.99),
        template="redact-v2",
    ),
    "sql-generation": ClassProfile(
        4000,
        300,
        success_by_tier=(0.78, 0.915, 0.965),
        quality_by_tier=(0.7, 0.84, 0.9),
        template="sql-v7",
    ),
    "long-report-synthesis": ClassProfile(
        16000,
        2000,
        context_tokens=16000,
        success_by_tier=(0.6, 0.8, 0.95),
        quality_by_tier=(0.55, 0.72, 0.9),
        template="report-v2",
    ),
    "multi-step-reasoning": ClassProfile(
        220,
        380,
        success_by_tier=(0.5, 0.6, 0.7),
        quality_by_tier=(0.65, 0.75, 0.85),
        template="reasoning-v1",
    ),
    "customer-reply-draft": ClassProfile(
        2500,
        450,
        success_by_tier=(0.9, 0.95, 0.975),
        template="reply-v6",
    ),
}

# application → (share of all traffic, {task class: share within the application})
MIX: dict[str, tuple[float, dict[str, float]]] = {
    "support-desk": (
        0.55,
        {
            "ticket-triage": 0.3,
            "intent-detection": 0.22,
            "short-summary": 0.14,
            "customer-reply-draft": 0.12,
            "pii-redaction": 0.08,
            "field-extraction": 0.06,
            "policy-check": 0.08,
        },
    ),
    "bi-assistant": (
        0.2,
        {
            "sql-generation": 0.42,
            "long-report-synthesis": 0.26,
            "multi-step-reasoning": 0.32,
        },
    ),
    "internal-tools": (
        0.25,
        {
            "field-extraction": 0.35,
            "policy-check": 0.25,
            "short-summary": 0.2,
            "pii-redaction": 0.1,
            "intent-detection": 0.1,
        },
    ),
}

# Latency model per tier: time to first token (ms) and output tokens per second.
LATENCY_BY_TIER = {1: (70.0, 260.0), 2: (320.0, 120.0), 3: (650.0, 90.0)}
_APPS = list(MIX)
_APP_WEIGHTS = list(itertools.accumulate(MIX[a][0] for a in _APPS))
_CLASSES = {
    app: (list(mix), list(itertools.accumulate(mix.values()))) for app, (_, mix) in MIX.items()
}
PROCESSES = 2  # this machine has two cores
OUTAGE_MODEL = "llama-3.1-8b-local"
DRIFT_CLASS, DRIFT_MODEL = "short-summary", "llama-3.1-8b-local"
# Requests of these classes succeed (first attempt) as the replay fleet answers them; the
# first one's request size follows its prompt.
FLEET_GRADED_CLASS = "multi-step-reasoning"
FLEET_GRADED_CLASSES = frozenset({FLEET_GRADED_CLASS, "ticket-triage"})


def hour_weight(when: datetime) -> float:
    """Relative traffic of an hour: business-hours peak, quiet nights and weekends."""
    hour = when.hour + when.minute / 60
    daily = (
        0.15
        + math.exp(-(((hour - 13.5) / 3.6) ** 2))
        + 0.25 * math.exp(-(((hour - 20) / 2.0) ** 2))
    )
    weekly = 0.35 if when.weekday() >= 5 else 1.0
    return daily * weekly


@dataclass(slots=True)
class _Context:
    rng: random.Random
    now: datetime
    apps: dict[str, tuple[int, str]]  # slug → (id, team slug)
    retention: dict[str, int]
    outage: tuple[datetime, datetime]
    drift_start: datetime
    # Graded outcomes seen so far by (model, task class) and day: the counts the live
    # system's beat task keeps (evaluation.services.calibration), behind confidence.
    graded: dict[tuple[str, str], dict[date, list[int]]] = field(default_factory=dict)


def _graded_fold(ctx: _Context, outcomes: Sequence[OutcomeInput]) -> None:
    for outcome in outcomes:
        record = outcome.decision
        ok = graded_success(
            routed_model=record.model,
            attempts=outcome.attempts,
            quality_score=outcome.quality_score,
            validation=outcome.validation,
        )
        if ok is None:
            continue
        days = ctx.graded.setdefault((record.model, record.task_class), {})
        acc = days.setdefault(record.created_at.date(), [0, 0])
        acc[0] += int(ok)
        acc[1] += 1


def _graded_window(ctx: _Context, when: datetime) -> dict[tuple[str, str], SuccessCount]:
    since = (when - timedelta(days=settings.SWITCHYARD_CONFIDENCE_WINDOW_DAYS)).date()
    out = {}
    for pair, days in ctx.graded.items():
        s = sum(v[0] for d, v in days.items() if d >= since)
        n = sum(v[1] for d, v in days.items() if d >= since)
        if n:
            out[pair] = SuccessCount(successes=s, trials=n)
    return out


def _snapshot_confident(
    snapshot: Snapshot, graded: dict[tuple[str, str], SuccessCount]
) -> Snapshot:
    """The same snapshot with the confidence estimates of ``graded`` (no database)."""
    tiers = {slug: m.tier for slug, m in snapshot.models.items()}
    return snapshot_build(
        version=snapshot.version,
        models=snapshot.models,
        task_classes=snapshot.task_classes,
        routes=snapshot.routes,
        budgets=snapshot.budgets,
        quality=success_probabilities(graded, tiers, snapshot.task_classes),
        learned=snapshot.learned,
        semantic=snapshot.semantic,
    )


def _snapshot_at(
    when: datetime,
    versions: list[tuple[datetime, int, dict[str, Any]]],
    graded: dict[tuple[str, str], SuccessCount] | None = None,
) -> Snapshot:
    """The registry as the router saw it at ``when``: that version's routes, that spend,
    the graded outcomes so far (confidence)."""
    current = registry_snapshot_build(now=when, graded=graded)
    active = [v for v in versions if v[0] <= when]
    if not active:
        return current
    _, number, routes = active[-1]
    if number == current.version:
        return current
    return snapshot_build(
        version=number,
        models=current.models,
        task_classes=current.task_classes,
        routes=routes,
        budgets=current.budgets,
        quality=current.quality,
        learned=current.learned,
        semantic=current.semantic,
    )


def _versions() -> list[tuple[datetime, int, dict[str, Any]]]:
    out = []
    for version in RoutingTableVersion.objects.filter(activated_at__isnull=False).order_by(
        "activated_at"
    ):
        routes = {
            r.task_class.slug: route_info(r)
            for r in Route.objects.filter(version=version).select_related("task_class", "primary")
        }
        assert version.activated_at is not None
        out.append((version.activated_at, version.number, routes))
    return out


def _timestamps(rng: random.Random, start: datetime, end: datetime, total: int) -> list[datetime]:
    """``total`` request times in [start, end), spread by ``hour_weight`` with some noise."""
    hours = []
    cursor = start.replace(minute=0, second=0, microsecond=0)
    while cursor < end:
        hours.append(cursor)
        cursor += timedelta(hours=1)
    weights = [hour_weight(h) * rng.uniform(0.85, 1.15) for h in hours]
    scale = total / sum(weights)
    stamps = []
    for hour, weight in zip(hours, weights, strict=True):
        count = int(weight * scale + rng.random())
        for _ in range(count):
            at = hour + timedelta(seconds=rng.random() * 3600)
            if start <= at < end:
                stamps.append(at)
    stamps.sort()
    return stamps


def _request_for(
    ctx: _Context,
    at: datetime,
    app: str,
) -> tuple[DecisionRequest, str, dict[str, Any]]:
    rng = ctx.rng
    classes, weights = _CLASSES[app]
    task_class = rng.choices(classes, cum_weights=weights)[0]
    profile = PROFILES[task_class]
    items = workload_items(task_class)
    item = items[rng.randrange(len(items))]
    extra: dict[str, Any] = {"profile": profile, "prompt": item.prompt, "item": item}
    if task_class == FLEET_GRADED_CLASS:
        tokens = max(40, len(item.prompt) // 4 + 60)
    else:  # the prompt stands for the request; documents and context make up the size
        tokens = max(20, int(rng.lognormvariate(math.log(profile.input_tokens), 0.35)))
    classification = "internal"
    if app == "support-desk" and rng.random() < 0.03:
        classification = "personal"
    _, team = ctx.apps[app]
    request = DecisionRequest(
        task_class=task_class,
        input_tokens=tokens,
        context_tokens=tokens if profile.context_tokens else 0,
        data_classification=classification,
        team=team,
        application=app,
        prompt=item.prompt,  # what learned and semantic routes read
    )
    return request, app, extra


def _attempt_ok(
    ctx: _Context, model: str, tier: int, task_class: str, at: datetime, extra: dict[str, Any]
) -> bool:
    rng = ctx.rng
    if model == OUTAGE_MODEL and ctx.outage[0] <= at < ctx.outage[1]:
        return rng.random() < 0.08
    item: WorkloadItem = extra["item"]
    if task_class in FLEET_GRADED_CLASSES and not extra.get("retried") and model in SKILLS:
        # First attempt: what the replay fleet's skill profile says this model does on it.
        extra["retried"] = True
        outcome = verdict(model, SKILLS[model], task_class, item.difficulty, item.id)
        return outcome == "correct"
    p = extra["profile"].success_by_tier[tier - 1]
    if task_class == DRIFT_CLASS and model == DRIFT_MODEL and at >= ctx.drift_start:
        days = (at - ctx.drift_start).total_seconds() / 86400
        p -= 0.022 * days
    return rng.random() < p


def _outcome_for(
    ctx: _Context, row: DecisionRow, decision: Decision, extra: dict[str, Any]
) -> OutcomeInput:
    rng = ctx.rng
    at = row["created_at"]
    profile: ClassProfile = extra["profile"]
    chain = [decision.model, *(f.model for f in decision.fallbacks)][:3]
    attempts: list[AttemptInput] = []
    final_status = "ok"
    elapsed = 0
    for position, model in enumerate(chain):
        ok = _attempt_ok(ctx, model.slug, model.tier, row["task_class"], at, extra)
        outage = model.slug == OUTAGE_MODEL and ctx.outage[0] <= at < ctx.outage[1]
        ttft, tps = LATENCY_BY_TIER[model.tier]
        out_tokens = min(
            decision.max_output_tokens,
            max(1, int(rng.lognormvariate(math.log(profile.output_tokens), 0.4))),
        )
        latency = int((ttft + 1000 * out_tokens / tps) * rng.lognormvariate(0, 0.3))
        if ok:
            status = "ok"
        elif outage:
            status = "timeout" if rng.random() < 0.7 else "error"
            latency = 10_000 if status == "timeout" else int(rng.uniform(20, 80))
            out_tokens = 0
        else:
            status = rng.choices(
                ["invalid_output", "low_confidence", "error", "timeout"], [0.45, 0.35, 0.15, 0.05]
            )[0]
            if status in {"error", "timeout"}:
                out_tokens = 0
                latency = 8_000 if status == "timeout" else int(rng.uniform(30, 120))
        last = position == len(chain) - 1
        attempt: AttemptInput = {
            "model": model.slug,
            "status": status,
            "latency_ms": latency,
            "input_tokens": row["input_tokens"],
            "output_tokens": out_tokens,
        }
        if status != "ok" and not last:
            attempt["escalation_reason"] = status
        attempts.append(attempt)
        elapsed += latency
        final_status = status
        if ok or last:
            break
    quality: float | None = None
    if rng.random() < 0.5:  # the grader samples half of the outcomes
        tier = chain[len(attempts) - 1].tier
        if final_status == "ok":
            base = profile.quality_by_tier[tier - 1]
            if (
                row["task_class"] == DRIFT_CLASS
                and attempts[-1]["model"] == DRIFT_MODEL
                and at >= ctx.drift_start
            ):
                base -= 0.02 * (at - ctx.drift_start).total_seconds() / 86400
            quality = min(1.0, max(0.0, rng.gauss(base, 0.05)))
        else:
            quality = min(1.0, max(0.0, rng.gauss(0.3, 0.1)))
    # What charging reads of the stored row, as the live outcome API loads it.
    columns = cast(dict[str, Any], row)
    record = decision_record_unsaved(**{name: columns[name] for name in RECORD_FOR_OUTCOME})
    return OutcomeInput(
        decision=record,
        attempts=attempts,
        final_status=final_status,
        quality_score=quality,
        retrieval_document_ids=row["retrieval_document_ids"],
        reported_at=at + timedelta(milliseconds=elapsed + rng.randint(5, 400)),
    )


def _batch(
    ctx: _Context,
    stamps: Sequence[tuple[datetime, str]],
    snapshot: Snapshot,
) -> tuple[list[DecisionRow], list[OutcomeInput]]:
    rows: list[DecisionRow] = []
    outcomes: list[OutcomeInput] = []
    rng = ctx.rng
    folded = 0
    for position, (at, application) in enumerate(stamps):
        if position and position % GRADED_REFRESH_EVERY == 0:
            # What the beat task does live: fold the graded outcomes so far into the counts
            # and decide with the new confidence estimates.
            _graded_fold(ctx, outcomes[folded:])
            folded = len(outcomes)
            snapshot = _snapshot_confident(snapshot, _graded_window(ctx, at))
        request, app, extra = _request_for(ctx, at, application)
        started = time.perf_counter_ns()
        try:
            decision = decide(request, snapshot)
        except RoutingError:
            continue  # the API answers 4xx/429 and records nothing
        decision_us = max(1, (time.perf_counter_ns() - started) // 1000)
        decision_id = uuid7(int(at.timestamp() * 1000))
        created_at = uuid7_time(decision_id)
        retention = ctx.retention.get(request.task_class, 0)
        expires = created_at + timedelta(days=retention)
        keep = retention > 0 and expires > ctx.now
        retrieval_query, documents = "", tuple[str, ...]()
        if request.task_class in {"long-report-synthesis", "customer-reply-draft"}:
            retrieval_query = extra["prompt"][:80]
            documents = tuple(f"kb-{rng.randrange(1, 4000)}" for _ in range(rng.randint(2, 6)))
        app_id, team = ctx.apps[app]
        row = decision_row_build(
            decision_id=decision_id,
            created_at=created_at,
            request=request,
            decision=decision,
            application_id=app_id,
            application=app,
            team=team,
            request_id=f"demo-{decision_id.hex[:20]}",
            prompt=extra["prompt"] if keep else None,
            prompt_expires_at=expires if keep else None,
            prompt_template_id=extra["profile"].template,
            prompt_template_version="1",
            retrieval_query=retrieval_query,
            retrieval_document_ids=documents,
            metadata=(
                {"source": DEMO_MARKER, "reference_answer": extra["item"].reference}
                if keep
                else {"source": DEMO_MARKER}
            ),
            end_user=f"user-{rng.randrange(1, 2500)}",
            decision_us=int(decision_us),
        )
        rows.append(row)
        outcomes.append(_outcome_for(ctx, row, decision, extra))
    _graded_fold(ctx, outcomes[folded:])
    return rows, outcomes


def _chunks(
    stamps: Sequence[tuple[datetime, str]], boundaries: Sequence[datetime]
) -> Iterator[Sequence[tuple[datetime, str]]]:
    """Batches of at most BATCH requests that never straddle a routing-table activation
    (a batch is decided on one snapshot)."""
    chunk: list[tuple[datetime, str]] = []
    upcoming = sorted(boundaries)
    for stamp in stamps:
        crossed = False
        while upcoming and stamp[0] >= upcoming[0]:
            upcoming.pop(0)
            crossed = True
        if chunk and (crossed or len(chunk) >= BATCH):
            yield chunk
            chunk = []
        chunk.append(stamp)
    if chunk:
        yield chunk


def _outcomes_report(outcomes: Sequence[OutcomeInput]) -> int:
    """``outcome_report_batch``, retried when PostgreSQL breaks a deadlock: the two loader
    processes charge the same budget rows, in whatever order their batches hold them. The
    batch is one transaction, so a retry never charges twice."""
    for attempt in range(5):
        try:
            return outcome_report_batch(outcomes)
        except OperationalError as exc:
            if "deadlock" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    return 0


def _load_part(
    ctx: _Context,
    stamps: Sequence[tuple[datetime, str]],
    versions: list[tuple[datetime, int, dict[str, Any]]],
) -> tuple[int, int]:
    """Simulate and store one share of the traffic, batch by batch, in time order."""
    written = reported = 0
    for chunk in _chunks(stamps, [v[0] for v in versions]):
        at = chunk[0][0]
        rows, outcomes = _batch(ctx, chunk, _snapshot_at(at, versions, _graded_window(ctx, at)))
        with transaction.atomic(), connection.cursor() as cursor:
            written += decision_rows_copy(cursor.cursor, rows)
        reported += _outcomes_report(outcomes)
    return written, reported


def _load_part_in_child(
    args: tuple[
        _Context, Sequence[tuple[datetime, str]], list[tuple[datetime, int, dict[str, Any]]]
    ],
) -> tuple[int, int]:
    connections.close_all()  # never share the parent's socket
    try:
        return _load_part(*args)
    finally:
        connections.close_all()


def _load(
    ctx: _Context,
    stamps: list[tuple[datetime, str]],
    versions: list[tuple[datetime, int, dict[str, Any]]],
    processes: int,
) -> tuple[int, int]:
    """Two processes (one per core) take every other request, each in time order.

    Each batch's snapshot reads the budget spend both have committed so far, so the router
    sees spend at most one batch late. Inside a transaction (tests) everything runs
    in-process: another process could not see the uncommitted registry.
    """
    parts = [stamps[index::processes] for index in range(processes)]
    if connection.in_atomic_block or len(parts) < 2:
        return _load_part(ctx, stamps, versions)
    connections.close_all()
    jobs = [(replace(ctx, rng=random.Random(ctx.rng.random())), part, versions) for part in parts]
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
        results = pool.map(_load_part_in_child, jobs)
    return sum(r[0] for r in results), sum(r[1] for r in results)


def demo_traffic_present() -> bool:
    return DecisionRecord.objects.filter(metadata__source=DEMO_MARKER).exists()


def demo_traffic_load(
    *,
    decisions: int = DEFAULT_DECISIONS,
    days: int = DEFAULT_DAYS,
    seed: int = 7,
    now: datetime | None = None,
    force: bool = False,
    processes: int = PROCESSES,
) -> dict[str, Any]:
    """Load the demo traffic (skipped when present) and rebuild the rollups.

    Returns counts and timings. Needs the demo registry (``controlplane.demo``).
    """
    if not force and demo_traffic_present():
        return {"skipped": True, "decisions": 0}
    started = time.monotonic()
    now = now or timezone.now()
    start = now - timedelta(days=days)
    rng = random.Random(seed)
    apps = {a.slug: (a.pk, a.team.slug) for a in Application.objects.select_related("team")}
    missing = set(MIX) - set(apps)
    if missing:
        raise RuntimeError(
            f"demo applications missing ({', '.join(sorted(missing))}): "
            "run manage.py demo_load first"
        )
    outage_day = (now - timedelta(days=6)).replace(hour=13, minute=0, second=0, microsecond=0)
    ctx = _Context(
        rng=rng,
        now=now,
        apps=apps,
        retention=dict(TaskClass.objects.values_list("slug", "prompt_retention_days")),
        outage=(outage_day, outage_day + timedelta(hours=3)),
        drift_start=now - timedelta(days=8),
    )
    for task_class in PROFILES:  # generated once here; forked loader processes inherit them
        workload_items(task_class)
    partitions_ensure(start.date() - timedelta(days=1), now.date() + timedelta(days=1))
    versions = _versions()
    stamps = _timestamps(rng, start, now, decisions)
    apps_of = [rng.choices(_APPS, cum_weights=_APP_WEIGHTS)[0] for _ in stamps]
    written = _load(ctx, list(zip(stamps, apps_of, strict=True)), versions, processes)
    loaded = time.monotonic() - started
    rollup_rows = rollups_rebuild(start=start - timedelta(hours=1), end=now + timedelta(hours=1))
    graded_counts_refresh(now=now)
    elapsed = time.monotonic() - started
    logger.info(
        "demo traffic: %d decisions in %.1f s (rollups %.1f s)",
        written[0],
        elapsed,
        elapsed - loaded,
    )
    return {
        "skipped": False,
        "decisions": written[0],
        "outcomes": written[1],
        "rollup_rows": rollup_rows,
        "load_s": round(loaded, 1),
        "total_s": round(elapsed, 1),
        "started": start.astimezone(UTC).isoformat(),
    }
