"""``routerbench`` through the product: recorded outcomes fed into a scratch database.

``evaluation.routerbench`` reads RouteLLM-format recordings and computes the metrics; this
module runs the learned router and the cascade the way a deployment does, in a scratch
PostgreSQL database created for the run and dropped afterwards (also on error):

1. :func:`scratch_database`: ``CREATE DATABASE routerbench_<pid>_<hex>`` on the configured
   server, the project's migrations, Django's connection pointed at it; afterwards the
   connection is pointed back and the database dropped (``WITH (FORCE)``).
2. :func:`bench_registry`: the two models (weak: tier 1, local; strong: tier 3, cloud, ten
   times the price), a team and an application, through ``controlplane.services``.
3. Per dataset and fold a task class (``<dataset>-f<k>``; GSM8K with the numeric grader),
   routed by a rule (weak, then strong). Every training prompt is decided twice by the
   engine (``routing.engine.decide``): as routed (the weak model) and pinned to the strong
   model (``routing.pinning.decision_pinned``, as the gateway pins a named model); both rows
   are built by ``telemetry.record.decision_row_build`` and stored by the recorder's COPY
   (``telemetry.recorder.decision_rows_copy``), and each gets its graded outcome from the
   recording through ``telemetry.services.outcome_report_batch`` (``validation.valid``).
4. ``evaluation.services.learned.learned_router_train`` (rule ``gain``) reads that decision
   log and stores a candidate router; it is activated (``learned_router_activate``) and the
   route switched to the ``learned`` strategy in a new routing-table version. Its threshold
   is calibrated to :data:`STRONG_SHARE_TARGET` on the class's recorded traffic
   (``evaluation.services.thresholds.learned_threshold_calibrate``) and the re-thresholded
   version activated.
5. Held-out prompts are decided by the engine on a snapshot built from the scratch database
   (``routing.snapshot.registry_snapshot_build``): the learned strategy's choice and
   confidence at the calibrated threshold, and the router's predicted success of each model
   (the same ``predict_success`` on the same features the engine computes) to trace the
   cost–quality curve. On GSM8K the router is re-thresholded to try the weak model first
   (``learned_router_rethreshold``), those decisions are recorded, and the weak model's
   recorded answer goes through the cascade call (``evaluation.services.cascade.
   cascade_check``), whose probability of success ranks the prompts for the cascade.
"""

from __future__ import annotations

import bisect
import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.utils import timezone

from controlplane import services as registry
from controlplane.models import ModelEndpoint, TaskClass
from evaluation import routerbench as bench
from evaluation.logreg import group_folds
from evaluation.models import (
    GraderConfig,
    LearnedRouter,
    LearnedRouterRule,
    LearnedThresholdTarget,
    ThresholdTargetKind,
)
from evaluation.services.cascade import cascade_check
from evaluation.services.learned import (
    learned_router_activate,
    learned_router_rethreshold,
    learned_router_train,
)
from evaluation.services.thresholds import learned_threshold_calibrate
from routing.condense import estimate_tokens
from routing.engine import Decision, DecisionRequest, Snapshot, decide
from routing.enums import RouteStrategy
from routing.learned import (
    GROUP_METADATA_KEY,
    LearnedRouterInfo,
    predict_success,
    request_features,
)
from routing.pinning import decision_pinned
from routing.schemas import CascadeInput
from routing.snapshot import registry_cache, registry_snapshot_build
from telemetry.ids import uuid7, uuid7_time
from telemetry.models import DecisionRecord
from telemetry.record import decision_row_build
from telemetry.recorder import DecisionRow, decision_rows_copy
from telemetry.services import OutcomeInput, outcome_report_batch

logger = logging.getLogger(__name__)

WEAK_SLUG = "bench-weak"
STRONG_SLUG = "bench-strong"
APPLICATION = "routerbench"
BATCH = 5000
# The rule-gain threshold the router is trained with (routing.learned: route to the weak
# model unless it is predicted to lose more than this) …
GAIN_THRESHOLD = 0.05
# … and the target its threshold is then calibrated to on the class's own recorded
# traffic (evaluation.services.thresholds): half of the requests on the strong model. The
# held-out prompts are decided at the calibrated threshold.
STRONG_SHARE_TARGET = 0.5


# --------------------------------------------------------------------------------------------
# The scratch database
# --------------------------------------------------------------------------------------------


def _quoted(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")
    return f'"{name}"'


@contextmanager
def scratch_database(prefix: str = "routerbench") -> Iterator[str]:
    """A new database on the configured server with the project's schema, Django's default
    connection pointed at it for the duration; dropped afterwards, even on error."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    original = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {_quoted(name)}")  # autocommit: outside a block
    connections.close_all()
    # No background refresher thread for the registry cache (the cascade call reads it):
    # nothing may hold a connection to the scratch database after it is gone.
    check_s = settings.SWITCHYARD_SNAPSHOT_CHECK_S
    settings.SWITCHYARD_SNAPSHOT_CHECK_S = 0.0
    try:
        connection.settings_dict["NAME"] = name
        settings.DATABASES["default"]["NAME"] = name
        registry_cache.invalidate()
        call_command("migrate", verbosity=0, interactive=False)
        yield name
    finally:
        connections.close_all()
        connection.settings_dict["NAME"] = original
        settings.DATABASES["default"]["NAME"] = original
        settings.SWITCHYARD_SNAPSHOT_CHECK_S = check_s
        registry_cache.invalidate()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")


def scratch_databases_left(prefix: str = "routerbench", pid: int | None = None) -> list[str]:
    """Scratch databases this process (``pid``) created and that still exist (a test checks
    that none is left behind)."""
    pattern = f"{prefix}\\_{os.getpid() if pid is None else pid}\\_%"
    with connection.cursor() as cursor:
        cursor.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [pattern])
        return sorted(row[0] for row in cursor.fetchall())


# --------------------------------------------------------------------------------------------
# The registry of the bench
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchRegistry:
    weak: ModelEndpoint
    strong: ModelEndpoint
    application_id: int
    team: str


def bench_registry() -> BenchRegistry:
    """The two models, a team and an application, through the registry's services."""
    since = timezone.now() - timedelta(days=30)
    common: dict[str, Any] = {
        "provider": "recorded",
        "base_url": "http://127.0.0.1:9/v1",
        "context_window": 1_000_000,
        "max_output_tokens": 1024,
        "price_effective_from": since,
    }
    weak = registry.model_endpoint_create(
        slug=WEAK_SLUG,
        provider_model=bench.WEAK,
        tier=1,
        locality="local",
        input_usd_per_mtok="0.60",
        output_usd_per_mtok="0.60",
        **common,
    )
    strong = registry.model_endpoint_create(
        slug=STRONG_SLUG,
        provider_model=bench.STRONG,
        tier=3,
        locality="cloud",
        input_usd_per_mtok="10.00",
        output_usd_per_mtok="30.00",
        **common,
    )
    team = registry.team_get_or_create(slug="routerbench")
    app = registry.application_get_or_create(slug=APPLICATION, team=team)
    return BenchRegistry(weak, strong, app.pk, team.slug)


def _classes_route(
    classes: Sequence[TaskClass], reg: BenchRegistry, strategy: str = RouteStrategy.RULE
) -> None:
    """One new active routing-table version: ``classes`` routed weak → strong by
    ``strategy`` (other routes kept)."""
    draft = registry.routing_version_draft_create()
    for task_class in classes:
        registry.route_set(
            version=draft,
            task_class=task_class,
            primary=reg.weak,
            fallbacks=[reg.strong.slug],
            strategy=strategy,
        )
    registry.routing_version_activate(version=draft, comment="routerbench")


# --------------------------------------------------------------------------------------------
# Recording decisions and outcomes
# --------------------------------------------------------------------------------------------


def _request(task_class: str, row: bench.Row, reg: BenchRegistry) -> DecisionRequest:
    """The decision request of one recorded prompt; its metadata names its source (the
    MMLU domain, a GSM8K hash bucket) under ``GROUP_METADATA_KEY``, as a deployment's
    requests may name theirs: training cross-validates grouped by it (not a feature)."""
    tokens = max(1, estimate_tokens(row.prompt))  # the decision API's estimate
    return DecisionRequest(
        task_class=task_class,
        input_tokens=tokens,
        context_tokens=tokens,
        team=reg.team,
        application=APPLICATION,
        prompt=row.prompt,
        metadata={"source": "routerbench", GROUP_METADATA_KEY: row.group},
    )


def _row(
    request: DecisionRequest, decision: Decision, reg: BenchRegistry, at: datetime
) -> DecisionRow:
    decision_id = uuid7(int(at.timestamp() * 1000))
    return decision_row_build(
        decision_id=decision_id,
        created_at=uuid7_time(decision_id),
        request=request,
        decision=decision,
        application_id=reg.application_id,
        application=APPLICATION,
        team=reg.team,
        prompt=request.prompt,
        metadata=dict(request.metadata or {}),
    )


def _record(row: DecisionRow) -> DecisionRecord:
    return DecisionRecord(
        id=row["id"],
        created_at=row["created_at"],
        application_id=row["application_id"],
        application=row["application"],
        team=row["team"],
        task_class=row["task_class"],
        model=row["model"],
        tier=row["tier"],
        confidence=row["confidence"],
        prompt=row["prompt"],
        path=row["path"],
        budget_holds=row["budget_holds"],
    )


def _outcome(row: DecisionRow, success: bool, at: datetime) -> OutcomeInput:
    return OutcomeInput(
        decision=_record(row),
        attempts=[
            {
                "model": row["model"],
                "status": "ok",
                "latency_ms": 1,
                "input_tokens": row["input_tokens"],
                "output_tokens": 1,
            }
        ],
        final_status="ok",
        validation={"valid": success},
        reported_at=at,
    )


def _store(rows: list[DecisionRow], outcomes: list[OutcomeInput]) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        decision_rows_copy(cursor.cursor, rows)
    if outcomes:
        outcome_report_batch(outcomes)


def training_record(
    task_class: str, rows: Sequence[bench.Row], reg: BenchRegistry, at: datetime
) -> int:
    """Every training prompt decided twice (as routed, and pinned to the strong model),
    both decisions stored with their graded outcome. Returns the decisions stored."""
    snapshot = registry_snapshot_build()
    stored = 0
    decisions: list[DecisionRow] = []
    outcomes: list[OutcomeInput] = []
    for r in rows:
        request = _request(task_class, r, reg)
        routed = decide(request, snapshot)
        pinned = decision_pinned(routed, reg.strong.slug, request, snapshot)
        for decision in (routed, pinned):
            row = _row(request, decision, reg, at)
            success = r.weak if decision.model.slug == reg.weak.slug else r.strong
            decisions.append(row)
            outcomes.append(_outcome(row, success, at))
        if len(decisions) >= BATCH:
            _store(decisions, outcomes)
            stored += len(decisions)
            decisions, outcomes = [], []
    if decisions:
        _store(decisions, outcomes)
        stored += len(decisions)
    return stored


# --------------------------------------------------------------------------------------------
# Training and scoring
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Scored:
    """What the product said about the held-out prompts of one dataset (aligned with its
    rows): the router's predicted success of each model, the engine's decision at the
    threshold (chosen model, confidence), and the cascade's probability (GSM8K)."""

    p_weak: list[float]
    p_strong: list[float]
    chose_strong: list[bool]
    confidence: list[float]
    cascade: list[float] | None
    routers: list[dict[str, Any]]
    # The share of the fold's training traffic the router ranks at or below the prompt
    # (the strong share at which a threshold calibrated on that traffic sends it to the
    # weak model): what the fold's router routes at every calibrated target, comparable
    # across folds.
    traffic_rank: list[float] = field(default_factory=list)


def _fold_class(dataset: str, fold: int, numeric: bool) -> TaskClass:
    task_class = TaskClass.objects.create(
        slug=f"{dataset}-f{fold}",
        name=f"routerbench {dataset} fold {fold}",
        default_output_cap=256,
        quality_target=Decimal("0.8"),
        prompt_retention_days=30,
    )
    if numeric:
        GraderConfig.objects.create(task_class=task_class, kind="numeric")
    return task_class


def _splits(
    rows: Sequence[bench.Row], train_rows: Sequence[bench.Row], folds: int
) -> list[tuple[list[bench.Row], list[int]]]:
    """(training rows, indexes of the held-out rows) per fold."""
    if train_rows:
        return [(list(train_rows), list(range(len(rows))))]
    fold_of = group_folds([r.group for r in rows], folds)
    return [
        (
            [r for r, f in zip(rows, fold_of, strict=True) if f != k],
            [i for i, f in enumerate(fold_of) if f == k],
        )
        for k in range(folds)
    ]


def _describe(router: LearnedRouter) -> dict[str, Any]:
    return {
        "task_class": router.task_class.slug,
        "version": router.version,
        "threshold": router.threshold,
        "rule": router.rule,
        "samples": {s: v.get("train") for s, v in router.samples.items()},
        "l2": router.l2,
        "features": router.metrics.get("features"),
        "heldout_brier": {
            s: m.get("brier") for s, m in router.metrics.items() if s in router.coefficients
        },
    }


def dataset_score(
    dataset: str,
    rows: Sequence[bench.Row],
    train_rows: Sequence[bench.Row],
    folds: int,
    reg: BenchRegistry,
) -> Scored:
    """Record, train and score one dataset (see the module docstring)."""
    cascade = any(r.weak_response for r in rows)
    splits = _splits(rows, train_rows, folds)
    classes = [_fold_class(dataset, k, cascade) for k in range(len(splits))]
    _classes_route(classes, reg)
    now = timezone.now()
    at = now - timedelta(minutes=5)
    for task_class, (training, _) in zip(classes, splits, strict=True):
        training_record(task_class.slug, training, reg, at)
    trained: list[LearnedRouter] = []
    for task_class in classes:
        router = learned_router_train(
            task_class, rule=LearnedRouterRule.GAIN, threshold=GAIN_THRESHOLD, now=now
        )
        if router is None:
            raise RuntimeError(f"{task_class.slug}: not enough graded decisions to train")
        learned_router_activate(router)
        trained.append(router)
    _classes_route(classes, reg, RouteStrategy.LEARNED)
    trained = [_calibrated(router) for router in trained]
    n = len(rows)
    out = Scored([0.0] * n, [0.0] * n, [False] * n, [0.0] * n, [0.0] * n if cascade else None,
                 [_describe(r) for r in trained])  # fmt: skip
    snapshot = registry_snapshot_build()
    out.traffic_rank = [0.0] * n
    for task_class, (training, test) in zip(classes, splits, strict=True):
        _score_learned(snapshot, task_class.slug, [rows[i] for i in test], test, reg, out)
        _rank_in_traffic(snapshot, task_class.slug, training, test, reg, out)
    if cascade:
        for router in trained:
            learned_router_activate(learned_router_rethreshold(router, threshold=1.0))
        snapshot = registry_snapshot_build()
        registry_cache.invalidate()
        for task_class, (_, test) in zip(classes, splits, strict=True):
            _score_cascade(snapshot, task_class.slug, [rows[i] for i in test], test, reg, out)
    return out


def _calibrated(router: LearnedRouter) -> LearnedRouter:
    """The router re-thresholded to :data:`STRONG_SHARE_TARGET` on its class's recorded
    traffic, and activated."""
    target = LearnedThresholdTarget.objects.create(
        task_class=router.task_class,
        kind=ThresholdTargetKind.STRONG_SHARE,
        target=STRONG_SHARE_TARGET,
        window_days=1,
        min_requests=1,
        min_change=0.0,
    )
    result = learned_threshold_calibrate(target, propose=False)
    if "calibrated" not in result:
        raise RuntimeError(f"{router.task_class.slug}: threshold not calibrated ({result})")
    calibrated = learned_router_rethreshold(router, threshold=result["calibrated"]["threshold"])
    learned_router_activate(calibrated)
    return calibrated


def _predicted(router: LearnedRouterInfo, request: DecisionRequest) -> dict[str, float]:
    """The router's predicted success of every model on ``request`` (as the engine sees it)."""
    features = request_features(
        router.spec, request.prompt, template=request.prompt_template, metadata=request.metadata
    )
    return predict_success(router, features)


def _score_learned(
    snapshot: Snapshot,
    task_class: str,
    rows: Sequence[bench.Row],
    index: Sequence[int],
    reg: BenchRegistry,
    out: Scored,
) -> None:
    router = snapshot.learned[task_class]
    for i, r in zip(index, rows, strict=True):
        request = _request(task_class, r, reg)
        decision = decide(request, snapshot)
        if decision.strategy != RouteStrategy.LEARNED:
            raise RuntimeError(f"{task_class}: decided by {decision.strategy}, not learned")
        predicted = _predicted(router, request)
        out.p_weak[i] = predicted[reg.weak.slug]
        out.p_strong[i] = predicted[reg.strong.slug]
        out.chose_strong[i] = decision.model.slug == reg.strong.slug
        out.confidence[i] = decision.confidence


def _rank_in_traffic(
    snapshot: Snapshot,
    task_class: str,
    training: Sequence[bench.Row],
    index: Sequence[int],
    reg: BenchRegistry,
    out: Scored,
) -> None:
    """``Scored.traffic_rank`` of the held-out prompts ``index``: the router's gain score
    (predicted success of the weak model minus the strong one's) placed among the scores
    of the fold's training prompts, the traffic its threshold is calibrated on."""
    router = snapshot.learned[task_class]
    scores = []
    for r in training:
        request = _request(task_class, r, reg)
        predicted = _predicted(router, request)
        scores.append(predicted[reg.weak.slug] - predicted[reg.strong.slug])
    scores.sort()
    for i in index:
        gain = out.p_weak[i] - out.p_strong[i]
        out.traffic_rank[i] = bisect.bisect_right(scores, gain) / max(1, len(scores))


def _score_cascade(
    snapshot: Snapshot,
    task_class: str,
    rows: Sequence[bench.Row],
    index: Sequence[int],
    reg: BenchRegistry,
    out: Scored,
) -> None:
    """Decide (the weak model first), record, and ask the cascade call about the weak
    model's recorded answer."""
    assert out.cascade is not None
    at = timezone.now() - timedelta(minutes=1)
    decided = []
    for r in rows:
        request = _request(task_class, r, reg)
        decision = decide(request, snapshot)
        if decision.model.slug != reg.weak.slug:
            raise RuntimeError(f"{task_class}: the cascade's first attempt is not the weak model")
        decided.append(_row(request, decision, reg, at))
    _store(decided, [])
    for i, r, row in zip(index, rows, decided, strict=True):
        verdict = cascade_check(
            record=_record(row), attempt=CascadeInput(output=r.weak_response, model=reg.weak.slug)
        )
        out.cascade[i] = float(verdict["p_success"])


def routerbench_run(
    data: Path,
    *,
    train: Path | None = None,
    folds: int = 5,
    seed: int = 0,
    weak: str = bench.WEAK,
    strong: str = bench.STRONG,
) -> tuple[dict[str, Any], dict[str, tuple[list[bench.Row], dict[str, list[float]]]]]:
    """Results per dataset found in ``data``, the learned router and the cascade run through
    the product in a scratch database (see the module docstring)."""
    results: dict[str, Any] = {}
    scored: dict[str, tuple[list[bench.Row], dict[str, list[float]]]] = {}
    loaded = []
    for name, loader in bench.LOADERS.items():
        rows = loader(data, weak, strong)
        train_rows = loader(train, weak, strong) if train is not None else []
        if rows and (train is None or train_rows):
            loaded.append((name, rows, train_rows))
    if not loaded:
        return results, scored
    with scratch_database() as database:
        logger.info("routerbench: scratch database %s", database)
        reg = bench_registry()
        for name, rows, train_rows in loaded:
            product = dataset_score(name, rows, train_rows, folds, reg)
            results[name], routers = bench.evaluate(
                rows,
                train_rows=train_rows,
                folds=folds,
                seed=seed,
                product=bench.ProductScores(
                    p_weak=product.p_weak,
                    p_strong=product.p_strong,
                    chose_strong=product.chose_strong,
                    confidence=product.confidence,
                    cascade=product.cascade,
                    routers=product.routers,
                    traffic_rank=product.traffic_rank,
                ),
            )
            results[name]["learned"]["calibrated_to"] = {"strong_share": STRONG_SHARE_TARGET}
            scored[name] = (rows, routers)
    return results, scored
