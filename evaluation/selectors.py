"""Reads for evaluation: model targets, graders, replay samples, volumes, proposals, runs."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict

from django.db import connection, models
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
from controlplane.selectors import route_spec
from evaluation.client import ModelTarget, model_timeout_s
from evaluation.graders import GraderSpec, grader_default_spec
from evaluation.models import (
    OPEN_PROPOSAL_STATUSES,
    GradedCount,
    GraderConfig,
    Handoff,
    HandoffStatus,
    LearnedRouter,
    LearnedRouterStatus,
    OutputCheck,
    Proposal,
    ProposalStatus,
    SweepRun,
    SweepSample,
    WebhookDelivery,
)
from evaluation.replay import PromptShape
from routing.confidence import (
    QUALITY_PASS,
    VALIDATION_KEYS,
    SuccessCount,
)
from routing.enums import RouteStrategy
from routing.learned import LearnedRouterInfo, learned_router_from_data
from routing.route_diff import RouteChange, routes_diff
from telemetry.models import DecisionOutcome, DecisionRecord
from telemetry.selectors import Attention

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


def models_by_slug(slugs: list[str]) -> list[ModelEndpoint]:
    """The models named, in the order named (unknown slugs left out)."""
    found = {m.slug: m for m in ModelEndpoint.objects.filter(slug__in=slugs)}
    return [found[slug] for slug in slugs if slug in found]


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
    diff: tuple[RouteChange, ...] = ()


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
    rows = list(proposals[:limit])
    diffs = proposal_route_diffs(rows)
    return [ProposalRow(p, proposal_is_stale(p, active), diffs.get(p.pk, ())) for p in rows]


def proposal_route_diffs(proposals: list[Proposal]) -> dict[int, tuple[RouteChange, ...]]:
    """Each proposal's change as a route diff: the route in the version it was based on,
    against that route with the proposed primary and fallbacks (one query for all)."""
    if not proposals:
        return {}
    wanted = Q()
    for p in proposals:
        wanted |= Q(version__number=p.based_on_version, task_class_id=p.task_class_id)
    routes = {
        (r.version.number, r.task_class_id): r
        for r in Route.objects.filter(wanted).select_related("version", "primary", "task_class")
    }
    out: dict[int, tuple[RouteChange, ...]] = {}
    for p in proposals:
        route = routes.get((p.based_on_version, p.task_class_id))
        if route is None:
            continue
        before = route_spec(route)
        after = replace(before, primary=p.to_model.slug, fallbacks=tuple(p.new_fallbacks))
        out[p.pk] = tuple(routes_diff({p.task_class.slug: before}, {p.task_class.slug: after}))
    return out


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


def graded_estimates(task_class: str) -> dict[str, float]:
    """The calibrated success estimate of every registry model on ``task_class`` (what a
    decision's confidence is without a learned prediction, routing.confidence)."""
    from controlplane.models import ModelEndpoint
    from routing.confidence import success_probabilities

    tiers = dict(ModelEndpoint.objects.values_list("slug", "tier"))
    estimates = success_probabilities(graded_counts(), tiers, [task_class])
    return {model: p for (model, _), p in estimates.items()}


def routing_strategy_summary(task_class: str, strategy: str | None) -> dict[str, Any]:
    """What decides a class beyond its rule, for the task class page: the active learned
    router (held-out metrics per model, its reliability curve and its cost–quality curve
    with the current threshold marked — Plotly figures from the stored metrics —,
    threshold and its target's last calibration), the semantic routes, the LLM router. At
    most three queries."""
    from routing.models import LlmRouter, SemanticRoute

    out: dict[str, Any] = {"strategy": strategy}
    if strategy == "learned":
        router = (
            LearnedRouter.objects.filter(
                task_class__slug=task_class, status=LearnedRouterStatus.ACTIVE
            )
            .select_related("task_class__threshold_target")
            .first()
        )
        out["learned"] = router
        if router is not None:
            out["learned_models"] = [
                {"slug": slug, **{k: m.get(k) for k in ("n", "brier", "brier_base", "auc")}}
                for slug, m in router.metrics.items()
                if slug in router.coefficients and isinstance(m, dict)
            ]
            out["threshold_target"] = getattr(router.task_class, "threshold_target", None)
            from evaluation import charts

            out["reliability_figure"] = charts.reliability_figure(
                [
                    (
                        f"{m['slug']} (held out)",
                        [
                            (float(p), float(o), int(n))
                            for p, o, n in router.metrics[m["slug"]].get("reliability") or []
                        ],
                    )
                    for m in out["learned_models"]
                ]
            )
            curve = router.metrics.get("curve") or []
            out["cost_quality_figure"] = charts.cost_quality_figure(curve, router.threshold)
    if strategy == "semantic":
        out["semantic_routes"] = list(
            SemanticRoute.objects.filter(task_class__slug=task_class, is_active=True)
            .select_related("model")
            .order_by("name")
        )
    out["llm_router"] = (
        LlmRouter.objects.filter(task_class__slug=task_class, enabled=True)
        .select_related("router_model")
        .first()
    )
    # An enabled LLM router decides only where the route's strategy is llm.
    out["llm_router_applies"] = strategy == RouteStrategy.LLM
    return out


def learned_router_info(router: LearnedRouter) -> LearnedRouterInfo:
    """The engine's router from stored data (ValueError if malformed)."""
    return learned_router_from_data(
        task_class=router.task_class.slug,
        version=router.version,
        hashing=router.hashing,
        threshold=router.threshold,
        coefficients=router.coefficients,
        rule=router.rule,
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


# --- the reviewers' desk ------------------------------------------------------------------


def duration_text(seconds: float) -> str:
    """12 s, 5 min, 3 h 20 min, 2 d 4 h."""
    s = int(abs(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


@dataclass(frozen=True, slots=True)
class QueueRow:
    handoff: Handoff
    age_s: float
    sla_left_s: float
    breached: bool
    claimed: bool

    @property
    def age_text(self) -> str:
        return duration_text(self.age_s)

    @property
    def sla_text(self) -> str:
        text = duration_text(self.sla_left_s)
        return f"{text} overdue" if self.breached else f"{text} left"


def handoff_queue(*, task_class: str = "", team: str = "", limit: int = 200) -> list[QueueRow]:
    """Pending handoffs, oldest first (one query)."""
    rows = Handoff.objects.filter(status=HandoffStatus.PENDING).select_related("claimed_by")
    if task_class:
        rows = rows.filter(task_class=task_class)
    if team:
        rows = rows.filter(team=team)
    now = timezone.now()
    return [
        QueueRow(
            handoff=h,
            age_s=(now - h.created_at).total_seconds(),
            sla_left_s=(h.due_at - now).total_seconds(),
            breached=h.due_at < now,
            claimed=h.claim_expires_at is not None and h.claim_expires_at > now,
        )
        for h in rows.order_by("created_at", "pk")[:limit]
    ]


def handoff_filter_choices() -> dict[str, list[str]]:
    pending = Handoff.objects.filter(status=HandoffStatus.PENDING).order_by()
    return {
        "task_classes": list(
            pending.values_list("task_class", flat=True).distinct().order_by("task_class")
        ),
        "teams": list(
            pending.exclude(team="").values_list("team", flat=True).distinct().order_by("team")
        ),
    }


def handoff_get(public_id: Any) -> Handoff | None:
    return (
        Handoff.objects.select_related("claimed_by", "reviewed_by")
        .filter(public_id=public_id)
        .first()
    )


def handoff_decision(handoff: Handoff) -> DecisionRecord | None:
    return DecisionRecord.objects.filter(
        id=handoff.decision_id, created_at=handoff.decision_created_at
    ).first()


def handoff_decision_path(handoff: Handoff) -> dict[str, Any] | None:
    """What the reviewer sees beside the draft: how the decision was made."""
    record = handoff_decision(handoff)
    if record is None:
        return None
    path = record.path or {}
    return {
        "record": record,
        "candidates": path.get("candidates", []),
        "fallbacks": path.get("fallbacks", []),
        "policy": path.get("policy", {}),
        "budgets": path.get("budgets", []),
    }


def handoffs_for_decision(decision_id: Any) -> list[Handoff]:
    return list(Handoff.objects.filter(decision_id=decision_id).select_related("reviewed_by"))


def handoff_states(decision_ids: list[Any]) -> dict[Any, str]:
    """decision id → its handoff's status, for a page of decisions (one query)."""
    if not decision_ids:
        return {}
    rows = Handoff.objects.filter(decision_id__in=decision_ids).values_list("decision_id", "status")
    return dict(rows)


def output_checks_for(decision_id: Any) -> list[OutputCheck]:
    return list(OutputCheck.objects.filter(decision_id=decision_id).order_by("created_at", "pk"))


def diff_lines(diff: str) -> list[tuple[str, str]]:
    """(css class, line) per line of a unified diff."""
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "same"
        out.append((kind, line))
    return out


def webhook_delivery_list(*, status: str = "", limit: int = 200) -> list[WebhookDelivery]:
    rows = WebhookDelivery.objects.select_related("endpoint__application", "handoff")
    if status:
        rows = rows.filter(status=status)
    return list(rows.order_by("-created_at", "-pk")[:limit])


def handoff_stats(*, days: int = 30) -> dict[str, Any]:
    """Queue depth, pending age p50/p95, SLA breaches, review rates per task class and
    output-check failure rates per rule (three queries)."""
    from django.db import connection

    since = timezone.now() - timedelta(days=days)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT count(*),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM now() - created_at)),
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM now() - created_at)),
                   count(*) FILTER (WHERE due_at < now()),
                   max(extract(epoch FROM now() - created_at))
            FROM {Handoff._meta.db_table} WHERE status = 'pending'
            """  # noqa: E501, S608
        )
        depth, p50, p95, breached, oldest = cursor.fetchone()
        cursor.execute(
            f"""
            SELECT rule, count(*) FROM {OutputCheck._meta.db_table}, unnest(rules) AS rule
            WHERE created_at >= %s GROUP BY rule
            UNION ALL
            SELECT '', count(*) FROM {OutputCheck._meta.db_table} WHERE created_at >= %s
            """,  # noqa: S608
            [since, since],
        )
        check_rows = cursor.fetchall()
    resolved = (
        Handoff.objects.filter(reviewed_at__gte=since)
        .exclude(status=HandoffStatus.PENDING)
        .values("task_class")
        .annotate(
            total=Count("pk"),
            approved=Count("pk", filter=Q(status=HandoffStatus.APPROVED)),
            edited=Count("pk", filter=Q(status=HandoffStatus.EDITED)),
            rejected=Count("pk", filter=Q(status=HandoffStatus.REJECTED)),
            late=Count("pk", filter=Q(reviewed_at__gt=models.F("due_at"))),
        )
        .order_by("task_class")
    )
    checks_total = next((n for rule, n in check_rows if rule == ""), 0)
    return {
        "depth": depth,
        "age_p50_s": float(p50) if p50 is not None else None,
        "age_p95_s": float(p95) if p95 is not None else None,
        "breached": breached,
        "age_max_s": float(oldest) if oldest is not None else None,
        "classes": [
            {
                **row,
                "approval_rate": row["approved"] / row["total"],
                "edit_rate": row["edited"] / row["total"],
                "rejection_rate": row["rejected"] / row["total"],
            }
            for row in resolved
        ],
        "checks_total": checks_total,
        "check_failures": sorted(
            (
                {"rule": rule, "failures": n, "rate": n / checks_total if checks_total else 0.0}
                for rule, n in check_rows
                if rule != ""
            ),
            key=lambda r: -r["failures"],
        ),
    }


# When the desk shows on the overview's "needs attention" list.
DESK_QUEUE_DEPTH_WARN = 20
CHECK_FAILURE_RATE_WARN = 0.10
CHECK_FAILURE_MIN_CHECKS = 20


def desk_numbers(*, days: int = 7) -> dict[str, Any]:
    """The desk's numbers the overview needs, in one query: queue depth, pending age p50/p95
    and oldest, SLA breaches, checks in ``days`` and failures per rule."""
    from django.db import connection

    since = timezone.now() - timedelta(days=days)
    handoff, check = Handoff._meta.db_table, OutputCheck._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH pending AS (
                SELECT count(*) AS depth,
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM now() - created_at)) AS p50,
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM now() - created_at)) AS p95,
                       count(*) FILTER (WHERE due_at < now()) AS breached,
                       max(extract(epoch FROM now() - created_at)) AS oldest
                FROM {handoff} WHERE status = 'pending'
            ), recent AS (
                SELECT rules FROM {check} WHERE created_at >= %s
            )
            SELECT pending.*,
                   (SELECT count(*) FROM recent),
                   (SELECT coalesce(json_object_agg(rule, n), '{{}}') FROM (
                       SELECT rule, count(*) AS n FROM recent, unnest(rules) AS rule GROUP BY rule
                   ) failures)
            FROM pending
            """,  # noqa: E501, S608
            [since],
        )
        depth, p50, p95, breached, oldest, checks, failures = cursor.fetchone()
    if isinstance(failures, str):
        failures = json.loads(failures)
    return {
        "depth": depth,
        "age_p50_s": float(p50) if p50 is not None else None,
        "age_p95_s": float(p95) if p95 is not None else None,
        "age_max_s": float(oldest) if oldest is not None else None,
        "breached": breached,
        "checks_total": checks,
        "check_failures": sorted(
            (
                {"rule": rule, "failures": n, "rate": n / checks if checks else 0.0}
                for rule, n in (failures or {}).items()
            ),
            key=lambda r: (-r["failures"], r["rule"]),
        ),
    }


def desk_attention(*, url: str, days: int = 7) -> list[Attention]:
    """Handoffs past their SLA, a long queue, or an output-check rule failing often."""
    stats = desk_numbers(days=days)
    items: list[Attention] = []
    if stats["breached"]:
        items.append(
            Attention(
                "bad",
                f"{stats['breached']} handoff{'s' if stats['breached'] > 1 else ''} past "
                f"{'their' if stats['breached'] > 1 else 'its'} SLA on the reviewers' desk "
                f"(oldest waiting: {duration_text(stats['age_max_s'] or 0)}).",
                url=url,
            )
        )
    elif stats["depth"] >= DESK_QUEUE_DEPTH_WARN:
        items.append(
            Attention(
                "warn",
                f"{stats['depth']} drafts wait for a reviewer "
                f"(age p50 {duration_text(stats['age_p50_s'] or 0)}, "
                f"p95 {duration_text(stats['age_p95_s'] or 0)}).",
                url=url,
            )
        )
    if stats["checks_total"] >= CHECK_FAILURE_MIN_CHECKS:
        for failure in stats["check_failures"]:
            if failure["rate"] >= CHECK_FAILURE_RATE_WARN:
                items.append(
                    Attention(
                        "warn",
                        f"Output check {failure['rule']} failed {failure['rate']:.0%} of "
                        f"{stats['checks_total']} outputs in {days} days.",
                        url=url,
                    )
                )
    return items
