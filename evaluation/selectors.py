"""Reads for evaluation: model targets, graders, replay samples, volumes, proposals, runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict

from django.db import connection
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from controlplane.models import (
    DataPolicy,
    Locality,
    ModelEndpoint,
    ModelStatus,
    Route,
    RoutingTableVersion,
    TaskClass,
    VersionStatus,
)
from evaluation.client import ModelTarget, model_timeout_s
from evaluation.graders import GraderSpec, grader_default_spec
from evaluation.models import (
    OPEN_PROPOSAL_STATUSES,
    GradedCount,
    GraderConfig,
    LearnedRouter,
    LearnedRouterStatus,
    Proposal,
    ProposalStatus,
    SweepRun,
    SweepSample,
)
from evaluation.replay import PromptShape
from routing.confidence import (
    QUALITY_PASS,
    VALIDATION_KEYS,
    SuccessCount,
)
from routing.learned import LearnedRouterInfo, learned_router_from_data
from telemetry.models import DecisionOutcome, DecisionRecord

logger = logging.getLogger(__name__)

PERSONAL_CLASSIFICATIONS = ("personal", "confidential")
REFERENCE_KEYS = ("reference_answer", "reference")


def model_target(model: ModelEndpoint) -> ModelTarget:
    return ModelTarget(
        slug=model.slug,
        base_url=model.base_url,
        provider_model=model.provider_model,
        tier=model.tier,
        locality=model.locality,
        timeout_s=model_timeout_s(model.slug, model.tier),
        max_output_tokens=model.max_output_tokens,
    )


def grader_spec_for(task_class: TaskClass) -> GraderSpec:
    config = (
        GraderConfig.objects.select_related("judge_model", "judge_prompt")
        .filter(task_class=task_class)
        .first()
    )
    if config is None:
        return grader_default_spec(output_schema=task_class.output_schema)
    judge = model_target(config.judge_model) if config.judge_model else None
    prompt = config.judge_prompt
    return GraderSpec(
        kind=config.kind,
        params=config.params or {},
        output_schema=task_class.output_schema,
        judge=judge,
        judge_template=prompt.template if prompt else "",
        judge_prompt_label=str(prompt) if prompt else "",
    )


def prompt_shape_for(task_class: TaskClass, route: Route | None) -> PromptShape:
    cap = (route.output_cap if route else None) or task_class.default_output_cap
    response_format = None
    if task_class.output_schema:
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": task_class.slug, "schema": task_class.output_schema},
        }
    return PromptShape(max_tokens=cap, response_format=response_format)


def routing_version_active() -> RoutingTableVersion | None:
    return RoutingTableVersion.objects.filter(status=VersionStatus.ACTIVE).first()


def active_routes(version: RoutingTableVersion) -> list[Route]:
    return list(
        version.routes.select_related("primary", "task_class")
        .filter(task_class__is_active=True)
        .order_by("task_class__slug")
    )


def _allowed(task_class: TaskClass, route: Route | None) -> QuerySet[ModelEndpoint]:
    models = ModelEndpoint.objects.filter(status=ModelStatus.ACTIVE)
    if task_class.data_policy == DataPolicy.LOCAL_ONLY:
        models = models.filter(locality=Locality.LOCAL)
    cap = (route.output_cap if route else None) or task_class.default_output_cap
    return models.filter(max_output_tokens__gte=cap)


def _by_price(models: list[ModelEndpoint]) -> list[ModelEndpoint]:
    now = timezone.now()

    def key(model: ModelEndpoint) -> tuple[Decimal, str]:
        price = model.price_at(now)
        total = price.input_usd_per_mtok + price.output_usd_per_mtok if price else Decimal(0)
        return total, model.slug

    return sorted(models, key=key)


def model_candidates_for_tier(route: Route, tier: int) -> list[ModelEndpoint]:
    """Active models of ``tier`` that the class's data policy and output cap allow, cheapest
    first (local before cloud at equal price: data stays inside)."""
    models = list(_allowed(route.task_class, route).filter(tier=tier).exclude(pk=route.primary_id))
    return _by_price(models)


def replay_requests(
    *, task_class: str, since: datetime, limit: int, allow_personal: bool, now: datetime
) -> list[dict[str, Any]]:
    """The most recent requests of a class with a prompt still inside its retention."""
    rows = DecisionRecord.objects.filter(
        task_class=task_class,
        created_at__gte=since,
        created_at__lte=now,
        prompt__isnull=False,
        prompt_expires_at__gt=now,
    )
    if not allow_personal:
        rows = rows.exclude(data_classification__in=PERSONAL_CLASSIFICATIONS).filter(
            pii_types__len=0
        )
    values = rows.order_by("-created_at").values(
        "id", "created_at", "prompt", "prompt_expires_at", "metadata", "model"
    )[:limit]
    return [dict(row) for row in values]


def replay_personal_count(*, task_class: str, since: datetime, now: datetime) -> int:
    """Requests that a cloud candidate must never see (personal data)."""
    return (
        DecisionRecord.objects.filter(
            task_class=task_class,
            created_at__gte=since,
            created_at__lte=now,
            prompt__isnull=False,
            prompt_expires_at__gt=now,
        )
        .filter(Q(data_classification__in=PERSONAL_CLASSIFICATIONS) | Q(pii_types__len__gt=0))
        .count()
    )


def reference_of(metadata: Any) -> str | None:
    if isinstance(metadata, dict):
        for key in REFERENCE_KEYS:
            value = metadata.get(key)
            if value is not None and value != "":
                return str(value)
    return None


class ClassVolume(TypedDict):
    requests: int
    input_tokens: int
    output_tokens: int
    days: int


def class_volume(*, task_class: str, model: str, days: int = 30) -> ClassVolume:
    """Last ``days`` of traffic of a class on a model; output tokens come from outcomes and are
    scaled up to the decisions that have none yet."""
    since = timezone.now() - timedelta(days=days)
    decisions = DecisionRecord.objects.filter(
        task_class=task_class, model=model, created_at__gte=since
    ).aggregate(n=Count("id"), tokens=Sum("input_tokens"))
    outcomes = DecisionOutcome.objects.filter(
        task_class=task_class, routed_model=model, decision_created_at__gte=since
    ).aggregate(n=Count("decision_id"), out=Sum("output_tokens"))
    requests = int(decisions["n"] or 0)
    output = int(outcomes["out"] or 0)
    if outcomes["n"] and requests > outcomes["n"]:
        output = round(output * requests / outcomes["n"])
    return {
        "requests": requests,
        "input_tokens": int(decisions["tokens"] or 0),
        "output_tokens": output,
        "days": days,
    }


def monthly_cost_delta(
    *, volume: ClassVolume, from_model: ModelEndpoint, to_model: ModelEndpoint
) -> dict[str, Any]:
    """What the class's actual traffic costs on each model per 30 days (current prices)."""
    now = timezone.now()
    scale = Decimal(30) / Decimal(volume["days"])
    costs: dict[str, Any] = {}
    for label, model in (("from", from_model), ("to", to_model)):
        price = model.price_at(now)
        cost = (
            price.cost_usd(volume["input_tokens"], volume["output_tokens"]) * scale
            if price
            else Decimal(0)
        )
        costs[label] = cost
    return {
        "from_monthly_usd": float(round(costs["from"], 2)),
        "to_monthly_usd": float(round(costs["to"], 2)),
        "savings_monthly_usd": float(round(costs["from"] - costs["to"], 2)),
    }


class EscalationStats(TypedDict):
    task_class: str
    model: str
    requests: int
    escalated: int


def escalation_stats(*, since: datetime) -> dict[tuple[str, str], EscalationStats]:
    """Requests and escalations per (task class, routed model) since ``since``: a class is
    judged on its current primary, not on traffic an earlier table sent elsewhere."""
    rows = (
        DecisionOutcome.objects.filter(decision_created_at__gte=since)
        .values("task_class", "routed_model")
        .annotate(
            requests=Count("decision_id"),
            escalated=Count("decision_id", filter=Q(escalated=True)),
        )
    )
    return {
        (r["task_class"], r["routed_model"]): {
            "task_class": r["task_class"],
            "model": r["routed_model"],
            "requests": r["requests"],
            "escalated": r["escalated"],
        }
        for r in rows
    }


def open_proposal_for(task_class: TaskClass) -> Proposal | None:
    return Proposal.objects.filter(task_class=task_class, status__in=OPEN_PROPOSAL_STATUSES).first()


# --- pages and API ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProposalRow:
    proposal: Proposal
    is_stale: bool


def active_version_number() -> int | None:
    return (
        RoutingTableVersion.objects.filter(status=VersionStatus.ACTIVE)
        .values_list("number", flat=True)
        .first()
    )


def proposal_is_stale(proposal: Proposal, active_number: int | None) -> bool:
    return proposal.is_open and proposal.based_on_version != active_number


def proposal_list(*, status: str | None = None, limit: int = 200) -> list[ProposalRow]:
    active = active_version_number()
    proposals = Proposal.objects.select_related(
        "task_class", "from_model", "to_model", "reviewed_by", "created_by"
    ).order_by("-created_at", "-pk")
    if status == "open":
        proposals = proposals.filter(status__in=OPEN_PROPOSAL_STATUSES)
    elif status:
        proposals = proposals.filter(status=status)
    return [ProposalRow(p, proposal_is_stale(p, active)) for p in proposals[:limit]]


def proposal_get(public_id: Any) -> Proposal:
    return Proposal.objects.select_related(
        "task_class",
        "from_model",
        "to_model",
        "reviewed_by",
        "created_by",
        "applied_by",
        "applied_version",
        "sweep_run",
    ).get(public_id=public_id)


def proposal_samples(proposal: Proposal, limit: int = 12) -> list[SweepSample]:
    ids = [int(i) for i in (proposal.evidence or {}).get("example_sample_ids", [])][:limit]
    if not ids:
        return []
    samples = {s.pk: s for s in SweepSample.objects.filter(pk__in=ids)}
    return [samples[i] for i in ids if i in samples]


def proposal_latencies(proposal: Proposal, limit: int = 2000) -> dict[str, list[float]]:
    """Per-sample latencies of the run that produced the proposal (for the evidence chart)."""
    if proposal.sweep_run_id is None:
        return {"candidate": [], "primary": []}
    rows = SweepSample.objects.filter(
        run_id=proposal.sweep_run_id, task_class=proposal.task_class.slug
    ).values_list("candidate_latency_ms", "primary_latency_ms")[:limit]
    return {
        "candidate": [c for c, _ in rows if c is not None],
        "primary": [p for _, p in rows if p is not None],
    }


def sweep_run_list(limit: int = 100) -> QuerySet[SweepRun]:
    return SweepRun.objects.select_related("task_class", "requested_by").order_by(
        "-created_at", "-pk"
    )[:limit]


EVALUATION_TASK_PREFIX = "evaluation."


def sweep_schedule_list() -> QuerySet[PeriodicTask]:
    return (
        PeriodicTask.objects.filter(task__startswith=EVALUATION_TASK_PREFIX)
        .select_related("crontab", "interval")
        .order_by("name")
    )


def proposal_waiting_count() -> int:
    """Proposals that wait for a Reviewer's decision (the landing page points to them)."""
    return Proposal.objects.filter(status=ProposalStatus.PROPOSED).count()


def graded_counts() -> dict[tuple[str, str], SuccessCount]:
    """Graded success counts keyed (model, task class) (see routing.confidence)."""
    return {
        (model, task_class): SuccessCount(successes=s, trials=n)
        for task_class, model, s, n in GradedCount.objects.values_list(
            "task_class", "model", "successes", "trials"
        )
    }


def learned_router_info(router: LearnedRouter) -> LearnedRouterInfo:
    """The engine's router from stored data (ValueError if malformed)."""
    return learned_router_from_data(
        task_class=router.task_class.slug,
        version=router.version,
        hashing=router.hashing,
        threshold=router.threshold,
        coefficients=router.coefficients,
    )


def learned_routers_active() -> dict[str, LearnedRouterInfo]:
    """Active learned routers by task class slug; malformed ones are logged and skipped."""
    out = {}
    for router in LearnedRouter.objects.filter(status=LearnedRouterStatus.ACTIVE).select_related(
        "task_class"
    ):
        try:
            out[router.task_class.slug] = learned_router_info(router)
        except (ValueError, KeyError, TypeError):
            logger.warning("learned router %s is malformed; skipped", router.pk, exc_info=True)
    return out


# routing.confidence.graded_success, in SQL over telemetry_outcome ``o`` (a test holds the
# two together). Graded: the first attempt was the routed model, and a quality score or a
# boolean validation verdict is present. Success: that attempt ended ok, the score (if any)
# is at least QUALITY_PASS (the %(pass)s parameter), and no verdict is false.
_VERDICTS = " OR ".join(f"jsonb_typeof(o.validation->'{k}') = 'boolean'" for k in VALIDATION_KEYS)
_INVALID = " OR ".join(
    f"coalesce(o.validation->'{k}' = 'false'::jsonb, false)" for k in VALIDATION_KEYS
)
GRADED_OUTCOME_SQL = (
    f"(o.attempts->0->>'model' = o.routed_model AND (o.quality_score IS NOT NULL OR {_VERDICTS}))"
)
ROUTED_SUCCESS_SQL = (
    "(o.attempts->0->>'status' = 'ok'"
    " AND (o.quality_score IS NULL OR o.quality_score >= %(pass)s)"
    f" AND NOT ({_INVALID}))"
)
CALIBRATION_BINS = 10

_CALIBRATION_SQL = f"""
SELECT o.task_class,
       least(floor(d.confidence * {CALIBRATION_BINS}), {CALIBRATION_BINS - 1})::int AS bin,
       count(*),
       sum(d.confidence),
       count(*) FILTER (WHERE {ROUTED_SUCCESS_SQL}),
       sum(power(d.confidence - CASE WHEN {ROUTED_SUCCESS_SQL} THEN 1 ELSE 0 END, 2))
FROM telemetry_outcome o
JOIN telemetry_decision d ON d.id = o.decision_id AND d.created_at = o.decision_created_at
WHERE o.decision_created_at >= %(since)s AND d.created_at >= %(since)s
  AND {GRADED_OUTCOME_SQL}
GROUP BY 1, 2
"""  # noqa: S608 (constant fragments)


@dataclass(frozen=True, slots=True)
class CalibrationRow:
    label: str  # a task class, or "all"
    n: int
    mean_confidence: float
    observed_rate: float
    brier: float
    brier_base: float  # the base-rate predictor: always say the observed rate
    ece: float
    bins: list[tuple[float, float, int]]  # (mean confidence, observed rate, count)


def _calibration_row(label: str, cells: list[tuple[int, int, float, int, float]]) -> CalibrationRow:
    n = sum(c[1] for c in cells)
    conf = sum(c[2] for c in cells)
    wins = sum(c[3] for c in cells)
    squared = sum(c[4] for c in cells)
    rate = wins / n
    bins: dict[int, list[float]] = {}
    for b, count, c_sum, w, _ in cells:
        acc = bins.setdefault(b, [0, 0.0, 0])
        acc[0] += count
        acc[1] += c_sum
        acc[2] += w
    points = [(acc[1] / acc[0], acc[2] / acc[0], int(acc[0])) for _, acc in sorted(bins.items())]
    ece = sum(count * abs(p - o) for p, o, count in points) / n
    return CalibrationRow(
        label=label,
        n=n,
        mean_confidence=conf / n,
        observed_rate=rate,
        brier=squared / n,
        brier_base=rate * (1 - rate),
        ece=ece,
        bins=points,
    )


def calibration_summary(*, days: int = 14, now: datetime | None = None) -> list[CalibrationRow]:
    """How well decisions' ``confidence`` predicted their graded outcomes over the last
    ``days``: overall first ("all"), then per task class. One aggregate query."""
    since = (now or timezone.now()) - timedelta(days=days)
    with connection.cursor() as cursor:
        cursor.execute(_CALIBRATION_SQL, {"since": since, "pass": QUALITY_PASS})
        rows = cursor.fetchall()
    by_class: dict[str, list[tuple[int, int, float, int, float]]] = {}
    for task_class, b, count, c_sum, wins, squared in rows:
        by_class.setdefault(task_class, []).append(
            (int(b), int(count), float(c_sum), int(wins), float(squared))
        )
    if not by_class:
        return []
    every = [cell for cells in by_class.values() for cell in cells]
    return [_calibration_row("all", every)] + [
        _calibration_row(slug, cells) for slug, cells in sorted(by_class.items())
    ]


def learned_router_list(limit: int = 50) -> list[LearnedRouter]:
    return list(LearnedRouter.objects.select_related("task_class").order_by("-created_at")[:limit])
