"""Training learned routers from the decision log, and proposing them.

For one task class (``learned_router_train``):

1. Graded examples from the window: every live decision with a stored prompt and a graded
   outcome (``routing.confidence.graded_success``: the routed model's success), and every
   graded sweep sample (the candidate's and the primary's success on a replayed request).
2. Features: ``routing.learned.request_features`` (hashed n-grams, template, metadata,
   lengths) — the very function the engine calls at decision time; computed once per
   distinct request (prompt, template, metadata), and identical requests of a model are
   fitted as one row with counts (``evaluation.logreg.aggregate``: the same fit).
3. Per model of the class's route with enough examples of both outcomes, an L2-penalised
   logistic regression (numpy, L-BFGS, on a sparse matrix; the dense structure features
   standardised for the fit, the weights stored for their raw values) fitted on 80 % of
   the prompts (split by a stable hash of the prompt text: a prompt is never on both
   sides). The *feature set* (word n-grams with the structure features, structure only,
   the three lengths only: ``routing.learned``) and each model's penalty are chosen by
   3-fold cross-validated log loss on that 80 % only (``evaluation.logreg.l2_choose``:
   warm starts, and on big logs a subsample with the penalty scaled to the full size),
   the set by the loss summed over the models, grouped by the requests' source — the
   metadata key ``routing.learned.GROUP_METADATA_KEY`` (a domain, a customer, a feed)
   when at least :data:`MIN_GROUPS` sources are named, else a hash of the prompt — so the
   choice is the one that holds on sources the training has not seen (word n-grams
   often name a source's topic, which tells nothing about a new one). The other 20 % give
   the held-out metrics (Brier score beside the base-rate predictor's, log loss, AUC,
   calibration error) and the share of requests each model would get at the threshold.
4. Stored as a new *candidate* version of ``evaluation.LearnedRouter``: coefficients as JSON
   floats, hashing settings, threshold, window, sample sizes, metrics. Nothing serves until
   a Reviewer approves its proposal (``learned_router_propose``), which switches the route's
   strategy to ``learned`` in a new routing-table version and activates the router.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from controlplane.models import ModelEndpoint, Route, RoutingTableVersion, TaskClass, VersionStatus
from evaluation.logreg import (
    aggregate,
    column_scales,
    cv_rows,
    design,
    heldout_metrics,
    l2_choose,
    logistic_fit,
)
from evaluation.models import (
    LearnedRouter,
    LearnedRouterRule,
    LearnedRouterStatus,
    Proposal,
    ProposalChange,
)
from evaluation.selectors import learned_router_info
from routing.confidence import graded_success
from routing.enums import RouteStrategy
from routing.learned import (
    GROUP_METADATA_KEY,
    LENGTH_FEATURES,
    THRESHOLD_GRID,
    HashingSpec,
    LearnedRouterInfo,
    ThresholdPoint,
    learned_choice,
    predict_success,
    request_features,
    template_key,
    threshold_curve,
)

logger = logging.getLogger(__name__)

MIN_EXAMPLES = 40  # per model, and at least MIN_EACH of each outcome
MIN_EACH = 5
HELDOUT_SHARE = 5  # one request in five is held out
# Rule gain: route to the cheapest model predicted to lose at most this much success.
GAIN_DEFAULT_THRESHOLD = 0.05


@dataclass(frozen=True, slots=True)
class Example:
    key: str  # the prompt: splits train / held-out by prompt (a prompt is never in both)
    model: str
    features: dict[int, float]
    success: bool
    group: str = ""  # the request's source (metadata GROUP_METADATA_KEY), "" without one
    template: str = ""  # "<id>@<version>" (the template feature)
    metadata: Any = None


# The feature sets training chooses from (routing.learned): word n-grams and structure,
# structure only, the three length features only.
FEATURE_SETS = ("ngrams", "structure", "lengths")
MIN_GROUPS = 3  # marked sources needed to cross-validate grouped by them


def feature_spec(base: HashingSpec, name: str) -> HashingSpec:
    """The hashing settings of one of :data:`FEATURE_SETS`, from the full ``base``."""
    if name == "ngrams":
        return base
    if name == "structure":
        return replace(base, ngram_max=0)
    if name == "lengths":
        return replace(base, ngram_max=0, dense=LENGTH_FEATURES)
    raise ValueError(f"unknown feature set {name!r}")


_LIVE_SQL = """
SELECT d.id, o.routed_model, o.attempts, o.quality_score, o.validation, d.prompt,
       d.prompt_template_id, d.prompt_template_version, d.metadata
FROM telemetry_decision d
JOIN telemetry_outcome o ON o.decision_id = d.id AND o.decision_created_at = d.created_at
WHERE d.task_class = %(task_class)s AND d.created_at >= %(since)s AND d.created_at < %(until)s
  AND o.decision_created_at >= %(since)s AND o.decision_created_at < %(until)s
  AND d.prompt IS NOT NULL
"""

_SWEEP_SQL = """
SELECT s.decision_id, s.prompt, s.candidate_model, s.candidate_success, s.primary_model,
       s.primary_success, coalesce(d.prompt_template_id, ''),
       coalesce(d.prompt_template_version, ''), coalesce(d.metadata, '{}'::jsonb)
FROM evaluation_sweepsample s
LEFT JOIN telemetry_decision d ON d.id = s.decision_id AND d.created_at = s.decision_created_at
WHERE s.task_class = %(task_class)s AND s.created_at >= %(since)s AND s.created_at < %(until)s
  AND s.prompt IS NOT NULL
"""


def _json(value: Any) -> Any:
    """jsonb from a raw cursor: Django's connection hands it over as text."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def training_examples(
    task_class: str, *, since: datetime, until: datetime, spec: HashingSpec
) -> list[Example]:
    """Graded examples of the class in [since, until) (see the module docstring)."""
    out: list[Example] = []
    # Identical requests (prompt, template, metadata) share one features object: computed
    # once, and fitted as one row with counts (evaluation.logreg.aggregate).
    seen: dict[tuple[str, str, str], dict[int, float]] = {}

    def features_of(prompt: str, tpl: str, tpl_v: str, meta: Any) -> dict[int, float]:
        meta_key = meta if isinstance(meta, str) else json.dumps(meta, sort_keys=True)
        key = (prompt, template_key(tpl, tpl_v), meta_key)
        features = seen.get(key)
        if features is None:
            features = seen[key] = request_features(
                spec, prompt, template=key[1], metadata=_json(meta)
            )
        return features

    with connection.cursor() as cursor:
        params: dict[str, Any] = {"task_class": task_class, "since": since, "until": until}
        cursor.execute(_LIVE_SQL, params)
        for _, model, attempts, quality, validation, prompt, tpl, tpl_v, meta in cursor:
            ok = graded_success(
                routed_model=model,
                attempts=_json(attempts) or [],
                quality_score=quality,
                validation=_json(validation),
            )
            if ok is None:
                continue
            features = features_of(prompt, tpl, tpl_v, meta)
            out.append(Example(prompt, model, features, ok, *_source(tpl, tpl_v, meta)))
        cursor.execute(_SWEEP_SQL, params)
        for _, prompt, cand, cand_ok, primary, primary_ok, tpl, tpl_v, meta in cursor:
            features = features_of(prompt, tpl, tpl_v, meta)
            source = _source(tpl, tpl_v, meta)
            if cand_ok is not None:
                out.append(Example(prompt, cand, features, bool(cand_ok), *source))
            if primary and primary_ok is not None:
                out.append(Example(prompt, primary, features, bool(primary_ok), *source))
    return out


def _source(tpl: str, tpl_v: str, meta: Any) -> tuple[str, str, Any]:
    """(group, template key, metadata) of a stored request."""
    metadata = _json(meta)
    group = metadata.get(GROUP_METADATA_KEY) if isinstance(metadata, dict) else None
    return (str(group) if group not in (None, "") else "", template_key(tpl, tpl_v), metadata)


def is_heldout(key: str) -> bool:
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % HELDOUT_SHARE == 0


# --------------------------------------------------------------------------------------------
# Training, storing, proposing
# --------------------------------------------------------------------------------------------


def _route_models(task_class: TaskClass) -> list[ModelEndpoint]:
    """The class's route models (primary + fallbacks) in the active table, cheapest first."""
    active = RoutingTableVersion.objects.filter(status=VersionStatus.ACTIVE).first()
    route = (
        Route.objects.filter(version=active, task_class=task_class)
        .select_related("primary")
        .first()
        if active is not None
        else None
    )
    if route is None:
        return []
    slugs = [route.primary.slug, *route.fallbacks]
    models = {m.slug: m for m in ModelEndpoint.objects.filter(slug__in=slugs)}
    return sorted(
        (models[s] for s in dict.fromkeys(slugs) if s in models),
        key=lambda m: (m.tier, _price(m), m.slug),
    )


def _price(model: ModelEndpoint) -> float:
    from routing.pricing import price_in_force, price_schedule

    price = price_in_force(price_schedule(list(model.prices.all())), timezone.now())
    return float(price.input_usd_per_mtok + price.output_usd_per_mtok) if price else 0.0


def routing_shares(
    router: LearnedRouterInfo,
    features: Sequence[dict[int, float]],
    ladder: Sequence[str],
    quality: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Where ``router`` would send these requests (``ladder``: the route's models, cheapest
    first): the share per model and the mean predicted success of the chosen ones."""
    counts = dict.fromkeys(ladder, 0)
    predicted_total = 0.0
    for f in features:
        p = predict_success(router, f)
        chosen = learned_choice(router, p, ladder) or ladder[-1]
        counts[chosen] += 1
        predicted_total += p.get(chosen, (quality or {}).get(chosen, 0.0))
    n = max(1, len(features))
    return {
        "requests": len(features),
        "share": {s: round(c / n, 4) for s, c in counts.items()},
        "strongest_share": round(counts[ladder[-1]] / n, 4) if ladder else None,
        "mean_predicted_success": round(predicted_total / n, 4),
    }


CURVE_MAX_REQUESTS = 5000  # held-out requests the cost–quality curve is drawn from, at most


def threshold_point(p: ThresholdPoint) -> dict[str, float]:
    return {
        "threshold": round(p.threshold, 4),
        "strongest_share": round(p.strongest_share, 4),
        "expected_success": round(p.expected_success, 4),
        "mean_cost": round(p.mean_cost, 6),
    }


def cost_quality_curve(
    task_class: TaskClass,
    router: LearnedRouterInfo,
    features: Sequence[dict[int, float]],
    ladder: Sequence[ModelEndpoint],
) -> list[dict[str, float]]:
    """What every threshold (0 to 1, step 0.02) would do on these requests (held out):
    mean relative cost of the chosen models (dearest route model = 1), their mean predicted
    success (a model without a learned model counts with its class estimate), share on
    the strongest model. At most :data:`CURVE_MAX_REQUESTS` requests (every k-th)."""
    from evaluation.selectors import graded_estimates

    if not features or len(ladder) < 2:
        return []
    step = max(1, math.ceil(len(features) / CURVE_MAX_REQUESTS))
    predictions = [predict_success(router, f) for f in features[::step]]
    costs = {m.slug: _price(m) for m in ladder}
    top = max(costs.values()) or 1.0
    relative = {slug: c / top for slug, c in costs.items()}
    curve = threshold_curve(
        router,
        predictions,
        [m.slug for m in ladder],
        relative,
        graded_estimates(task_class.slug),
        grid=THRESHOLD_GRID[::2],
    )
    return [threshold_point(p) for p in curve]


@dataclass(slots=True)
class _ModelData:
    """One model's training rows (repeated requests folded: ``aggregate``)."""

    model: ModelEndpoint
    train: list[Example]
    heldout: list[Example]
    distinct: list[Example]  # the first example of every distinct training request
    y: Any  # np.ndarray: successes per distinct request
    trials: Any  # np.ndarray: requests per distinct request
    groups: list[str]


class _Features:
    """Every example's features under each candidate feature set, computed once per
    distinct request (the identity of its full feature dict) and only when asked for."""

    def __init__(self, base: HashingSpec) -> None:
        self.base = base
        self.memo: dict[str, dict[int, dict[int, float]]] = {}

    def of(self, spec: HashingSpec, e: Example) -> dict[int, float]:
        if spec == self.base:
            return e.features
        memo = self.memo.setdefault(repr(spec), {})
        f = memo.get(id(e.features))
        if f is None:
            f = memo[id(e.features)] = request_features(
                spec, e.key, template=e.template, metadata=e.metadata
            )
        return f


def _feature_choice(
    data: Sequence[_ModelData], base: HashingSpec, features: _Features
) -> tuple[str, dict[str, dict[str, Any]], dict[str, float]]:
    """The feature set (:data:`FEATURE_SETS`) with the lowest grouped cross-validated log
    loss summed over the models, each model at its own best penalty; and per set the
    penalty and losses of every model, and the set's mean loss per request. ("ngrams"
    when the cross-validation cannot run: fewer than two groups.)"""
    per_set: dict[str, dict[str, Any]] = {}
    totals: dict[str, float] = {}
    for name in FEATURE_SETS:
        spec = feature_spec(base, name)
        loss = 0.0
        requests = 0.0
        chosen: dict[str, Any] = {}
        for d in data:
            rows = cv_rows(len(d.distinct))
            feats: list[dict[int, float]] = [{}] * len(d.distinct)
            for i in rows:
                feats[i] = features.of(spec, d.distinct[i])
            scale = column_scales([feats[i] for i in rows], spec.n_features, spec.width)
            l2, losses = l2_choose(
                feats, d.y, d.groups, spec.width, trials=d.trials, column_scale=scale
            )
            if not losses:
                return "ngrams", {}, {}
            n = float(d.trials[rows].sum())
            loss += min(losses.values()) * n
            requests += n
            chosen[d.model.slug] = {"l2": l2, "cv_log_loss_by_l2": losses}
        per_set[name] = chosen
        totals[name] = round(loss / max(requests, 1.0), 5)
    best = min(FEATURE_SETS, key=lambda name: totals[name])
    return best, per_set, totals


def learned_router_train(
    task_class: TaskClass,
    *,
    threshold: float | None = None,
    window_days: int | None = None,
    now: datetime | None = None,
    spec: HashingSpec | None = None,
    c: float | None = None,
    rule: str = LearnedRouterRule.SUCCESS,
) -> LearnedRouter | None:
    """Train and store a candidate router for ``task_class``; None without enough data.

    ``threshold`` defaults to the class's quality target (rule ``success``) or
    :data:`GAIN_DEFAULT_THRESHOLD` (rule ``gain``). Without ``spec`` and ``c`` the feature
    set (:data:`FEATURE_SETS`) and every model's penalty are chosen by cross-validation
    on the training part, grouped by the requests' source (metadata
    ``GROUP_METADATA_KEY``, when at least :data:`MIN_GROUPS` sources are marked; else by
    a hash of the prompt), so that they are the choices that hold on sources the training
    has not seen. With ``spec`` only the penalty is chosen; with ``c`` it is
    ``l2 = 1 / (c·n)`` (scikit-learn's ``C``). The dense features are standardised for the
    fit and the weights stored for their raw values."""
    now = now or timezone.now()
    days = window_days or settings.SWITCHYARD_LEARNED_WINDOW_DAYS
    since = now - timedelta(days=days)
    choose = spec is None and c is None
    base = spec or HashingSpec()
    ladder = _route_models(task_class)
    if len(ladder) < 2:
        return None
    examples = training_examples(task_class.slug, since=since, until=now, spec=base)
    marked = {e.group for e in examples if e.group}
    by_source = len(marked) >= MIN_GROUPS

    def group_of(e: Example) -> str:
        if by_source and e.group:
            return f"s:{e.group}"
        return f"g{zlib.crc32(e.key.encode('utf-8', 'surrogatepass')) % 30}"

    data: list[_ModelData] = []
    for model in ladder:
        mine = [e for e in examples if e.model == model.slug]
        train = [e for e in mine if not is_heldout(e.key)]
        heldout = [e for e in mine if is_heldout(e.key)]
        wins = sum(e.success for e in train)
        if len(train) < MIN_EXAMPLES or wins < MIN_EACH or len(train) - wins < MIN_EACH:
            continue
        _, y, trials, first = aggregate([e.features for e in train], [e.success for e in train])
        distinct = [train[i] for i in first]
        data.append(
            _ModelData(model, train, heldout, distinct, y, trials, [group_of(e) for e in distinct])
        )
    features = _Features(base)
    chosen_set, per_set, totals = (
        _feature_choice(data, base, features) if choose and data else ("ngrams", {}, {})
    )
    spec = feature_spec(base, chosen_set)
    coefficients: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    if choose:
        metrics["features"] = {
            "chosen": chosen_set,
            "cv_log_loss": totals,
            "grouped_by": "source" if by_source else "prompt",
            "groups": len(marked) if by_source else None,
        }
    l2_used = 0.0
    for d in data:
        model = d.model
        rows = [features.of(spec, e) for e in d.distinct]
        scale = column_scales(rows, spec.n_features, spec.width)
        if c is not None:
            l2, cv_loss = 1.0 / (c * len(d.train)), {}
        elif model.slug in per_set.get(chosen_set, {}):
            l2 = per_set[chosen_set][model.slug]["l2"]
            cv_loss = per_set[chosen_set][model.slug]["cv_log_loss_by_l2"]
        else:
            l2, cv_loss = l2_choose(
                rows, d.y, d.groups, spec.width, trials=d.trials, column_scale=scale
            )
        l2_used = max(l2_used, l2)
        w, b = logistic_fit(design(rows, spec.width, scale), d.y, l2=l2, trials=d.trials)
        coefficients[model.slug] = {
            "intercept": round(b, 6),
            "weights": [round(float(v), 6) for v in w * scale],
            "tier": model.tier,
            "l2": l2,
        }
        samples[model.slug] = {
            "train": len(d.train),
            "heldout": len(d.heldout),
            "successes": int(sum(e.success for e in d.train) + sum(e.success for e in d.heldout)),
            "cv_log_loss_by_l2": cv_loss,
        }
        if d.heldout:
            info = learned_router_from_coefficients(task_class.slug, spec, 0.5, coefficients)
            fitted = info.model(model.slug)
            assert fitted is not None
            from routing.learned import predict_one

            p = [predict_one(fitted, features.of(spec, e)) for e in d.heldout]
            base_rate = float(d.y.sum() / d.trials.sum())
            metrics[model.slug] = heldout_metrics(p, [e.success for e in d.heldout], base_rate)
    if not coefficients:
        return None
    if threshold is not None:
        target = float(threshold)
    elif rule == LearnedRouterRule.GAIN:
        target = GAIN_DEFAULT_THRESHOLD
    else:
        target = float(task_class.quality_target)
    info = learned_router_from_coefficients(task_class.slug, spec, target, coefficients, rule)
    seen: dict[str, dict[int, float]] = {}
    for e in examples:
        if is_heldout(e.key) and e.key not in seen:
            seen[e.key] = features.of(spec, e)
    metrics["routing"] = routing_shares(info, list(seen.values()), [m.slug for m in ladder])
    metrics["ladder"] = [m.slug for m in ladder]
    metrics["curve"] = cost_quality_curve(task_class, info, list(seen.values()), ladder)
    with transaction.atomic():
        version = (
            LearnedRouter.objects.select_for_update()
            .filter(task_class=task_class)
            .aggregate(v=Max("version"))["v"]
            or 0
        ) + 1
        router = LearnedRouter.objects.create(
            task_class=task_class,
            version=version,
            hashing=spec.as_dict(),
            coefficients=coefficients,
            threshold=target,
            rule=rule,
            l2=l2_used,
            window_start=since,
            window_end=now,
            samples=samples,
            metrics=metrics,
        )
    learned_router_info(router)  # the stored data must load back
    return router


def learned_router_from_coefficients(
    task_class: str,
    spec: HashingSpec,
    threshold: float,
    coefficients: dict[str, Any],
    rule: str = LearnedRouterRule.SUCCESS,
) -> LearnedRouterInfo:
    from routing.learned import learned_router_from_data

    return learned_router_from_data(
        task_class=task_class,
        version=0,
        hashing=spec.as_dict(),
        threshold=threshold,
        coefficients=coefficients,
        rule=str(rule),
    )


def learned_router_rethreshold(router: LearnedRouter, *, threshold: float) -> LearnedRouter:
    """A new candidate version with the same coefficients and another threshold."""
    if not 0.0 <= threshold <= 1.0:
        raise ValidationError({"threshold": "The threshold is a probability (0–1)."})
    with transaction.atomic():
        version = (
            LearnedRouter.objects.select_for_update()
            .filter(task_class=router.task_class)
            .aggregate(v=Max("version"))["v"]
            or 0
        ) + 1
        metrics = {k: v for k, v in router.metrics.items() if k != "routing"}
        return LearnedRouter.objects.create(
            task_class=router.task_class,
            version=version,
            hashing=router.hashing,
            coefficients=router.coefficients,
            threshold=threshold,
            rule=router.rule,
            l2=router.l2,
            window_start=router.window_start,
            window_end=router.window_end,
            samples=router.samples,
            metrics=metrics,
            based_on=router,
        )


def learned_router_propose(
    router: LearnedRouter,
    *,
    user: Any = None,
    calibration: dict[str, Any] | None = None,
    title: str | None = None,
) -> Proposal | None:
    """Propose routing ``router``'s class by it (a Reviewer approves; see proposal_apply).
    None when an equivalent proposal is already open. ``calibration``: the evidence of a
    threshold re-calibrated to a target (``evaluation.services.thresholds``)."""
    from evaluation.services.proposals import proposal_create

    if router.status != LearnedRouterStatus.CANDIDATE:
        raise ValidationError({"router": f"Router v{router.version} is {router.status}."})
    active = RoutingTableVersion.objects.filter(status=VersionStatus.ACTIVE).first()
    if active is None:
        raise ValidationError({"routing": "There is no active routing table."})
    route = (
        Route.objects.select_related("primary", "task_class")
        .filter(version=active, task_class=router.task_class)
        .first()
    )
    if route is None:
        raise ValidationError({"task_class": "The class has no route."})
    task_class = router.task_class
    evidence = {
        "kind": "learned",
        "learned_router_id": router.pk,
        "learned_router_version": router.version,
        "threshold": router.threshold,
        "quality_target": float(task_class.quality_target),
        "from_model": route.primary.slug,
        "to_model": route.primary.slug,
        "from_strategy": route.strategy,
        "window": [router.window_start.isoformat(), router.window_end.isoformat()],
        "samples": router.samples,
        "metrics": router.metrics,
        "rule": router.rule,
        "example_sample_ids": [],
    }
    if calibration is not None:
        evidence["calibration"] = calibration
    share = router.metrics.get("routing", {}).get("strongest_share")
    title = title or (
        f"{task_class.slug}: route by learned router v{router.version}"
        f" (threshold {router.threshold:.2f}"
        + (f", {share:.0%} to the strongest model)" if share is not None else ")")
    )
    return proposal_create(
        task_class=task_class,
        route=route,
        to_model=route.primary,
        change=ProposalChange.LEARNED,
        based_on_version=active.number,
        title=title,
        evidence=evidence,
        user=user,
        fallbacks=list(route.fallbacks),
    )


def learned_router_activate(router: LearnedRouter) -> None:
    """Make ``router`` its class's active router (the previous one retires). Called by
    ``proposal_apply`` inside its transaction."""
    LearnedRouter.objects.filter(
        task_class=router.task_class, status=LearnedRouterStatus.ACTIVE
    ).exclude(pk=router.pk).update(status=LearnedRouterStatus.RETIRED)
    router.status = LearnedRouterStatus.ACTIVE
    router.activated_at = timezone.now()
    router.save(update_fields=["status", "activated_at"])


def _routed_by_learned() -> set[str]:
    active = RoutingTableVersion.objects.filter(status=VersionStatus.ACTIVE).first()
    if active is None:
        return set()
    return set(
        Route.objects.filter(version=active, strategy=RouteStrategy.LEARNED).values_list(
            "task_class__slug", flat=True
        )
    )


def learned_routers_train_all(*, propose: bool = True) -> list[LearnedRouter]:
    """Train every active class with enough graded data (Celery beat). Where the route is
    not learned yet and no proposal is open, propose a candidate whose held-out Brier score
    beats the base rate for every model it learned. (Retrained versions of a learned class
    are kept for inspection; ``train_routers --propose`` proposes one.)"""
    trained = []
    learned_already = _routed_by_learned()
    for task_class in TaskClass.objects.filter(is_active=True).order_by("slug"):
        router = learned_router_train(task_class)
        if router is None:
            continue
        trained.append(router)
        per_model = [v for k, v in router.metrics.items() if k in router.coefficients]
        good = bool(per_model) and all(
            m.get("brier") is not None and m["brier"] < m["brier_base"] for m in per_model
        )
        if propose and good and task_class.slug not in learned_already:
            learned_router_propose(router)
    return trained
