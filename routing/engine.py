"""Switchyard routing core: a pure function from (request, snapshot) to a decision.

This module must stay free of Django and of any I/O.  The control plane loads the active
routing table, the model registry, budget spend and observed latencies from the database,
builds an immutable :class:`Snapshot` with :func:`snapshot_build` (which precomputes every
index :func:`decide` needs) and then calls :func:`decide` once per request.

Enumerated *inputs* (tier, locality, status, risk, ...) are plain ``str``/``int`` so values
read from the database can be passed through unchanged; the accepted values are listed in
the ``*_VALUES`` constants and checked by :func:`snapshot_build`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from routing import enums
from routing.confidence import PRIOR_BY_TIER
from routing.enums import RouteStrategy
from routing.learned import (
    LearnedRouterInfo,
    learned_choice,
    predict_success,
    request_features,
)
from routing.semantic import SemanticMatch, SemanticRouterInfo

__all__ = [
    "BUDGET_SCOPE_VALUES",
    "DATA_CLASSIFICATION_VALUES",
    "LOCALITY_VALUES",
    "MODEL_STATUS_VALUES",
    "BudgetAction",
    "BudgetExceeded",
    "BudgetState",
    "BudgetView",
    "Candidate",
    "Decision",
    "DecisionRequest",
    "EscalationTriggers",
    "FallbackOption",
    "ModelInfo",
    "NoEligibleModel",
    "RouteConditions",
    "RouteInfo",
    "RoutingError",
    "Snapshot",
    "SnapshotIndex",
    "Strategy",
    "TaskClassInfo",
    "UnknownTaskClass",
    "decide",
    "estimated_cost_usd",
    "snapshot_build",
]

# How a decision's model was chosen: the values of ``enums.DecisionStrategy`` (the type
# checker needs the literal; the assertion below keeps the two one list).
Strategy = Literal["rule", "policy", "budget", "fallback", "learned", "semantic", "llm"]
assert frozenset(get_args(Strategy)) == enums.values(enums.DecisionStrategy)
BudgetAction = Literal["none", "downgrade", "block", "local_only"]

TIER_VALUES: Final = enums.values(enums.Tier)
LOCALITY_VALUES: Final = enums.values(enums.Locality)
MODEL_STATUS_VALUES: Final = enums.values(enums.ModelStatus)
CIRCUIT_OPEN: Final = "circuit open"
RISK_VALUES: Final = enums.values(enums.Risk)
DATA_POLICY_VALUES: Final = enums.values(enums.DataPolicy)
LATENCY_CLASS_VALUES: Final = enums.values(enums.LatencyClass)
BUDGET_SCOPE_VALUES: Final = enums.values(enums.BudgetScope)
BUDGET_PERIOD_VALUES: Final = enums.values(enums.BudgetPeriod)
HARD_ACTION_VALUES: Final = enums.values(enums.HardAction)
DATA_CLASSIFICATION_VALUES: Final = enums.values(enums.DataClassification)
ROUTE_STRATEGY_VALUES: Final = enums.values(enums.RouteStrategy)

# Confidence when the snapshot has no estimate for (model, task class): the tier's prior.
DEFAULT_CONFIDENCE_BY_TIER: Final[Mapping[int, float]] = PRIOR_BY_TIER

_NO_TIER_LIMIT: Final = 1 << 30
_SCOPE_LABEL: Final[Mapping[str, str]] = {
    "global": "Global",
    "team": "Team",
    "application": "Application",
    "task_class": "Task class",
}

# Which restriction displaced a route model; drives the decision strategy.
_KIND_NONE: Final = 0
_KIND_LOCAL: Final = 1  # cloud model while local-only (data policy or budget)
_KIND_TIER: Final = 2  # above the max tier of a soft-limit downgrade


# --------------------------------------------------------------------------------------------
# Snapshot data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model endpoint of the registry, with its current price and observed latency."""

    slug: str
    provider: str
    base_url: str
    provider_model: str
    version: str
    tier: int  # 1 small/local, 2 mid hosted, 3 frontier cloud
    locality: str  # "local" | "cloud"
    context_window: int
    max_output_tokens: int
    status: str  # "active" | "disabled" | "deprecated"
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    p95_latency_ms: float | None = None
    # Its circuit is open (routing/circuits.py: consecutive upstream failures): not chosen.
    circuit_open: bool = False


@dataclass(frozen=True, slots=True)
class EscalationTriggers:
    """When a caller should escalate from the chosen model to the next fallback."""

    confidence_below: float | None = None
    on_invalid_output: bool = False
    on_error: bool = False  # error or timeout

    def as_list(self) -> list[str]:
        """Triggers as strings, e.g. ``["confidence_below:0.7", "invalid_output"]``."""
        out: list[str] = []
        if self.confidence_below is not None:
            out.append(f"confidence_below:{self.confidence_below:g}")
        if self.on_invalid_output:
            out.append("invalid_output")
        if self.on_error:
            out.append("error_timeout")
        return out


@dataclass(frozen=True, slots=True)
class RouteConditions:
    """Conditions under which a route's *primary* applies (``None``/empty = no condition)."""

    max_context_tokens: int | None = None
    max_latency_budget_ms: int | None = None
    data_classifications: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return (
            self.max_context_tokens is None
            and self.max_latency_budget_ms is None
            and not self.data_classifications
            and not self.teams
        )


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """The active routing-table entry for one task class."""

    task_class: str
    primary: str
    fallbacks: tuple[str, ...] = ()
    escalation: EscalationTriggers = EscalationTriggers()
    conditions: RouteConditions = RouteConditions()
    strategy: str = RouteStrategy.RULE.value  # one of enums.RouteStrategy


@dataclass(frozen=True, slots=True)
class TaskClassInfo:
    slug: str
    risk: str = "normal"  # "normal" | "high"
    data_policy: str = "any"  # "any" | "local_only"
    default_output_cap: int = 1024
    latency_class: str = "interactive"  # "interactive" | "batch"
    quality_target: float = 0.8
    # When every route model is unavailable (open circuits), degrade to a local model.
    local_when_down: bool = False


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A budget with its spend for the current period.  Soft action: downgrade one tier.

    ``reserved_usd`` is what in-flight decisions hold against it (worst-case costs not yet
    settled by an outcome); limits are judged on ``spent_usd + reserved_usd``."""

    id: int
    name: str
    scope: str  # "global" | "team" | "application" | "task_class"
    scope_key: str | None  # team / application / task class slug; None for global
    period: str  # "day" | "month"
    limit_usd: float
    spent_usd: float
    soft_limit_pct: float = 80.0
    hard_action: str = "block"  # "block" | "local_only"
    reserved_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class BudgetView:
    """A budget as reported in a decision, with the action it has on this request."""

    budget_id: int
    name: str
    scope: str
    scope_key: str | None
    spent_usd: float
    limit_usd: float
    remaining_usd: float  # limit - spent - reserved, at least 0
    action: BudgetAction
    reserved_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class _ChainEntry:
    slug: str
    model: ModelInfo | None  # None: slug not in the registry
    tier: int  # 0 when unknown
    cap: int  # output cap for this task class on this model
    is_primary: bool
    fallback: FallbackOption | None  # prebuilt option with the route's triggers


@dataclass(frozen=True, slots=True)
class _BudgetEntry:
    pos: int  # position in Snapshot.budgets (evaluation order)
    state: BudgetState
    view: BudgetView
    action: BudgetAction
    action_text: str  # policy_actions entry ("" for action "none")


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything decide() needs for one task class, precomputed."""

    task: TaskClassInfo
    route: RouteInfo
    primary_slug: str
    primary_tier: int
    chain: tuple[_ChainEntry, ...]
    downgraded_chain: tuple[_ChainEntry, ...]  # chain with tier <= downgrade_max_tier first
    downgrade_max_tier: int
    chain_slugs: frozenset[str]
    conditions: RouteConditions | None  # None when the route has no conditions
    triggers: tuple[str, ...]
    high_risk: bool
    policy_local: bool
    base_budgets: tuple[_BudgetEntry, ...]  # global + this task class, in snapshot order
    quality: Mapping[str, float]  # calibrated success probability by model slug
    learned: LearnedRouterInfo | None = None  # when the route's strategy is "learned"
    semantic: SemanticRouterInfo | None = None  # when the route's strategy is "semantic"


@dataclass(frozen=True, slots=True)
class SnapshotIndex:
    """Indexes precomputed by :func:`snapshot_build`; treat as opaque."""

    plans: Mapping[str, _Plan]
    valid_task_classes: tuple[str, ...]
    team_budgets: Mapping[str, tuple[_BudgetEntry, ...]]
    application_budgets: Mapping[str, tuple[_BudgetEntry, ...]]
    active_ranked: tuple[ModelInfo, ...]  # active models, tier desc then cheapest
    local_ranked: tuple[ModelInfo, ...]  # active local models, tier desc then cheapest


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable, in-memory view of the active routing configuration.

    Build it with :func:`snapshot_build` (or :meth:`Snapshot.build`), which fills ``index``.
    A snapshot constructed directly still works, but :func:`decide` then rebuilds the
    index on every call.
    """

    version: int
    models: dict[str, ModelInfo]
    task_classes: dict[str, TaskClassInfo]
    routes: dict[str, RouteInfo]
    budgets: tuple[BudgetState, ...] = ()
    quality: dict[tuple[str, str], float] = field(default_factory=dict)
    index: SnapshotIndex | None = field(default=None, repr=False, compare=False)
    learned: dict[str, LearnedRouterInfo] = field(default_factory=dict)  # by task class
    semantic: dict[str, SemanticRouterInfo] = field(default_factory=dict)  # by task class

    @classmethod
    def build(
        cls,
        *,
        version: int,
        models: Mapping[str, ModelInfo] | Iterable[ModelInfo],
        task_classes: Mapping[str, TaskClassInfo] | Iterable[TaskClassInfo],
        routes: Mapping[str, RouteInfo] | Iterable[RouteInfo],
        budgets: Iterable[BudgetState] = (),
        quality: Mapping[tuple[str, str], float] | None = None,
        learned: Mapping[str, LearnedRouterInfo] | None = None,
        semantic: Mapping[str, SemanticRouterInfo] | None = None,
    ) -> Snapshot:
        """Same as :func:`snapshot_build`."""
        return snapshot_build(
            version=version,
            models=models,
            task_classes=task_classes,
            routes=routes,
            budgets=budgets,
            quality=quality,
            learned=learned,
            semantic=semantic,
        )


# --------------------------------------------------------------------------------------------
# Requests and decisions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    task_class: str
    input_tokens: int
    context_tokens: int = 0
    latency_budget_ms: int | None = None
    max_cost_usd: float | None = None
    data_classification: str | None = None  # public | internal | confidential | personal
    pii_found: tuple[str, ...] = ()
    pii_detection_failed: bool = False
    team: str | None = None
    application: str | None = None
    # What a learned router reads (routing/learned.py); unused by rule routes.
    prompt: str | None = None
    prompt_template: str = ""  # "<id>@<version>"
    metadata: Mapping[str, object] | None = None
    # Budgets (ids) to treat as at their hard limit whatever the snapshot says: the
    # admission of reservations found them full (see routing/services.py).
    exhausted_budgets: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Candidate:
    model: str
    tier: int  # 0 if the slug is not in the registry
    accepted: bool
    reason: str  # why rejected, or "selected" / "eligible fallback"


@dataclass(frozen=True, slots=True)
class FallbackOption:
    model: ModelInfo
    triggers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    model: ModelInfo
    strategy: Strategy
    reason: str
    confidence: float
    fallbacks: tuple[FallbackOption, ...]
    max_output_tokens: int
    handoff_required: bool
    pii_types_found: tuple[str, ...]
    policy_actions: tuple[str, ...]
    budgets: tuple[BudgetView, ...]
    candidates: tuple[Candidate, ...]
    routing_table_version: int
    local_only: bool
    # The LLM router's call (routing/llm_router.py), set by the decision pipeline; on the path.
    router_call: Mapping[str, object] | None = None


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class RoutingError(Exception):
    """Base class of every error :func:`decide` raises."""


class UnknownTaskClass(RoutingError):
    def __init__(self, valid: tuple[str, ...], task_class: str = "") -> None:
        self.valid = valid
        self.task_class = task_class
        super().__init__(
            f"unknown task class {task_class!r}; valid task classes: {', '.join(valid) or '-'}"
        )

    def __reduce__(self) -> tuple[type[UnknownTaskClass], tuple[tuple[str, ...], str]]:
        return (type(self), (self.valid, self.task_class))


class BudgetExceeded(RoutingError):
    def __init__(self, budget: BudgetView) -> None:
        self.budget = budget
        super().__init__(
            f"budget {budget.name!r} ({budget.scope}) exhausted: spent "
            f"${budget.spent_usd:.2f} + reserved ${budget.reserved_usd:.2f}"
            f" of ${budget.limit_usd:.2f}"
        )

    def __reduce__(self) -> tuple[type[BudgetExceeded], tuple[BudgetView]]:
        return (type(self), (self.budget,))


class NoEligibleModel(RoutingError):
    def __init__(self, candidates: tuple[Candidate, ...], task_class: str = "") -> None:
        self.candidates = candidates
        self.task_class = task_class
        detail = "; ".join(f"{c.model}: {c.reason}" for c in candidates) or "no candidates"
        super().__init__(f"no eligible model for task class {task_class!r} ({detail})")

    def __reduce__(self) -> tuple[type[NoEligibleModel], tuple[tuple[Candidate, ...], str]]:
        return (type(self), (self.candidates, self.task_class))


# --------------------------------------------------------------------------------------------
# Snapshot building
# --------------------------------------------------------------------------------------------


def _keyed[T](items: Mapping[str, T] | Iterable[T], key_of: str, what: str) -> dict[str, T]:
    if isinstance(items, Mapping):
        out = dict(items)
        for key, item in out.items():
            if getattr(item, key_of) != key:
                raise ValueError(f"{what} keyed {key!r} has {key_of} {getattr(item, key_of)!r}")
        return out
    keyed: dict[str, T] = {}
    for item in items:
        key = getattr(item, key_of)
        if key in keyed:
            raise ValueError(f"duplicate {what} {key!r}")
        keyed[key] = item
    return keyed


def _check(value: object, allowed: frozenset[object], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"invalid {what} {value!r}; expected one of {sorted(map(str, allowed))}")


def _validate(
    models: Mapping[str, ModelInfo],
    task_classes: Mapping[str, TaskClassInfo],
    budgets: tuple[BudgetState, ...],
    routes: Mapping[str, RouteInfo],
) -> None:
    for r in routes.values():
        _check(r.strategy, ROUTE_STRATEGY_VALUES, f"strategy of route {r.task_class!r}")
    for m in models.values():
        _check(m.tier, TIER_VALUES, f"tier of model {m.slug!r}")
        _check(m.locality, LOCALITY_VALUES, f"locality of model {m.slug!r}")
        _check(m.status, MODEL_STATUS_VALUES, f"status of model {m.slug!r}")
    for t in task_classes.values():
        _check(t.risk, RISK_VALUES, f"risk of task class {t.slug!r}")
        _check(t.data_policy, DATA_POLICY_VALUES, f"data policy of task class {t.slug!r}")
        _check(t.latency_class, LATENCY_CLASS_VALUES, f"latency class of task class {t.slug!r}")
    for b in budgets:
        _check(b.scope, BUDGET_SCOPE_VALUES, f"scope of budget {b.name!r}")
        _check(b.period, BUDGET_PERIOD_VALUES, f"period of budget {b.name!r}")
        _check(b.hard_action, HARD_ACTION_VALUES, f"hard action of budget {b.name!r}")
        if b.scope != "global" and not b.scope_key:
            raise ValueError(f"budget {b.name!r} with scope {b.scope!r} needs a scope_key")


def _price_key(m: ModelInfo) -> tuple[int, float, str]:
    return (-m.tier, m.input_usd_per_mtok + m.output_usd_per_mtok, m.slug)


def _budget_entry(pos: int, b: BudgetState, exhausted: bool = False) -> _BudgetEntry:
    action: BudgetAction
    used = b.spent_usd + b.reserved_usd
    if exhausted or used >= b.limit_usd:
        action = "block" if b.hard_action == "block" else "local_only"
        text = f"local_only: budget {b.name!r} hard limit reached"
    elif used >= b.soft_limit_pct / 100.0 * b.limit_usd:
        action = "downgrade"
        text = f"downgrade: budget {b.name!r} above {b.soft_limit_pct:g}% soft limit"
    else:
        action = "none"
        text = ""
    view = BudgetView(
        budget_id=b.id,
        name=b.name,
        scope=b.scope,
        scope_key=b.scope_key,
        spent_usd=b.spent_usd,
        limit_usd=b.limit_usd,
        remaining_usd=max(0.0, b.limit_usd - used),
        action=action,
        reserved_usd=b.reserved_usd,
    )
    return _BudgetEntry(pos=pos, state=b, view=view, action=action, action_text=text)


def _group(entries: Iterable[_BudgetEntry]) -> dict[str, tuple[_BudgetEntry, ...]]:
    out: dict[str, list[_BudgetEntry]] = {}
    for e in entries:
        out.setdefault(e.state.scope_key or "", []).append(e)
    return {k: tuple(v) for k, v in out.items()}


def _build_index(
    models: Mapping[str, ModelInfo],
    task_classes: Mapping[str, TaskClassInfo],
    routes: Mapping[str, RouteInfo],
    budgets: tuple[BudgetState, ...],
    quality: Mapping[tuple[str, str], float],
    learned: Mapping[str, LearnedRouterInfo] | None = None,
    semantic: Mapping[str, SemanticRouterInfo] | None = None,
) -> SnapshotIndex:
    entries = [_budget_entry(i, b) for i, b in enumerate(budgets)]
    global_budgets = tuple(e for e in entries if e.state.scope == "global")
    by_task = _group(e for e in entries if e.state.scope == "task_class")
    team_budgets = _group(e for e in entries if e.state.scope == "team")
    application_budgets = _group(e for e in entries if e.state.scope == "application")

    quality_by_task: dict[str, dict[str, float]] = {}
    for (model_slug, task_slug), rate in quality.items():
        quality_by_task.setdefault(task_slug, {})[model_slug] = rate

    plans: dict[str, _Plan] = {}
    for slug, route in routes.items():
        task = task_classes.get(slug)
        if task is None:
            continue
        triggers = tuple(route.escalation.as_list())
        chain: list[_ChainEntry] = []
        seen: set[str] = set()
        for i, model_slug in enumerate((route.primary, *route.fallbacks)):
            if model_slug in seen:
                continue
            seen.add(model_slug)
            m = models.get(model_slug)
            chain.append(
                _ChainEntry(
                    slug=model_slug,
                    model=m,
                    tier=m.tier if m is not None else 0,
                    cap=min(task.default_output_cap, m.max_output_tokens) if m is not None else 0,
                    is_primary=i == 0,
                    fallback=FallbackOption(m, triggers) if m is not None else None,
                )
            )
        primary = models.get(route.primary)
        primary_tier = primary.tier if primary is not None else max(TIER_VALUES)
        max_tier = max(1, primary_tier - 1)
        fits = [e for e in chain if e.model is not None and e.tier <= max_tier]
        rest = [e for e in chain if not (e.model is not None and e.tier <= max_tier)]
        base = sorted(global_budgets + by_task.get(slug, ()), key=_budget_pos)
        plans[slug] = _Plan(
            task=task,
            route=route,
            primary_slug=route.primary,
            primary_tier=primary_tier,
            chain=tuple(chain),
            downgraded_chain=tuple(fits + rest),
            downgrade_max_tier=max_tier,
            chain_slugs=frozenset(seen),
            conditions=None if route.conditions.is_empty() else route.conditions,
            triggers=triggers,
            high_risk=task.risk == "high",
            policy_local=task.data_policy == "local_only",
            base_budgets=tuple(base),
            quality=quality_by_task.get(slug, {}),
            learned=(learned or {}).get(slug) if route.strategy == RouteStrategy.LEARNED else None,
            semantic=(
                (semantic or {}).get(slug) if route.strategy == RouteStrategy.SEMANTIC else None
            ),
        )

    active_ranked = tuple(
        sorted((m for m in models.values() if m.status == "active"), key=_price_key)
    )
    return SnapshotIndex(
        plans=plans,
        valid_task_classes=tuple(sorted(plans)),
        team_budgets=team_budgets,
        application_budgets=application_budgets,
        active_ranked=active_ranked,
        local_ranked=tuple(m for m in active_ranked if m.locality == "local"),
    )


def _budget_pos(e: _BudgetEntry) -> int:
    return e.pos


def snapshot_build(
    *,
    version: int,
    models: Mapping[str, ModelInfo] | Iterable[ModelInfo],
    task_classes: Mapping[str, TaskClassInfo] | Iterable[TaskClassInfo],
    routes: Mapping[str, RouteInfo] | Iterable[RouteInfo],
    budgets: Iterable[BudgetState] = (),
    quality: Mapping[tuple[str, str], float] | None = None,
    learned: Mapping[str, LearnedRouterInfo] | None = None,
    semantic: Mapping[str, SemanticRouterInfo] | None = None,
) -> Snapshot:
    """Validate the inputs and build a :class:`Snapshot` with its precomputed index.

    ``models``/``task_classes``/``routes`` may be mappings keyed by slug (routes: by task
    class slug) or plain iterables.  Raises ``ValueError`` for malformed data (unknown
    enumeration values, mismatched keys, duplicates).  Routes that point at models missing
    from the registry are accepted; such models are reported as rejected candidates.
    """
    model_map = _keyed(models, "slug", "model")
    task_map = _keyed(task_classes, "slug", "task class")
    route_map = _keyed(routes, "task_class", "route")
    budget_tuple = tuple(budgets)
    quality_map = dict(quality) if quality else {}
    learned_map = dict(learned) if learned else {}
    semantic_map = dict(semantic) if semantic else {}
    _validate(model_map, task_map, budget_tuple, route_map)
    return Snapshot(
        version=version,
        models=model_map,
        task_classes=task_map,
        routes=route_map,
        budgets=budget_tuple,
        quality=quality_map,
        index=_build_index(
            model_map, task_map, route_map, budget_tuple, quality_map, learned_map, semantic_map
        ),
        learned=learned_map,
        semantic=semantic_map,
    )


def _index_of(snapshot: Snapshot) -> SnapshotIndex:
    index = snapshot.index
    if index is None:  # hand-built snapshot: correct, but slow
        index = _build_index(
            snapshot.models,
            snapshot.task_classes,
            snapshot.routes,
            snapshot.budgets,
            snapshot.quality,
            snapshot.learned,
            snapshot.semantic,
        )
    return index


# --------------------------------------------------------------------------------------------
# Decision
# --------------------------------------------------------------------------------------------


def estimated_cost_usd(m: ModelInfo, input_tokens: int, output_tokens: int) -> float:
    """A request's cost on ``m`` at the snapshot's price (in force now): with the output cap
    as ``output_tokens`` this is its worst case, checked against ``max_cost_usd`` and
    reserved against budgets."""
    return (input_tokens * m.input_usd_per_mtok + output_tokens * m.output_usd_per_mtok) / 1e6


def _route_condition_failure(cond: RouteConditions, request: DecisionRequest, prompt: int) -> str:
    limit = cond.max_context_tokens
    if limit is not None and prompt > limit:
        return f"route condition: context {prompt} tokens above {limit}"
    latency_limit = cond.max_latency_budget_ms
    budget = request.latency_budget_ms
    if latency_limit is not None and budget is not None and budget > latency_limit:
        return f"route condition: latency budget {budget}ms above {latency_limit}ms"
    classes = cond.data_classifications
    if classes and request.data_classification not in classes:
        return (
            f"route condition: data classification {request.data_classification or 'unset'}"
            f" not in ({', '.join(classes)})"
        )
    teams = cond.teams
    if teams and request.team not in teams:
        return f"route condition: team {request.team or 'unset'} not in ({', '.join(teams)})"
    return ""


def _rejection(
    m: ModelInfo,
    cap: int,
    request: DecisionRequest,
    prompt: int,
    local_reason: str,
    max_tier: int,
    conditions: RouteConditions | None,
) -> str:
    """Why ``m`` cannot serve the request ("" if it can).  Policy and budget checks first."""
    if local_reason and m.locality != "local":
        return local_reason
    if m.tier > max_tier:
        return f"tier {m.tier} above max tier {max_tier} under budget downgrade"
    if m.status != "active":
        return f"model {m.status}"
    if m.circuit_open:
        return CIRCUIT_OPEN
    if conditions is not None:
        failure = _route_condition_failure(conditions, request, prompt)
        if failure:
            return failure
    needed = prompt + cap
    if needed > m.context_window:
        return (
            f"context {needed} tokens (prompt {prompt} + output {cap})"
            f" exceeds window {m.context_window}"
        )
    budget_ms = request.latency_budget_ms
    p95 = m.p95_latency_ms
    if budget_ms is not None and p95 is not None and p95 > budget_ms:
        return f"p95 latency {p95:.0f}ms exceeds budget {budget_ms}ms"
    max_cost = request.max_cost_usd
    if max_cost is not None:
        cost = estimated_cost_usd(m, request.input_tokens, cap)
        if cost > max_cost:
            return f"estimated cost ${cost:.6f} exceeds max ${max_cost:.6f}"
    return ""


def decide(request: DecisionRequest, snapshot: Snapshot) -> Decision:
    """Choose the model for ``request`` from ``snapshot``.  Pure: no I/O, no Django.

    1. Look up the task class and its route; if either is missing raise
       :class:`UnknownTaskClass` with the sorted valid slugs.
    2. Policy gate: the request is *local-only* if the task class data policy is
       ``local_only``, the data classification is ``personal``/``confidential`` (or an
       unrecognised label), PII was found, or PII detection failed (fail closed: treated as
       personal).  High-risk task classes require a human handoff.  Each effect is
       recorded in ``policy_actions``.
    3. Budgets applying to the request (global, its team, its application, its task class),
       in snapshot order, judged on spent + reserved (or exhausted when named in
       ``request.exhausted_budgets``): an exhausted budget with hard action ``block`` raises
       :class:`BudgetExceeded` (the first one); ``local_only`` makes the request local-only;
       a budget past its soft limit downgrades one tier (max tier = primary tier - 1, at
       least 1).  Every applicable budget is reported with its action.  (This is the
       snapshot's view; the exact check is the reservation admitted with the record.)
    4. Candidate chain = primary + fallbacks in order.  Under a downgrade, chain models
       within the max tier go first.  If no chain model is eligible and a downgrade or
       local-only is in effect, the registry's active models (local ones if local-only)
       within the max tier are appended, highest tier first, then cheapest; likewise the
       active local models when route models were rejected for an open circuit and the
       task class allows degrading (``local_when_down``).
    5. Each candidate is accepted or rejected with a reason, checked in this order: cloud
       model while local-only; tier above the downgrade max tier; status not active; open
       circuit; route
       conditions (primary only); prompt + output cap over the context window; p95 latency
       over the latency budget; estimated cost over ``max_cost_usd``.
    6. The first accepted candidate is selected (none: :class:`NoEligibleModel`).
       Strategy when the primary is selected: ``policy`` if a data local-only is in
       effect, else ``budget`` if a budget local-only is, else ``rule``.  Otherwise
       ``policy``/``budget`` if that restriction (local-only / tier downgrade) rejected a
       route model that would have served the request without it (it "changed the
       choice"), else ``fallback`` (the primary failed for an ordinary reason: status,
       route condition, context, latency, cost).  Later accepted candidates become the
       fallbacks, with the route's escalation triggers.  Confidence is the calibrated
       probability that the chosen model succeeds on the request: the snapshot's estimate
       for (model, task class) (routing/confidence.py), or the tier's prior without one.
    7. ``handoff_required`` for high-risk task classes; ``max_output_tokens`` is the
       selected model's output cap (min of task class default and model maximum).

    A route with strategy ``learned`` and an active learned router, with no local-only or
    downgrade in effect, is decided by :func:`_decide_learned` after step 5 instead. A route
    with strategy ``semantic`` (same conditions) first matches the prompt against its
    semantic routes (``routing.semantic``): when the best route's similarity clears its
    threshold and its model was accepted, that model is selected (strategy ``semantic``,
    the other accepted candidates as fallbacks); otherwise the rule decides and the reason
    says why no semantic route was taken.
    """
    index = snapshot.index
    if index is None:
        index = _index_of(snapshot)

    # 1. Task class and route.
    task_slug = request.task_class
    plan = index.plans.get(task_slug)
    if plan is None:
        raise UnknownTaskClass(index.valid_task_classes, task_slug)

    # 2. Policy gate.
    actions: list[str] = []
    cause = ""  # reason-sentence prefix for a data local-only
    local_reason = ""  # candidate rejection reason for cloud models
    pii = request.pii_found
    if pii:
        if len(pii) > 1:
            pii = tuple(dict.fromkeys(pii))
        joined = ", ".join(pii)
        actions.append(f"local_only: pii detected ({joined})")
        cause = f"Personal data detected ({joined})"
        local_reason = "personal data: cloud model not allowed"
    if request.pii_detection_failed:
        actions.append("local_only: detection failed, treated as personal")
        if not cause:
            cause = "PII detection failed (treated as personal data)"
            local_reason = "personal data: cloud model not allowed"
    classification = request.data_classification
    if classification is not None and classification not in enums.OPEN_CLASSIFICATIONS:
        if classification == "personal" or classification == "confidential":
            actions.append(f"local_only: data classified {classification}")
            if not cause:
                cause = f"Data classified {classification}"
                local_reason = f"{classification} data: cloud model not allowed"
        else:  # unrecognised label: fail closed
            actions.append(
                f"local_only: unknown data classification {classification!r}, treated as personal"
            )
            if not cause:
                cause = f"Unknown data classification {classification!r} (treated as personal)"
                local_reason = "personal data: cloud model not allowed"
    if plan.policy_local:
        actions.append("local_only: task class data policy local_only")
        if not cause:
            cause = f"Task class {task_slug} is local-only by data policy"
            local_reason = "task class data policy: cloud model not allowed"
    data_local = bool(cause)
    if plan.high_risk:
        actions.append("handoff: high-risk task class")

    # 3. Budgets.
    applicable = plan.base_budgets
    merged = False
    team = request.team
    if team is not None:
        extra = index.team_budgets.get(team)
        if extra:
            applicable = applicable + extra
            merged = True
    application = request.application
    if application is not None:
        extra = index.application_budgets.get(application)
        if extra:
            applicable = applicable + extra
            merged = True
    if merged:
        applicable = tuple(sorted(applicable, key=_budget_pos))
    exhausted = request.exhausted_budgets
    if exhausted:
        applicable = tuple(
            _budget_entry(e.pos, e.state, True) if e.state.id in exhausted else e
            for e in applicable
        )
    budget_local: _BudgetEntry | None = None
    downgrade: _BudgetEntry | None = None
    for budget_entry in applicable:
        action = budget_entry.action
        if action == "none":
            continue
        if action == "block":
            raise BudgetExceeded(budget_entry.view)
        actions.append(budget_entry.action_text)
        if action == "local_only":
            if budget_local is None:
                budget_local = budget_entry
        elif downgrade is None:
            downgrade = budget_entry
    if budget_local is not None and not local_reason:
        local_reason = f"budget {budget_local.state.name!r} local-only: cloud model not allowed"

    # 4./5. Candidate chain and rejections.
    if downgrade is not None:
        max_tier = plan.downgrade_max_tier
        chain = plan.downgraded_chain
    else:
        max_tier = _NO_TIER_LIMIT
        chain = plan.chain
    in_tokens = request.input_tokens
    prompt = request.context_tokens
    if in_tokens > prompt:
        prompt = in_tokens

    candidates: list[Candidate] = []
    accepted: list[_ChainEntry] = []
    primary_reason = ""
    outage = False  # a route model was rejected because its circuit is open
    for entry in chain:
        m = entry.model
        if m is None:
            reason = "model not in registry"
        else:
            outage = outage or m.circuit_open
            reason = _rejection(
                m,
                entry.cap,
                request,
                prompt,
                local_reason,
                max_tier,
                plan.conditions if entry.is_primary else None,
            )
        if reason:
            candidates.append(Candidate(entry.slug, entry.tier, False, reason))
            if entry.is_primary:
                primary_reason = reason
        else:
            candidates.append(
                Candidate(
                    entry.slug, entry.tier, True, "eligible fallback" if accepted else "selected"
                )
            )
            accepted.append(entry)

    # Registry models appended when the chain has nothing eligible under a restriction.
    from_registry = False
    degraded = not accepted and outage and plan.task.local_when_down and not local_reason
    if not accepted and (local_reason or downgrade is not None or degraded):
        from_registry = True
        task = plan.task
        for m in index.local_ranked if local_reason or degraded else index.active_ranked:
            if m.tier > max_tier or m.slug in plan.chain_slugs:
                continue
            cap = min(task.default_output_cap, m.max_output_tokens)
            reason = _rejection(m, cap, request, prompt, local_reason, max_tier, None)
            if reason:
                candidates.append(Candidate(m.slug, m.tier, False, reason))
            else:
                candidates.append(
                    Candidate(m.slug, m.tier, True, "eligible fallback" if accepted else "selected")
                )
                accepted.append(
                    _ChainEntry(m.slug, m, m.tier, cap, False, FallbackOption(m, plan.triggers))
                )

    # 6. Selection and strategy.
    if not accepted:
        raise NoEligibleModel(tuple(candidates), task_slug)
    learned = plan.learned
    if learned is not None and not local_reason and downgrade is None:
        views = tuple([e.view for e in applicable])
        return _decide_learned(
            request, snapshot, plan, learned, accepted, candidates, actions, views, pii
        )
    semantic_note = ""
    semantic = plan.semantic
    if semantic is not None and not local_reason and downgrade is None:
        views = tuple([e.view for e in applicable])
        match = semantic.match(request.prompt)
        target = _semantic_entry(match, accepted)
        if match is not None and target is not None:
            return _decide_semantic(
                snapshot, plan, match, target, accepted, candidates, actions, views, pii
            )
        semantic_note = _semantic_miss(match, accepted)
    chosen = accepted[0]
    model = chosen.model
    assert model is not None  # accepted entries always carry a model
    slug = model.slug
    strategy: Strategy
    # `displaced`: the route model that would have served the request without the
    # policy/budget restrictions (the restriction "changed the choice").
    displaced: ModelInfo | None = None
    kind = _KIND_NONE
    if chosen.is_primary:
        if data_local:
            strategy = "policy"
        elif budget_local is not None:
            strategy = "budget"
        else:
            strategy = "rule"
    else:
        if local_reason or downgrade is not None:
            for entry in plan.chain:
                m = entry.model
                if entry is chosen:
                    break
                if m is None:
                    continue
                if local_reason and m.locality != "local":
                    restriction = _KIND_LOCAL
                elif m.tier > max_tier:
                    restriction = _KIND_TIER
                else:
                    continue  # rejected for an ordinary reason
                conditions = plan.conditions if entry.is_primary else None
                if not _rejection(m, entry.cap, request, prompt, "", _NO_TIER_LIMIT, conditions):
                    displaced = m
                    kind = restriction
                    break
            if displaced is None and from_registry:
                kind = _KIND_LOCAL if local_reason else _KIND_TIER
        if kind == _KIND_LOCAL:
            strategy = "policy" if data_local else "budget"
        elif kind == _KIND_TIER:
            strategy = "budget"
        else:
            strategy = "fallback"

    confidence = plan.quality.get(slug)
    if confidence is None:
        confidence = DEFAULT_CONFIDENCE_BY_TIER.get(model.tier, 0.7)
    if confidence > 1.0:
        confidence = 1.0
    elif confidence < 0.0:
        confidence = 0.0

    if strategy == "rule":
        reason = f"Routed {task_slug} to {slug} by routing table v{snapshot.version} rule."
        if semantic_note:
            reason = f"{semantic_note} {reason}"
    elif strategy == "fallback":
        reason = f"Primary {plan.primary_slug} rejected ({primary_reason}): fell back to {slug}."
    elif kind == _KIND_TIER and downgrade is not None:
        b = downgrade.state
        prefix = (
            f"{_SCOPE_LABEL.get(b.scope, b.scope)} budget {b.name!r} above its"
            f" {b.soft_limit_pct:g}% soft limit"
        )
        if displaced is not None:
            reason = (
                f"{prefix}: downgraded from tier {displaced.tier} to tier {model.tier} ({slug})."
            )
        else:
            reason = f"{prefix}: no route model eligible within tier {max_tier}, using {slug}."
    else:
        if strategy == "policy":
            prefix = cause
        else:
            assert budget_local is not None
            b = budget_local.state
            prefix = f"{_SCOPE_LABEL.get(b.scope, b.scope)} budget {b.name!r} exhausted"
        if chosen.is_primary:
            reason = f"{prefix}: kept on local model {slug}."
        elif displaced is not None:
            reason = f"{prefix}: routed to local model {slug} instead of {displaced.slug}."
        else:
            reason = f"{prefix}: no route model eligible, using local model {slug}."

    fallbacks: tuple[FallbackOption, ...] = ()
    if len(accepted) > 1:
        fallbacks = tuple(e.fallback for e in accepted[1:] if e.fallback is not None)

    # 7. Handoff and output cap.
    return Decision(
        model=model,
        strategy=strategy,
        reason=reason,
        confidence=confidence,
        fallbacks=fallbacks,
        max_output_tokens=chosen.cap,
        handoff_required=plan.high_risk,
        pii_types_found=pii,
        policy_actions=tuple(actions),
        budgets=tuple([e.view for e in applicable]),
        candidates=tuple(candidates),
        routing_table_version=snapshot.version,
        local_only=bool(local_reason),
    )


def _entry_cost(entry: _ChainEntry, input_tokens: int) -> float:
    m = entry.model
    return estimated_cost_usd(m, input_tokens, entry.cap) if m is not None else 0.0


def _decide_learned(
    request: DecisionRequest,
    snapshot: Snapshot,
    plan: _Plan,
    learned: LearnedRouterInfo,
    accepted: list[_ChainEntry],
    candidates: list[Candidate],
    actions: list[str],
    budgets: tuple[BudgetView, ...],
    pii: tuple[str, ...],
) -> Decision:
    """Learned routing (no policy or budget restriction in effect): among the route's
    eligible models, the one the router's rule picks (``routing.learned.learned_choice``:
    the cheapest predicted to succeed, or to lose at most the threshold against the best);
    when none qualifies, the strongest (highest tier, then dearest). Fallbacks are the
    dearer eligible models, cheapest first. Confidence is the chosen model's predicted
    success (its calibrated class estimate when the router has no model for it)."""
    features = request_features(
        learned.spec,
        request.prompt,
        template=request.prompt_template,
        metadata=request.metadata,
    )
    predicted = predict_success(learned, features)
    tokens = request.input_tokens
    ranked = sorted(accepted, key=lambda e: (_entry_cost(e, tokens), e.tier, e.slug))
    threshold = learned.threshold
    pick = learned_choice(learned, predicted, [e.slug for e in ranked])
    chosen = next((e for e in ranked if e.slug == pick), None)
    cleared = chosen is not None
    if chosen is None:
        chosen = max(ranked, key=lambda e: (e.tier, _entry_cost(e, tokens)))
    model = chosen.model
    assert model is not None
    slug = model.slug
    p_chosen = predicted.get(slug)
    if p_chosen is None:
        p_chosen = plan.quality.get(slug, DEFAULT_CONFIDENCE_BY_TIER.get(model.tier, 0.7))
    cost = _entry_cost(chosen, tokens)
    fallbacks = tuple(
        e.fallback
        for e in ranked
        if e is not chosen and e.fallback is not None and _entry_cost(e, tokens) >= cost
    )
    by_slug = {e.slug: e for e in accepted}
    path: list[Candidate] = []
    for c in candidates:
        if not c.accepted or c.model not in by_slug:
            path.append(c)
            continue
        p = predicted.get(c.model)
        shown = f"predicted success {p:.2f}" if p is not None else "no learned model"
        if c.model == slug:
            reason = f"selected ({shown}, threshold {threshold:.2f})"
        else:
            reason = f"eligible fallback ({shown})"
        path.append(Candidate(c.model, c.tier, True, reason))
    if cleared and learned.rule == "gain":
        reason = (
            f"Learned router v{learned.version} for {plan.task.slug}: {slug} is the cheapest"
            f" eligible model predicted within {threshold:.2f} of the best ({p_chosen:.2f})."
        )
    elif cleared:
        reason = (
            f"Learned router v{learned.version} for {plan.task.slug}: {slug} is the cheapest"
            f" eligible model predicted to succeed ({p_chosen:.2f} >= {threshold:.2f})."
        )
    else:
        reason = (
            f"Learned router v{learned.version} for {plan.task.slug}: no cheaper model"
            f" predicted to clear {threshold:.2f}; routed to the strongest, {slug}."
        )
    confidence = min(1.0, max(0.0, float(p_chosen)))
    return Decision(
        model=model,
        strategy="learned",
        reason=reason,
        confidence=confidence,
        fallbacks=fallbacks,
        max_output_tokens=chosen.cap,
        handoff_required=plan.high_risk,
        pii_types_found=pii,
        policy_actions=tuple(actions),
        budgets=budgets,
        candidates=tuple(path),
        routing_table_version=snapshot.version,
        local_only=False,
    )


def _semantic_entry(match: SemanticMatch | None, accepted: list[_ChainEntry]) -> _ChainEntry | None:
    """The accepted candidate the matched semantic route sends to, if it matched."""
    if match is None or not match.matched:
        return None
    return next((e for e in accepted if e.slug == match.route.model), None)


def _semantic_miss(match: SemanticMatch | None, accepted: list[_ChainEntry]) -> str:
    if match is None:
        return "No prompt to match semantic routes against."
    name, score, threshold = match.route.name, match.score, match.route.threshold
    if not match.matched:
        return f"No semantic route matched (best {name!r} {score:.2f} < {threshold:.2f})."
    return (
        f"Semantic route {name!r} matched ({score:.2f}) but its model"
        f" {match.route.model} is not eligible."
    )


def _decide_semantic(
    snapshot: Snapshot,
    plan: _Plan,
    match: SemanticMatch,
    chosen: _ChainEntry,
    accepted: list[_ChainEntry],
    candidates: list[Candidate],
    actions: list[str],
    budgets: tuple[BudgetView, ...],
    pii: tuple[str, ...],
) -> Decision:
    """The matched semantic route's model; the other accepted candidates (chain order) are
    its fallbacks; confidence is the model's calibrated estimate on the class."""
    model = chosen.model
    assert model is not None
    slug = model.slug
    path: list[Candidate] = []
    for c in candidates:
        if c.accepted and c.model == slug:
            reason = f"selected (semantic route {match.route.name!r}, similarity {match.score:.2f})"
            path.append(Candidate(c.model, c.tier, True, reason))
        elif c.accepted:
            path.append(Candidate(c.model, c.tier, True, "eligible fallback"))
        else:
            path.append(c)
    scores = ", ".join(f"{name} {score:.2f}" for name, score in match.scores)
    confidence = plan.quality.get(slug)
    if confidence is None:
        confidence = DEFAULT_CONFIDENCE_BY_TIER.get(model.tier, 0.7)
    return Decision(
        model=model,
        strategy="semantic",
        reason=(
            f"Semantic route {match.route.name!r} of {plan.task.slug} matched the prompt"
            f" (similarity {match.score:.2f} >= {match.route.threshold:.2f}; routes: {scores}):"
            f" routed to {slug}."
        ),
        confidence=min(1.0, max(0.0, confidence)),
        fallbacks=tuple(e.fallback for e in accepted if e is not chosen and e.fallback is not None),
        max_output_tokens=chosen.cap,
        handoff_required=plan.high_risk,
        pii_types_found=pii,
        policy_actions=tuple(actions),
        budgets=budgets,
        candidates=tuple(path),
        routing_table_version=snapshot.version,
        local_only=False,
    )
