"""Re-calibrating learned-router thresholds to a target on the deployment's own traffic.

RouteLLM calibrates its threshold on a public dataset and warns that real traffic drifts
from it. Here each class with a ``LearnedThresholdTarget`` and an active learned router is
re-calibrated on its own recent graded requests (Celery beat,
``evaluation.tasks.learned_thresholds_calibrate_task``, and ``learned_threshold_calibrate``
for one class):

1. The requests: every distinct prompt of the class's graded decisions and sweep samples in
   the target's window (``evaluation.services.learned.training_examples``).
2. Every threshold from 0 to 1 (step 0.01) is applied to the active router's predictions
   for them (``routing.learned.threshold_curve``): share on the strongest model, mean
   predicted success of the chosen models, mean relative cost (model prices).
3. The threshold that meets the target (``routing.learned.threshold_for_target``): the
   strong-model share closest to the target, or the cheapest whose expected success is at
   least the target.
4. Fewer requests than ``min_requests``, or a move smaller than ``min_change``: nothing is
   proposed. Otherwise a new candidate version with the same coefficients and the new
   threshold (``learned_router_rethreshold``), proposed with the evidence (target, window,
   requests, the old and new threshold's share / expected success / cost, the curve); a
   Reviewer approves it like any other proposal.
Each run's result is kept on the target (``last_result``) for the operators.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from controlplane.models import Route, RoutingTableVersion, VersionStatus
from evaluation.models import (
    OPEN_PROPOSAL_STATUSES,
    LearnedRouter,
    LearnedRouterStatus,
    LearnedThresholdTarget,
    Proposal,
)
from evaluation.selectors import graded_estimates, learned_router_info
from evaluation.services.learned import (
    _price,
    _route_models,
    learned_router_propose,
    learned_router_rethreshold,
    routing_shares,
    threshold_point,
    training_examples,
)
from routing.enums import RouteStrategy
from routing.learned import predict_success, threshold_curve, threshold_for_target

logger = logging.getLogger(__name__)


def _learned_route(target: LearnedThresholdTarget) -> bool:
    active = RoutingTableVersion.objects.filter(status=VersionStatus.ACTIVE).first()
    return Route.objects.filter(
        version=active, task_class=target.task_class, strategy=RouteStrategy.LEARNED
    ).exists()


def learned_threshold_calibrate(
    target: LearnedThresholdTarget, *, now: datetime | None = None, propose: bool = True
) -> dict[str, Any]:
    """Calibrate one class's threshold (see the module docstring); returns the result that
    is also stored on the target: ``status`` is one of no_router, too_few_requests,
    unchanged, proposed, proposal_open."""
    now = now or timezone.now()
    result: dict[str, Any] = {
        "at": now.isoformat(),
        "kind": target.kind,
        "target": target.target,
        "window_days": target.window_days,
    }
    router = (
        LearnedRouter.objects.filter(
            task_class=target.task_class, status=LearnedRouterStatus.ACTIVE
        )
        .select_related("task_class")
        .first()
    )
    if router is None or not _learned_route(target):
        return _store(target, now, {**result, "status": "no_router"})
    info = learned_router_info(router)
    ladder_models = _route_models(target.task_class)
    ladder = [m.slug for m in ladder_models]
    since = now - timedelta(days=target.window_days)
    examples = training_examples(target.task_class.slug, since=since, until=now, spec=info.spec)
    features = list({e.key: e.features for e in examples}.values())
    result["requests"] = len(features)
    result["router_version"] = router.version
    result["rule"] = router.rule
    if len(features) < target.min_requests or len(ladder) < 2:
        return _store(target, now, {**result, "status": "too_few_requests"})
    predictions = [predict_success(info, f) for f in features]
    costs = {m.slug: _price(m) for m in ladder_models}
    top = max(costs.values()) or 1.0
    costs = {slug: c / top for slug, c in costs.items()}  # relative: the dearest is 1
    fallback = graded_estimates(target.task_class.slug)
    curve = threshold_curve(info, predictions, ladder, costs, fallback)
    chosen, met = threshold_for_target(curve, kind=target.kind, target=target.target)
    current = min(curve, key=lambda p: abs(p.threshold - router.threshold))
    result.update(
        {
            "current": threshold_point(current) | {"threshold": router.threshold},
            "calibrated": threshold_point(chosen),
            "target_met": met,
            "curve": [threshold_point(p) for p in curve[::5]],
            "window": [since.isoformat(), now.isoformat()],
        }
    )
    if abs(chosen.threshold - router.threshold) < target.min_change:
        return _store(target, now, {**result, "status": "unchanged"})
    if not propose:
        return _store(target, now, {**result, "status": "calibrated"})
    if Proposal.objects.filter(
        task_class=target.task_class, status__in=OPEN_PROPOSAL_STATUSES
    ).exists():
        return _store(target, now, {**result, "status": "proposal_open"})
    candidate = learned_router_rethreshold(router, threshold=chosen.threshold)
    candidate.metrics = {
        **candidate.metrics,
        "routing": routing_shares(learned_router_info(candidate), features, ladder),
        "calibration": result,
    }
    candidate.save(update_fields=["metrics"])
    goal = (
        f"{target.target:.0%} on the strongest model"
        if target.kind == "strong_share"
        else f"expected success ≥ {target.target:.2f}"
    )
    title = (
        f"{target.task_class.slug}: learned threshold {router.threshold:.2f} → "
        f"{chosen.threshold:.2f} for {goal} ({len(features)} recent requests)"
    )
    proposal = learned_router_propose(candidate, calibration=result, title=title)
    status = "proposed" if proposal is not None else "proposal_open"
    result["learned_router_version"] = candidate.version
    if proposal is not None:
        result["proposal"] = str(proposal.public_id)
    return _store(target, now, {**result, "status": status})


def _store(target: LearnedThresholdTarget, now: datetime, result: dict[str, Any]) -> dict[str, Any]:
    target.last_run_at = now
    target.last_result = result
    target.save(update_fields=["last_run_at", "last_result"])
    return result


def learned_thresholds_calibrate_all() -> list[dict[str, Any]]:
    """Every enabled target (Celery beat)."""
    out = []
    for target in LearnedThresholdTarget.objects.filter(enabled=True).select_related("task_class"):
        try:
            out.append(
                {"task_class": target.task_class.slug, **learned_threshold_calibrate(target)}
            )
        except ValueError:  # a malformed stored router: logged, the others still run
            logger.warning(
                "threshold calibration of %s failed", target.task_class.slug, exc_info=True
            )
    return out
