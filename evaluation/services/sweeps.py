"""Sweeps: tier downgrade, shadow traffic and the escalation-rate monitor.

Every run is a :class:`SweepRun` row. Work is claimed with a conditional UPDATE
(``pending → running`` with a fresh claim token), so two workers — or a redelivered task —
never execute the same run twice; a scheduled slot is a unique ``key``, so it never creates
two runs. Samples are unique per (run, class, request) and proposals per (run, class), so a
resumed run continues where it stopped without duplicating anything. A worker that dies
stops sending heartbeats; ``sweep_reap_stale`` marks its run failed and
``sweep_run_resume`` puts it back in the queue.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from controlplane.models import Locality, ModelEndpoint, Route, RoutingTableVersion
from evaluation import selectors
from evaluation.graders import Grader, grader_build
from evaluation.models import (
    ProposalChange,
    ShadowConfig,
    SweepKind,
    SweepRun,
    SweepSample,
    SweepStatus,
)
from evaluation.replay import (
    PromptShape,
    ReplayItem,
    ReplayOutcome,
    condensable_tokens,
    replay_batch,
    replay_condensed,
)
from evaluation.services.proposals import proposal_create
from evaluation.stats import percentile, wilson_interval
from routing.condense import condense_saving_usd, condenser_pick, condenses
from routing.pricing import price_cost_usd
from routing.snapshot import registry_cache

logger = logging.getLogger(__name__)

MAX_RUN_ERRORS = 20
OUTPUT_CHARS = 4000


class SweepLost(Exception):
    """Another worker has taken the run over (our claim token no longer matches)."""


# --- creating, claiming, heartbeats, reaping ----------------------------------------------


def sweep_slot_key(kind: str, scope: str, when: datetime) -> str:
    """One scheduled run per kind, scope and hour: a duplicate or retried firing reuses it."""
    return f"{kind}:{scope}:{when:%Y-%m-%dT%H}"


def _enqueue(run_id: int, countdown: float | None = None) -> None:
    from evaluation import tasks

    transaction.on_commit(
        lambda: tasks.sweep_run_execute.apply_async((run_id,), countdown=countdown)
    )


def sweep_run_enqueue(*, run: SweepRun, countdown: float | None = None) -> None:
    """Queue a pending run for a worker (once the current transaction commits)."""
    _enqueue(run.pk, countdown)


def sweep_run_create(
    *,
    kind: str,
    key: str | None = None,
    task_class: Any = None,
    shadow_config: ShadowConfig | None = None,
    params: dict[str, Any] | None = None,
    user: Any = None,
    enqueue: bool = True,
) -> tuple[SweepRun, bool]:
    """Create a run (or return the one with the same key) and queue it once committed."""
    if kind not in SweepKind.values:
        raise ValidationError({"kind": f"Unknown sweep kind {kind!r}."})
    key = key or f"manual:{kind}:{uuid.uuid4()}"
    with transaction.atomic():
        run, created = SweepRun.objects.get_or_create(
            key=key,
            defaults={
                "kind": kind,
                "task_class": task_class,
                "shadow_config": shadow_config,
                "params": params or {},
                "requested_by": user if getattr(user, "pk", None) else None,
            },
        )
        if created and enqueue:
            _enqueue(run.pk)
    return run, created


def sweep_claim(run_id: int) -> uuid.UUID | None:
    """Take a pending run; None when another worker holds it or it is finished."""
    token = uuid.uuid4()
    now = timezone.now()
    claimed = SweepRun.objects.filter(pk=run_id, status=SweepStatus.PENDING).update(
        status=SweepStatus.RUNNING,
        claim_token=token,
        claims=F("claims") + 1,
        heartbeat_at=now,
        started_at=Coalesce(F("started_at"), Value(now)),
        finished_at=None,
        error_message="",
    )
    return token if claimed == 1 else None


def sweep_heartbeat(run_id: int, token: uuid.UUID, **changes: Any) -> None:
    updated = SweepRun.objects.filter(
        pk=run_id, claim_token=token, status=SweepStatus.RUNNING
    ).update(heartbeat_at=timezone.now(), **changes)
    if updated != 1:
        raise SweepLost(f"run {run_id} is no longer ours")


def sweep_reap_stale(*, now: datetime | None = None, stale_seconds: int | None = None) -> int:
    """Mark running runs whose worker stopped sending heartbeats as failed."""
    now = now or timezone.now()
    seconds = settings.SWITCHYARD_SWEEP_STALE_SECONDS if stale_seconds is None else stale_seconds
    return SweepRun.objects.filter(
        status=SweepStatus.RUNNING, heartbeat_at__lt=now - timedelta(seconds=seconds)
    ).update(
        status=SweepStatus.FAILED,
        claim_token=None,
        finished_at=now,
        error_message="stale heartbeat: the worker stopped; resume to continue",
    )


def sweep_run_resume(
    *, run: SweepRun, user: Any = None, countdown: float | None = None
) -> SweepRun:
    """Queue a failed run again; finished samples and proposals are kept."""
    with transaction.atomic():
        updated = SweepRun.objects.filter(pk=run.pk, status=SweepStatus.FAILED).update(
            status=SweepStatus.PENDING, error_message="", claim_token=None
        )
        if updated != 1:
            raise ValidationError({"status": "Only a failed run can be resumed."})
        _enqueue(run.pk, countdown)
    run.refresh_from_db()
    return run


def sweep_run_execute(*, run_id: int) -> SweepRun | None:
    """Claim and execute one run; returns None when the run was not ours to execute."""
    token = sweep_claim(run_id)
    if token is None:
        logger.info("sweep %s: not claimable (taken or finished)", run_id)
        return None
    run = SweepRun.objects.select_related("task_class", "shadow_config").get(pk=run_id)
    try:
        summary = EXECUTORS[run.kind](run, token)
    except SweepLost:
        logger.warning("sweep %s: lost its claim to another worker", run_id)
        return None
    except Exception as exc:
        logger.exception("sweep %s failed", run_id)
        SweepRun.objects.filter(pk=run_id, claim_token=token).update(
            status=SweepStatus.FAILED,
            finished_at=timezone.now(),
            claim_token=None,
            error_message=f"{exc.__class__.__name__}: {exc}"[:2000],
        )
        run.refresh_from_db()
        return run
    SweepRun.objects.filter(pk=run_id, claim_token=token).update(
        status=SweepStatus.COMPLETED,
        finished_at=timezone.now(),
        heartbeat_at=timezone.now(),
        claim_token=None,
        summary=summary,
    )
    run.refresh_from_db()
    return run


def sweep_samples_purge(*, now: datetime | None = None) -> int:
    """Blank stored prompts and outputs whose retention has ended."""
    now = now or timezone.now()
    return (
        SweepSample.objects.filter(expires_at__lte=now)
        .filter(
            Q(prompt__isnull=False)
            | Q(candidate_output__isnull=False)
            | Q(primary_output__isnull=False)
            | Q(reference__isnull=False)
        )
        .update(prompt=None, reference=None, candidate_output=None, primary_output=None)
    )


# --- replaying one class ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClassReplay:
    route: Route
    candidate: ModelEndpoint
    primary: ModelEndpoint | None
    candidate_shape: PromptShape
    primary_shape: PromptShape
    grader: Grader
    requests: list[dict[str, Any]]
    # A condensing sweep: the local model that condenses and the class's threshold (the
    # candidate and the primary are then the same frontier model).
    condenser: ModelEndpoint | None = None
    condense_above: int = 0


def _chunks(items: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _expiry(plan: ClassReplay, row: dict[str, Any]) -> Any:
    """The decision's prompt expiry, shortened if the class's retention was cut since."""
    days = plan.route.task_class.prompt_retention_days
    return min(row["prompt_expires_at"], row["created_at"] + timedelta(days=days))


def _sample_row(
    run: SweepRun, plan: ClassReplay, row: dict[str, Any], out: ReplayOutcome
) -> SweepSample:
    cand, prim = out.candidate, out.primary
    return SweepSample(
        run=run,
        task_class=plan.route.task_class.slug,
        decision_id=row["id"],
        decision_created_at=row["created_at"],
        prompt=row["prompt"],
        reference=out.reference[:OUTPUT_CHARS] if out.reference is not None else None,
        reference_source=out.reference_source,
        expires_at=_expiry(plan, row),
        candidate_model=plan.candidate.slug,
        candidate_status=cand.status,
        candidate_success=out.candidate_grade.passed,
        candidate_score=out.candidate_grade.score,
        candidate_output=cand.content[:OUTPUT_CHARS],
        candidate_latency_ms=round(cand.latency_ms, 2),
        candidate_input_tokens=cand.input_tokens,
        candidate_output_tokens=cand.output_tokens,
        primary_model=plan.primary.slug if plan.primary else "",
        primary_status=prim.status if prim else "",
        primary_success=out.primary_grade.passed if out.primary_grade else None,
        primary_output=prim.content[:OUTPUT_CHARS] if prim else None,
        primary_latency_ms=round(prim.latency_ms, 2) if prim else None,
        primary_input_tokens=prim.input_tokens if prim else 0,
        primary_output_tokens=prim.output_tokens if prim else 0,
        condensed=dict(out.condensed or {}),
        detail=out.candidate_grade.detail[:300],
    )


def _replay_class(
    run: SweepRun, token: uuid.UUID, plan: ClassReplay, pool: ThreadPoolExecutor
) -> None:
    """Replay the class's requests that this run has not stored yet, batch by batch."""
    slug = plan.route.task_class.slug
    done = set(
        SweepSample.objects.filter(
            run=run, task_class=slug, candidate_model=plan.candidate.slug
        ).values_list("decision_id", flat=True)
    )
    todo = [r for r in plan.requests if r["id"] not in done]
    candidate = selectors.model_target(plan.candidate)
    primary = selectors.model_target(plan.primary) if plan.primary else None
    batch_size = max(64, int(settings.SWITCHYARD_SWEEP_CONCURRENCY) * 4)
    for chunk in _chunks(todo, batch_size):
        items = [
            ReplayItem(r["id"], r["prompt"], selectors.reference_of(r["metadata"])) for r in chunk
        ]
        if plan.condenser is not None:
            condensed = partial(
                replay_condensed,
                model=candidate,
                local=selectors.model_target(plan.condenser),
                shape=plan.candidate_shape,
                grader=plan.grader,
                threshold=plan.condense_above,
            )
            outcomes = list(pool.map(condensed, items))
        else:
            outcomes = replay_batch(
                items,
                candidate=candidate,
                primary=primary,
                grader=plan.grader,
                candidate_shape=plan.candidate_shape,
                primary_shape=plan.primary_shape,
                pool=pool,
            )
        rows = []
        errors: list[str] = []
        for row, out in zip(chunk, outcomes, strict=True):
            rows.append(_sample_row(run, plan, row, out))
            if out.candidate.status in {"error", "timeout"}:
                errors.append(f"{slug} {plan.candidate.slug}: {out.candidate.error}")
        created = SweepSample.objects.bulk_create(rows, ignore_conflicts=True)
        failed = sum(1 for out in outcomes if out.candidate.status in {"error", "timeout"})
        changes: dict[str, Any] = {
            "samples_done": F("samples_done") + len(created),
            "samples_failed": F("samples_failed") + failed,
        }
        if errors:
            kept = (list(run.errors) + errors)[-MAX_RUN_ERRORS:]
            run.errors = kept
            changes["errors"] = kept
        sweep_heartbeat(run.pk, token, **changes)


def _class_evidence(
    run: SweepRun, plan: ClassReplay, *, based_on: int, min_samples: int
) -> dict[str, Any]:
    """Success rate with its 95 % Wilson interval, deltas to the primary, cost, examples."""
    task_class = plan.route.task_class
    samples = list(
        SweepSample.objects.filter(
            run=run, task_class=task_class.slug, candidate_model=plan.candidate.slug
        ).values(
            "pk",
            "candidate_success",
            "candidate_status",
            "primary_success",
            "candidate_latency_ms",
            "primary_latency_ms",
            "reference_source",
        )
    )
    graded = [s for s in samples if s["candidate_success"] is not None]
    successes = sum(1 for s in graded if s["candidate_success"])
    n = len(graded)
    low, high = wilson_interval(successes, n)
    rate = successes / n if n else 0.0
    both = [s for s in graded if s["primary_success"] is not None]
    primary_rate = sum(1 for s in both if s["primary_success"]) / len(both) if both else None
    candidate_on_both = sum(1 for s in both if s["candidate_success"]) / len(both) if both else None
    cand_lat = [s["candidate_latency_ms"] for s in samples if s["candidate_latency_ms"] is not None]
    prim_lat = [s["primary_latency_ms"] for s in samples if s["primary_latency_ms"] is not None]
    cand_p50, prim_p50 = percentile(cand_lat, 0.5), percentile(prim_lat, 0.5)
    cand_p95, prim_p95 = percentile(cand_lat, 0.95), percentile(prim_lat, 0.95)
    from_model = plan.primary or plan.route.primary
    volume = selectors.class_volume(task_class=task_class.slug, model=from_model.slug)
    cost = selectors.monthly_cost_delta(
        volume=volume, from_model=from_model, to_model=plan.candidate
    )
    sources = sorted({s["reference_source"] for s in graded})
    passes = [s["pk"] for s in graded if s["candidate_success"]][:3]
    # The telling failures are those the current primary got right.
    fails = sorted(
        (s for s in graded if not s["candidate_success"]),
        key=lambda s: s["primary_success"] is not True,
    )
    fails_ids = [s["pk"] for s in fails][:3]
    target = float(task_class.quality_target)
    return {
        "kind": run.kind,
        "task_class": task_class.slug,
        "from_model": from_model.slug,
        "from_tier": from_model.tier,
        "to_model": plan.candidate.slug,
        "to_tier": plan.candidate.tier,
        "based_on_version": based_on,
        "sample_size": n,
        "samples_total": len(samples),
        "ungraded": len(samples) - n,
        "call_failures": sum(1 for s in samples if s["candidate_status"] in {"error", "timeout"}),
        "successes": successes,
        "success_rate": round(rate, 4),
        "interval_low": round(low, 4),
        "interval_high": round(high, 4),
        "confidence": 0.95,
        "quality_target": target,
        "min_samples": min_samples,
        "meets_target": n >= min_samples and low >= target,
        "graded_against": sources,
        "primary_success_rate": round(primary_rate, 4) if primary_rate is not None else None,
        "quality_delta": (
            round(candidate_on_both - primary_rate, 4)
            if primary_rate is not None and candidate_on_both is not None
            else None
        ),
        "latency_p50_ms": {"candidate": cand_p50, "primary": prim_p50},
        "latency_p95_ms": {"candidate": cand_p95, "primary": prim_p95},
        "latency_delta_ms": (
            round(cand_p50 - prim_p50, 1) if cand_p50 is not None and prim_p50 is not None else None
        ),
        "volume_30d": volume,
        **cost,
        "example_sample_ids": passes + fails_ids,
        "sweep_run": run.pk,
    }


def _grader_for(route: Route) -> Grader:
    return grader_build(selectors.grader_spec_for(route.task_class))


def _active() -> RoutingTableVersion:
    version = selectors.routing_version_active()
    if version is None:
        raise ValidationError({"routing": "There is no active routing table."})
    return version


def _requests_for(
    run: SweepRun, route: Route, models: list[ModelEndpoint], limit: int, window_days: float
) -> tuple[list[dict[str, Any]], int]:
    """Recent requests to replay; personal data only when every model involved — candidate,
    primary and the grader's judge — is local."""
    now = run.created_at  # fixed at creation: a resumed run replays the same requests
    since = now - timedelta(days=window_days)
    judge = selectors.grader_spec_for(route.task_class).judge
    allow_personal = all(m.locality == Locality.LOCAL for m in models) and (
        judge is None or judge.locality == Locality.LOCAL
    )
    requests = selectors.replay_requests(
        task_class=route.task_class.slug,
        since=since,
        limit=limit,
        allow_personal=allow_personal,
        now=now,
    )
    skipped = 0
    if not allow_personal:
        skipped = selectors.replay_personal_count(
            task_class=route.task_class.slug, since=since, now=now
        )
    return requests, skipped


def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=max(1, int(settings.SWITCHYARD_SWEEP_CONCURRENCY)),
        thread_name_prefix="sweep",
    )


# --- tier downgrade -----------------------------------------------------------------------


def _tier_downgrade(run: SweepRun, token: uuid.UUID) -> dict[str, Any]:
    """For each class routed above tier 1: replay N recent requests one tier down.

    1. Take the active models one tier below the primary that the class's data policy and
       output cap allow, cheapest first (at most ``max_candidates`` of them).
    2. Replay the N most recent requests with stored prompts (personal data only when every
       model involved is local) on each candidate and on the current primary; grade both.
    3. Propose the cheapest candidate whose 95 % Wilson lower bound of the success rate
       reaches the class's quality target; stop evaluating once one qualifies.

    ``params["classes"]`` (optional) limits the run to those classes, replayed in that order.
    """
    version = _active()
    params = run.params or {}
    sample_size = int(params.get("sample_size") or settings.SWITCHYARD_SWEEP_SAMPLE_SIZE)
    window_days = float(params.get("window_days") or settings.SWITCHYARD_SWEEP_WINDOW_DAYS)
    min_samples = int(params.get("min_samples", 30))
    max_candidates = int(params.get("max_candidates", 2))
    routes = selectors.active_routes(version)
    if run.task_class_id:
        routes = [r for r in routes if r.task_class_id == run.task_class_id]
    if params.get("classes"):  # these classes only, in this order
        order = {slug: i for i, slug in enumerate(params["classes"])}
        routes = sorted(
            (r for r in routes if r.task_class.slug in order),
            key=lambda r: order[r.task_class.slug],
        )
    plans: list[list[ClassReplay]] = []
    summary: dict[str, Any] = {"based_on_version": version.number, "classes": {}}
    skipped_total = 0
    planned = 0
    for route in routes:
        slug = route.task_class.slug
        if route.primary.tier <= 1:
            continue
        candidates = selectors.model_candidates_for_tier(route, route.primary.tier - 1)
        if not candidates:
            summary["classes"][slug] = {"outcome": "no allowed model one tier down"}
            continue
        shape = selectors.prompt_shape_for(route.task_class, route)
        grader = _grader_for(route)
        class_plans = []
        for candidate in candidates[:max_candidates]:
            requests, skipped = _requests_for(
                run, route, [candidate, route.primary], sample_size, window_days
            )
            if not requests:
                continue
            skipped_total = max(skipped_total, skipped)
            planned += len(requests)
            class_plans.append(
                ClassReplay(route, candidate, route.primary, shape, shape, grader, requests)
            )
        if not class_plans:
            summary["classes"][slug] = {"outcome": "no recent requests with stored prompts"}
            continue
        plans.append(class_plans)
    sweep_heartbeat(run.pk, token, samples_planned=planned, samples_skipped=skipped_total)
    with _pool() as pool:
        for class_plans in plans:
            results: list[dict[str, Any]] = []
            for plan in class_plans:
                _replay_class(run, token, plan, pool)
                result = _propose_from(
                    run, plan, version, min_samples, ProposalChange.DOWNGRADE, tried=results
                )
                results.append(result)
                if result.get("meets_target"):
                    break
            best = next((r for r in results if r.get("meets_target")), results[-1])
            summary["classes"][class_plans[0].route.task_class.slug] = {
                **best,
                "candidates": results,
            }
    return summary


def _propose_from(
    run: SweepRun,
    plan: ClassReplay,
    version: RoutingTableVersion,
    min_samples: int,
    change: str,
    tried: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    evidence = _class_evidence(run, plan, based_on=version.number, min_samples=min_samples)
    evidence["candidates_tried"] = [
        {k: t.get(k) for k in ("candidate", "sample_size", "success_rate", "interval", "outcome")}
        for t in tried or []
    ]
    outcome: dict[str, Any] = {
        "candidate": plan.candidate.slug,
        "sample_size": evidence["sample_size"],
        "success_rate": evidence["success_rate"],
        "interval": [evidence["interval_low"], evidence["interval_high"]],
        "quality_target": evidence["quality_target"],
        "meets_target": evidence["meets_target"],
        "outcome": "below target",
    }
    if not evidence["meets_target"]:
        if evidence["sample_size"] < min_samples:
            outcome["outcome"] = f"too few graded samples (<{min_samples})"
        return outcome
    route = plan.route
    proposal = proposal_create(
        task_class=route.task_class,
        route=route,
        to_model=plan.candidate,
        change=change,
        based_on_version=version.number,
        title=(
            f"{route.task_class.slug}: {route.primary.slug} (tier {route.primary.tier}) → "
            f"{plan.candidate.slug} (tier {plan.candidate.tier})"
        ),
        evidence=evidence,
        sweep_run=run,
    )
    outcome["outcome"] = "proposed" if proposal else "meets target; an open proposal exists"
    outcome["proposal"] = str(proposal.public_id) if proposal else None
    return outcome


# --- shadow traffic -----------------------------------------------------------------------


def _sampled(rows: list[dict[str, Any]], rate: float, limit: int) -> list[dict[str, Any]]:
    """A stable sample: a request is in when its id hashes below the rate."""
    threshold = int(rate * 10_000)
    return [r for r in rows if uuid.UUID(str(r["id"])).int % 10_000 < threshold][:limit]


def _shadow(run: SweepRun, token: uuid.UUID) -> dict[str, Any]:
    """Re-run a sampled share of a class's recent requests on a candidate model/template."""
    config = run.shadow_config
    if config is None:
        raise ValidationError({"shadow_config": "A shadow run needs its configuration."})
    version = _active()
    route = next(
        (r for r in selectors.active_routes(version) if r.task_class_id == config.task_class_id),
        None,
    )
    if route is None:
        return {"outcome": "the class has no route in the active table"}
    candidate = config.candidate_model or route.primary
    shape = selectors.prompt_shape_for(route.task_class, route)
    candidate_shape = shape
    if config.candidate_template is not None:
        template = config.candidate_template
        candidate_shape = PromptShape(
            system_prompt=template.system_prompt,
            user_template=template.user_template,
            max_tokens=shape.max_tokens,
            response_format=shape.response_format,
        )
    rate = float(config.sample_rate)
    pool_size = min(20_000, int(config.max_samples / max(rate, 0.0001)))
    requests, skipped = _requests_for(
        run, route, [candidate, route.primary], pool_size, config.window_hours / 24
    )
    requests = _sampled(requests, rate, config.max_samples)
    plan = ClassReplay(
        route, candidate, route.primary, candidate_shape, shape, _grader_for(route), requests
    )
    sweep_heartbeat(run.pk, token, samples_planned=len(requests), samples_skipped=skipped)
    with _pool() as pool:
        _replay_class(run, token, plan, pool)
    min_samples = int((run.params or {}).get("min_samples", 30))
    if config.candidate_model is None or candidate.pk == route.primary_id:
        evidence = _class_evidence(run, plan, based_on=version.number, min_samples=min_samples)
        return {
            "candidate": str(config),
            "sample_size": evidence["sample_size"],
            "success_rate": evidence["success_rate"],
            "interval": [evidence["interval_low"], evidence["interval_high"]],
            "quality_delta": evidence["quality_delta"],
            "outcome": "measured (template candidates are not routed)",
        }
    change = ProposalChange.SWITCH
    if candidate.tier < route.primary.tier:
        change = ProposalChange.DOWNGRADE
    elif candidate.tier > route.primary.tier:
        change = ProposalChange.UPGRADE
    return _propose_from(run, plan, version, min_samples, change)


# --- condensed against full context -------------------------------------------------------


def _condense(run: SweepRun, token: uuid.UUID) -> dict[str, Any]:
    """For each class that condenses long contexts (``condense_above_tokens`` > 0): replay
    its recent requests whose context the gateway would condense on the frontier model the
    class is routed to — once condensed by the local condensing model (``routing.condense``,
    as the gateway does it), once in full — grade both with the class's grader and compare
    quality, input tokens and cost. Measures only: the evidence is in the summary."""
    version = _active()
    params = run.params or {}
    sample_size = int(params.get("sample_size") or settings.SWITCHYARD_SWEEP_SAMPLE_SIZE)
    window_days = float(params.get("window_days") or settings.SWITCHYARD_SWEEP_WINDOW_DAYS)
    min_samples = int(params.get("min_samples", 30))
    routes = [r for r in selectors.active_routes(version) if r.task_class.condense_above_tokens]
    if run.task_class_id:
        routes = [r for r in routes if r.task_class_id == run.task_class_id]
    summary: dict[str, Any] = {"based_on_version": version.number, "classes": {}}
    if run.task_class_id and not routes:
        slug = run.task_class.slug if run.task_class else "?"
        summary["classes"][slug] = {"outcome": "the class does not condense (or has no route)"}
    local_info = condenser_pick(registry_cache.snapshot().models.values())
    local = (
        ModelEndpoint.objects.filter(slug=local_info.slug).first()
        if local_info is not None
        else None
    )
    plans: list[ClassReplay] = []
    planned = skipped_total = 0
    for route in routes:
        task_class = route.task_class
        threshold = task_class.condense_above_tokens
        chain = [route.primary, *selectors.models_by_slug(route.fallbacks)]
        frontier = next((m for m in chain if condenses(threshold, m.locality, m.tier)), None)
        if frontier is None:
            summary["classes"][task_class.slug] = {"outcome": "no frontier model on the route"}
            continue
        if local is None:
            summary["classes"][task_class.slug] = {"outcome": "no local model to condense"}
            continue
        shape = selectors.prompt_shape_for(task_class, route)
        requests, skipped = _requests_for(
            run, route, [frontier, local], min(20_000, sample_size * 20), window_days
        )
        requests = [r for r in requests if condensable_tokens(r["prompt"], shape, threshold)]
        requests = requests[:sample_size]
        if not requests:
            summary["classes"][task_class.slug] = {
                "outcome": "no recent requests with a context long enough to condense"
            }
            continue
        skipped_total = max(skipped_total, skipped)
        planned += len(requests)
        plans.append(
            ClassReplay(
                route,
                frontier,
                frontier,
                shape,
                shape,
                _grader_for(route),
                requests,
                local,
                threshold,
            )
        )
    sweep_heartbeat(run.pk, token, samples_planned=planned, samples_skipped=skipped_total)
    with _pool() as pool:
        for plan in plans:
            _replay_class(run, token, plan, pool)
            evidence = _condense_evidence(
                run, plan, based_on=version.number, min_samples=min_samples
            )
            summary["classes"][plan.route.task_class.slug] = {
                "outcome": "measured",
                "candidate": f"{plan.candidate.slug} condensed by {plan.condenser}",
                "sample_size": evidence["sample_size"],
                "success_rate": evidence["success_rate"],
                "interval": [evidence["interval_low"], evidence["interval_high"]],
                "quality_target": evidence["quality_target"],
                "condense": evidence,
            }
    return summary


def _condense_evidence(
    run: SweepRun, plan: ClassReplay, *, based_on: int, min_samples: int
) -> dict[str, Any]:
    """Quality condensed against full context (success rates, the condensed rate's 95 %
    Wilson interval, the difference on the requests graded both ways), the frontier
    model's input tokens with and without condensing, and what it cost: the frontier calls
    plus the condensing calls against the frontier calls with the full context."""
    task_class = plan.route.task_class
    samples = list(
        SweepSample.objects.filter(
            run=run, task_class=task_class.slug, candidate_model=plan.candidate.slug
        ).values(
            "pk",
            "candidate_status",
            "candidate_success",
            "candidate_input_tokens",
            "candidate_output_tokens",
            "primary_status",
            "primary_success",
            "primary_input_tokens",
            "primary_output_tokens",
            "reference_source",
            "condensed",
        )
    )
    graded = [s for s in samples if s["candidate_success"] is not None]
    n = len(graded)
    successes = sum(1 for s in graded if s["candidate_success"])
    low, high = wilson_interval(successes, n)
    both = [s for s in graded if s["primary_success"] is not None]
    full_rate = sum(1 for s in both if s["primary_success"]) / len(both) if both else None
    cond_on_both = sum(1 for s in both if s["candidate_success"]) / len(both) if both else None
    answered = [s for s in samples if s["candidate_status"] == "ok" and s["primary_status"] == "ok"]
    condensed = [s for s in samples if "input_tokens_after" in (s["condensed"] or {})]
    at = run.created_at
    frontier_price = plan.candidate.price_at(at)
    local_price = plan.condenser.price_at(at) if plan.condenser else None
    tokens_full = sum(s["primary_input_tokens"] for s in answered)
    tokens_condensed = sum(s["candidate_input_tokens"] for s in answered)
    cost_full = cost_condensed = condensing = input_saved = Decimal(0)
    for s in answered:
        record = s["condensed"] or {}
        spent, saved = condense_saving_usd(
            frontier_price,
            local_price,
            s["primary_input_tokens"],
            s["candidate_input_tokens"],
            int(record.get("condense_input_tokens", 0)),
            int(record.get("condense_output_tokens", 0)),
        )
        condensing += spent
        input_saved += saved
        cost_full += price_cost_usd(
            frontier_price, s["primary_input_tokens"], s["primary_output_tokens"]
        )
        cost_condensed += spent + price_cost_usd(
            frontier_price, s["candidate_input_tokens"], s["candidate_output_tokens"]
        )
    saved_total = cost_full - cost_condensed
    target = float(task_class.quality_target)
    fails = sorted(
        (s for s in graded if not s["candidate_success"]),
        key=lambda s: s["primary_success"] is not True,
    )
    passes = [s["pk"] for s in graded if s["candidate_success"]][:3]
    return {
        "kind": run.kind,
        "task_class": task_class.slug,
        "from_model": plan.candidate.slug,
        "to_model": plan.candidate.slug,
        "condenser": plan.condenser.slug if plan.condenser else None,
        "condense_above_tokens": plan.condense_above,
        "based_on_version": based_on,
        "sample_size": n,
        "samples_total": len(samples),
        "call_failures": sum(
            1
            for s in samples
            if s["candidate_status"] in {"error", "timeout"}
            or s["primary_status"] in {"error", "timeout"}
        ),
        "condensed": len(condensed),
        "condense_failures": len(samples) - len(condensed),
        "successes": successes,
        "success_rate": round(successes / n, 4) if n else 0.0,
        "interval_low": round(low, 4),
        "interval_high": round(high, 4),
        "confidence": 0.95,
        "quality_target": target,
        "min_samples": min_samples,
        "meets_target": n >= min_samples and low >= target,
        "graded_against": sorted({s["reference_source"] for s in graded}),
        "full_success_rate": round(full_rate, 4) if full_rate is not None else None,
        "quality_delta": (
            round(cond_on_both - full_rate, 4)
            if full_rate is not None and cond_on_both is not None
            else None
        ),
        "compared": len(answered),
        "input_tokens_full": tokens_full,
        "input_tokens_condensed": tokens_condensed,
        "input_tokens_saved_share": (
            round(1 - tokens_condensed / tokens_full, 4) if tokens_full else None
        ),
        "cost_full_usd": f"{cost_full:.6f}",
        "cost_condensed_usd": f"{cost_condensed:.6f}",
        "condensing_cost_usd": f"{condensing:.6f}",
        "input_saved_usd": f"{input_saved:.6f}",
        "saved_usd": f"{saved_total:.6f}",
        "saved_per_request_usd": (f"{saved_total / len(answered):.8f}" if answered else None),
        "example_sample_ids": passes + [s["pk"] for s in fails][:3],
        "sweep_run": run.pk,
    }


# --- escalation-rate monitor --------------------------------------------------------------


def _escalation_monitor(run: SweepRun, token: uuid.UUID) -> dict[str, Any]:
    """Per class over the window: escalate up above the upgrade rate, trial a downgrade below
    the downgrade rate (with enough requests to trust a low rate)."""
    version = _active()
    params = run.params or {}
    window_days = float(params.get("window_days") or settings.SWITCHYARD_ESCALATION_WINDOW_DAYS)
    upgrade_rate = float(params.get("upgrade_rate") or settings.SWITCHYARD_ESCALATION_UPGRADE_RATE)
    downgrade_rate = float(
        params.get("downgrade_rate") or settings.SWITCHYARD_ESCALATION_DOWNGRADE_RATE
    )
    min_requests = int(params.get("min_requests") or settings.SWITCHYARD_ESCALATION_MIN_REQUESTS)
    min_upgrade_requests = int(params.get("min_upgrade_requests", 30))
    since = run.created_at - timedelta(days=window_days)
    stats = selectors.escalation_stats(since=since)
    summary: dict[str, Any] = {
        "based_on_version": version.number,
        "window_days": window_days,
        "classes": {},
    }
    routes = selectors.active_routes(version)
    if run.task_class_id:
        routes = [r for r in routes if r.task_class_id == run.task_class_id]
    for route in routes:
        slug = route.task_class.slug
        entry = stats.get((slug, route.primary.slug))
        if entry is None or entry["requests"] == 0:
            continue
        n, escalated = entry["requests"], entry["escalated"]
        rate = escalated / n
        low, high = wilson_interval(escalated, n)
        result: dict[str, Any] = {
            "model": route.primary.slug,
            "requests": n,
            "escalated": escalated,
            "rate": round(rate, 4),
        }
        if rate > upgrade_rate and n >= min_upgrade_requests and route.primary.tier < 3:
            result.update(
                _propose_upgrade(run, route, version, n, escalated, (low, high), upgrade_rate)
            )
        elif rate < downgrade_rate and n >= min_requests and route.primary.tier > 1:
            trial, created = sweep_run_create(
                kind=SweepKind.TIER_DOWNGRADE,
                key=sweep_slot_key(
                    "trial", slug, run.created_at.replace(hour=0, minute=0, second=0)
                ),
                task_class=route.task_class,
                params={"reason": f"escalation rate {rate:.1%} over {n} requests"},
            )
            result["outcome"] = "downgrade trial scheduled" if created else "trial already ran"
            result["trial_run"] = trial.pk
        else:
            result["outcome"] = "within bounds"
        summary["classes"][slug] = result
    sweep_heartbeat(run.pk, token)
    return summary


def _propose_upgrade(
    run: SweepRun,
    route: Route,
    version: RoutingTableVersion,
    n: int,
    escalated: int,
    interval: tuple[float, float],
    threshold: float,
) -> dict[str, Any]:
    candidates = selectors.model_candidates_for_tier(route, route.primary.tier + 1)
    if not candidates:
        return {"outcome": "above threshold; no allowed model one tier up"}
    target = candidates[0]
    volume = selectors.class_volume(task_class=route.task_class.slug, model=route.primary.slug)
    cost = selectors.monthly_cost_delta(volume=volume, from_model=route.primary, to_model=target)
    evidence = {
        "kind": run.kind,
        "task_class": route.task_class.slug,
        "from_model": route.primary.slug,
        "from_tier": route.primary.tier,
        "to_model": target.slug,
        "to_tier": target.tier,
        "based_on_version": version.number,
        "sample_size": n,
        "escalated": escalated,
        "escalation_rate": round(escalated / n, 4),
        "interval_low": round(interval[0], 4),
        "interval_high": round(interval[1], 4),
        "confidence": 0.95,
        "threshold": threshold,
        "window_days": (run.params or {}).get("window_days")
        or settings.SWITCHYARD_ESCALATION_WINDOW_DAYS,
        "volume_30d": volume,
        **cost,
        "example_sample_ids": [],
        "sweep_run": run.pk,
    }
    proposal = proposal_create(
        task_class=route.task_class,
        route=route,
        to_model=target,
        change=ProposalChange.UPGRADE,
        based_on_version=version.number,
        title=(
            f"{route.task_class.slug}: escalates {escalated / n:.0%} — move up to "
            f"{target.slug} (tier {target.tier})"
        ),
        evidence=evidence,
        sweep_run=run,
    )
    return {
        "outcome": "upgrade proposed" if proposal else "above threshold; an open proposal exists",
        "proposal": str(proposal.public_id) if proposal else None,
    }


EXECUTORS: dict[str, Callable[[SweepRun, uuid.UUID], dict[str, Any]]] = {
    SweepKind.TIER_DOWNGRADE: _tier_downgrade,
    SweepKind.SHADOW: _shadow,
    SweepKind.ESCALATION_MONITOR: _escalation_monitor,
    SweepKind.CONDENSE: _condense,
}


# --- what the schedules fire ----------------------------------------------------------------


def sweep_schedule_fire(
    *, kind: str, task_class: Any = None, params: dict[str, Any] | None = None
) -> list[SweepRun]:
    """Create this hour's run(s) of a scheduled sweep (one per shadow configuration)."""
    now = timezone.now()
    if kind == SweepKind.SHADOW:
        runs = []
        for config in ShadowConfig.objects.filter(is_active=True).select_related("task_class"):
            run, _ = sweep_run_create(
                kind=kind,
                key=sweep_slot_key(kind, f"shadow-{config.pk}", now),
                task_class=config.task_class,
                shadow_config=config,
                params=params,
            )
            runs.append(run)
        return runs
    scope = getattr(task_class, "slug", None) or "all"
    run, _ = sweep_run_create(
        kind=kind,
        key=sweep_slot_key(kind, scope, now),
        task_class=task_class,
        params=params,
    )
    return [run]
