"""The in-memory registry the decision API decides from.

The engine never touches the database. This module builds its ``Snapshot`` from the
registry and keeps it fresh cheaply:

A background thread per process does the refreshing, so no request ever waits for it
(with both intervals set to 0, as in tests, the request thread refreshes synchronously):

1. Every ``SWITCHYARD_SNAPSHOT_CHECK_S`` seconds, one query reads the registry generation
   (a sequence bumped after any registry change commits). If it moved, the whole snapshot
   is rebuilt: active routing table, models with every dated price, task classes, budgets,
   and the API-key cache is cleared (so a revoked key stops working within that interval:
   see "API keys" below).
   Models carry the price in force now (routing.pricing.price_in_force); the cache knows
   when the next dated price takes effect and re-prices the snapshot at that instant (the
   first request after it does so before deciding), with no registry change.
2. Every ``SWITCHYARD_BUDGET_REFRESH_S`` seconds the budget spends and reservations of the
   current periods and the observed model statistics are re-read (small queries) and the
   snapshot rebuilt; so are the graded success counts behind ``confidence``
   (routing/confidence.py). (The snapshot's budget view is a pre-check; the exact check is the
   reservation admitted with the decision record, telemetry/budgets.py.)
3. Otherwise a request reads the snapshot from memory: no query at all.

API keys are cached per process by secret hash (``key_for_secret``). A lookup that misses
reads the key from the database outside any lock, so a revocation can commit, and this
process clear its cache, between that read and the insert; the stale row would then be
cached until the *next* registry change. So every clear bumps a key epoch under
``_keys_lock``, and a lookup inserts its row only if the epoch it noted before the read
has not moved. Independently, no cached entry is trusted for longer than
``SWITCHYARD_KEY_CACHE_MAX_S`` (it is re-read), which bounds a key's life in the cache even
if a generation bump were lost (the bump runs after the revoking transaction commits).
Guarantee: once a revocation has committed, every key lookup that starts after each
process's next generation check (``SWITCHYARD_SNAPSHOT_CHECK_S``, plus one refresh) refuses
the key, in every process; requests already past the key check are unaffected.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from controlplane.generation import generation_current
from controlplane.models import (
    ApiKey,
    Budget,
    BudgetSpend,
    ModelEndpoint,
    ModelPrice,
    Route,
    RoutingTableVersion,
    TaskClass,
    VersionStatus,
)
from routing.confidence import SuccessCount, success_probabilities
from routing.engine import (
    BudgetState,
    EscalationTriggers,
    ModelInfo,
    RouteConditions,
    RouteInfo,
    Snapshot,
    TaskClassInfo,
    snapshot_build,
)
from routing.enums import RouteStrategy
from routing.learned import LearnedRouterInfo
from routing.llm_router import LlmRouterInfo
from routing.models import LlmRouter, SemanticRoute
from routing.pricing import next_price_change, price_in_force, price_schedule
from routing.semantic import SemanticRoute as SemanticRouteInfo
from routing.semantic import SemanticRouterInfo, backend_factory, semantic_router_build

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: int
    prefix: str
    application_id: int
    application: str
    team: str
    scopes: frozenset[str]
    expires_at: datetime | None
    # Other teams the application may name in a request (Application.acts_for_teams).
    acts_for: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class TaskClassExtras:
    """What the API needs beside the engine's view of a task class."""

    prompt_retention_days: int
    answer_cache_ttl_s: int = 0  # the gateway's answer cache (routing.answer_cache); 0 = off
    answer_cache_personal_data: bool = False
    condense_above_tokens: int = 0  # context condensing (routing.condense); 0 = off


@dataclass(frozen=True, slots=True)
class _Static:
    """Everything that only changes with the registry generation."""

    version: int
    models: dict[str, ModelInfo]  # priced as of the build (see ``prices_until``)
    task_classes: dict[str, TaskClassInfo]
    routes: dict[str, RouteInfo]
    budgets: tuple[Budget, ...]
    extras: dict[str, TaskClassExtras]
    schedules: dict[str, list[ModelPrice]]  # every dated price per model slug, oldest first
    prices_until: datetime | None  # when the next dated price takes effect
    learned: dict[str, LearnedRouterInfo] = field(default_factory=dict)  # active, by class
    semantic: dict[str, SemanticRouterInfo] = field(default_factory=dict)  # by class
    llm_routers: dict[str, LlmRouterInfo] = field(default_factory=dict)  # enabled, by class


def _models_priced(
    models: dict[str, ModelInfo], schedules: dict[str, list[ModelPrice]], now: datetime
) -> dict[str, ModelInfo]:
    out = {}
    for slug, m in models.items():
        price = price_in_force(schedules.get(slug, []), now)
        out[slug] = replace(
            m,
            input_usd_per_mtok=float(price.input_usd_per_mtok) if price else 0.0,
            output_usd_per_mtok=float(price.output_usd_per_mtok) if price else 0.0,
        )
    return out


def _static_repriced(static: _Static, now: datetime) -> _Static:
    """The same registry with the prices in force at ``now``."""
    return replace(
        static,
        models=_models_priced(static.models, static.schedules, now),
        prices_until=next_price_change(static.schedules.values(), now),
    )


def _models_load() -> tuple[dict[str, ModelInfo], dict[str, list[ModelPrice]]]:
    """Every model (unpriced) and its whole price schedule, past and future."""
    by_model: dict[int, list[ModelPrice]] = {}
    for price in ModelPrice.objects.all():
        by_model.setdefault(price.model_id, []).append(price)
    models = {}
    schedules = {}
    for m in ModelEndpoint.objects.all():
        schedules[m.slug] = price_schedule(by_model.get(m.pk, []))
        models[m.slug] = ModelInfo(
            slug=m.slug,
            provider=m.provider,
            base_url=m.base_url,
            provider_model=m.provider_model,
            version=m.version,
            tier=m.tier,
            locality=m.locality,
            context_window=m.context_window,
            max_output_tokens=m.max_output_tokens,
            status=m.status,
            input_usd_per_mtok=0.0,
            output_usd_per_mtok=0.0,
        )
    return models, schedules


def route_info(route: Route) -> RouteInfo:
    threshold = route.escalate_confidence_below
    return RouteInfo(
        task_class=route.task_class.slug,
        primary=route.primary.slug,
        fallbacks=tuple(route.fallbacks),
        escalation=EscalationTriggers(
            confidence_below=float(threshold) if threshold is not None else None,
            on_invalid_output=route.escalate_on_invalid_output,
            on_error=route.escalate_on_error,
        ),
        conditions=RouteConditions(
            max_context_tokens=route.max_context_tokens,
            max_latency_budget_ms=route.max_latency_budget_ms,
            data_classifications=tuple(route.data_classifications),
            teams=tuple(route.teams),
        ),
        strategy=route.strategy,
    )


def _static_load(now: datetime) -> _Static:
    active = RoutingTableVersion.objects.filter(status=VersionStatus.ACTIVE).first()
    routes: dict[str, RouteInfo] = {}
    if active is not None:
        for route in active.routes.select_related("task_class", "primary"):
            if route.task_class.is_active:
                routes[route.task_class.slug] = route_info(route)
    task_classes = {}
    extras = {}
    for tc in TaskClass.objects.filter(is_active=True):
        task_classes[tc.slug] = TaskClassInfo(
            slug=tc.slug,
            risk=tc.risk,
            data_policy=tc.data_policy,
            default_output_cap=tc.default_output_cap,
            latency_class=tc.latency_class,
            quality_target=float(tc.quality_target),
            local_when_down=tc.local_when_down,
        )
        extras[tc.slug] = TaskClassExtras(
            prompt_retention_days=tc.prompt_retention_days,
            answer_cache_ttl_s=tc.answer_cache_ttl_s,
            answer_cache_personal_data=tc.answer_cache_personal_data,
            condense_above_tokens=tc.condense_above_tokens,
        )
    budgets = tuple(
        Budget.objects.filter(is_active=True).select_related("team", "application", "task_class")
    )
    models, schedules = _models_load()
    learned = _learned_load()
    semantic = _semantic_load(routes)
    llm_routers = _llm_routers_load(routes)
    static = _Static(
        version=active.number if active else 0,
        models=models,
        task_classes=task_classes,
        routes=routes,
        budgets=budgets,
        extras=extras,
        schedules=schedules,
        prices_until=None,
        learned=learned,
        semantic=semantic,
        llm_routers=llm_routers,
    )
    return _static_repriced(static, now)


def _learned_load() -> dict[str, LearnedRouterInfo]:
    """The active learned router of each class (used where the route's strategy is
    ``learned``). A router whose stored parameters do not check out is skipped (logged):
    its class is routed by its rule."""
    try:
        from evaluation.selectors import learned_routers_active
    except ImportError:
        return {}
    return learned_routers_active()


def _semantic_load(routes: dict[str, RouteInfo]) -> dict[str, SemanticRouterInfo]:
    """The semantic routers of the classes whose route's strategy is ``semantic``, their
    examples embedded by the configured backend (``SWITCHYARD_SEMANTIC_BACKEND``). A class
    whose routes do not build (logged) is routed by its rule."""
    wanted = [slug for slug, r in routes.items() if r.strategy == RouteStrategy.SEMANTIC]
    if not wanted:
        return {}
    factory = backend_factory(settings.SWITCHYARD_SEMANTIC_BACKEND)
    by_class: dict[str, list[SemanticRouteInfo]] = {}
    rows = SemanticRoute.objects.filter(is_active=True, task_class__slug__in=wanted)
    for row in rows.select_related("task_class", "model").order_by("name"):
        by_class.setdefault(row.task_class.slug, []).append(
            SemanticRouteInfo(
                name=row.name,
                model=row.model.slug,
                threshold=row.threshold,
                utterances=tuple(row.utterances),
            )
        )
    out = {}
    for slug, semantic_routes in by_class.items():
        try:
            out[slug] = semantic_router_build(slug, semantic_routes, factory())
        except ValueError:
            logger.warning("semantic routes of %s do not build; skipped", slug, exc_info=True)
    return out


def _llm_routers_load(routes: dict[str, RouteInfo]) -> dict[str, LlmRouterInfo]:
    """The enabled LLM routers (routing.llm_router) of the classes whose route's strategy
    is ``llm``, by task class: an enabled router on a route with another strategy does
    not decide."""
    wanted = [slug for slug, r in routes.items() if r.strategy == RouteStrategy.LLM]
    if not wanted:
        return {}
    rows = LlmRouter.objects.filter(enabled=True, task_class__slug__in=wanted)
    return {
        r.task_class.slug: LlmRouterInfo(
            task_class=r.task_class.slug,
            router_model=r.router_model.slug,
            timeout_ms=r.timeout_ms,
            descriptions={str(k): str(v) for k, v in (r.descriptions or {}).items()},
        )
        for r in rows.select_related("task_class", "router_model")
    }


def _budget_states(budgets: tuple[Budget, ...], now: datetime) -> tuple[BudgetState, ...]:
    if not budgets:
        return ()
    wanted = Q()
    for b in budgets:
        wanted |= Q(budget_id=b.pk, period_start=b.period_start(now))
    spends = {
        s.budget_id: (float(s.spent_usd), float(s.reserved_usd))
        for s in BudgetSpend.objects.filter(wanted)
    }
    return tuple(
        BudgetState(
            id=b.pk,
            name=b.name,
            scope=b.scope,
            scope_key=b.scope_key,
            period=b.period,
            limit_usd=float(b.limit_usd),
            spent_usd=spends.get(b.pk, (0.0, 0.0))[0],
            soft_limit_pct=float(b.soft_limit_pct),
            hard_action=b.hard_action,
            reserved_usd=spends.get(b.pk, (0.0, 0.0))[1],
        )
        for b in budgets
    )


def _graded_counts() -> dict[tuple[str, str], SuccessCount]:
    try:
        from evaluation.selectors import graded_counts
    except ImportError:
        return {}
    return graded_counts()


def _confidences(
    static: _Static, counts: dict[tuple[str, str], SuccessCount]
) -> dict[tuple[str, str], float]:
    """Calibrated success probability per (model, task class) (routing/confidence.py)."""
    tiers = {slug: m.tier for slug, m in static.models.items()}
    return success_probabilities(counts, tiers, static.task_classes)


def _model_stats(static: _Static) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Observed p95 latency per model (rollups) and the calibrated success probability
    per (model, task class) (graded counts)."""
    try:
        from telemetry.selectors import model_stats_recent
    except ImportError:
        return {}, _confidences(static, _graded_counts())
    stats: dict[str, Any] = model_stats_recent()
    p95 = {m: float(v["p95_ms"]) for m, v in stats.get("latency", {}).items()}
    return p95, _confidences(static, _graded_counts())


def registry_snapshot_build(
    *,
    now: datetime | None = None,
    graded: dict[tuple[str, str], SuccessCount] | None = None,
) -> Snapshot:
    """A fresh engine snapshot straight from the database (no caching). Confidence comes
    from ``graded`` counts when given (the demo's simulation), else the stored ones."""
    now = now or timezone.now()
    static = _static_load(now)
    counts = _graded_counts() if graded is None else graded
    return _snapshot_from(
        static, _budget_states(static.budgets, now), {}, _confidences(static, counts)
    )


def _snapshot_from(
    static: _Static,
    budgets: tuple[BudgetState, ...],
    p95: dict[str, float],
    quality: dict[tuple[str, str], float],
    circuits_open: frozenset[str] = frozenset(),
) -> Snapshot:
    models = static.models
    if p95:
        models = {
            slug: replace(m, p95_latency_ms=p95[slug]) if slug in p95 else m
            for slug, m in models.items()
        }
    if circuits_open:
        models = {
            slug: replace(m, circuit_open=True) if slug in circuits_open else m
            for slug, m in models.items()
        }
    return snapshot_build(
        version=static.version,
        models=models,
        task_classes=static.task_classes,
        routes=static.routes,
        budgets=budgets,
        quality=quality,
        learned=static.learned,
        semantic=static.semantic,
    )


class RegistryCache:
    """Per-process cache of the snapshot and API keys, refreshed as described above."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._static: _Static | None = None
        self._snapshot: Snapshot | None = None
        self._checked_at = 0.0
        self._budgets_at = 0.0
        # Secret hash -> (key or None, time.monotonic() when read). Guarded by _keys_lock;
        # _keys_epoch counts the clears (an insert is refused if one happened meanwhile).
        self._keys: dict[str, tuple[KeyInfo | None, float]] = {}
        self._keys_lock = threading.Lock()
        self._keys_epoch = 0
        self._refresher: threading.Thread | None = None
        self._inputs: tuple[Any, ...] | None = None
        self._prices_until = float("inf")  # epoch seconds of the next dated price
        self._circuits_open: frozenset[str] = frozenset()  # routing/circuit_board.py
        self._circuits_until = float("inf")  # epoch seconds: the first of them turns half-open

    def generation_tracked(self) -> int | None:
        """The registry generation this snapshot follows when a background refresher keeps
        it (at most ``SWITCHYARD_SNAPSHOT_CHECK_S`` old), else None (ask the database)."""
        refresher = self._refresher
        if refresher is None or not refresher.is_alive():
            return None
        return self._generation

    def invalidate(self) -> None:
        with self._lock:
            self._generation = None
            self._checked_at = 0.0

    def circuits_set(self, open_models: frozenset[str], until: float = float("inf")) -> None:
        """Models whose circuit is open (routing/circuit_board.py): the engine routes around
        them until the set changes again; ``until``: when the first cool-down ends (the
        snapshot asks the board again then, as it re-prices at a dated price)."""
        with self._lock:
            self._circuits_until = until
            if open_models == self._circuits_open:
                return
            self._circuits_open = open_models
            if self._static is not None and self._snapshot is not None:
                budgets, p95, quality = self._inputs or ((), {}, {})
                self._snapshot = _snapshot_from(self._static, budgets, p95, quality, open_models)

    def _refresh(self) -> None:
        check_s = settings.SWITCHYARD_SNAPSHOT_CHECK_S
        if check_s > 0 and self._static is not None and self._generation is not None:
            self._ensure_refresher(check_s)
            return
        self._refresh_now(force=False)

    def _ensure_refresher(self, check_s: float) -> None:
        if self._refresher is not None and self._refresher.is_alive():
            return
        with self._lock:
            if self._refresher is None or not self._refresher.is_alive():
                self._refresher = threading.Thread(
                    target=self._refresh_loop,
                    args=(check_s,),
                    name="registry-refresher",
                    daemon=True,
                )
                self._refresher.start()

    def _refresh_loop(self, check_s: float) -> None:
        from django.db import connection

        from routing.circuit_board import board

        while True:
            time.sleep(check_s)
            try:
                self._refresh_now(force=False)
            except Exception:  # keep serving the last good snapshot; retry next tick
                logger.warning("registry refresh failed", exc_info=True)
                connection.close()
            try:
                board.sync()  # circuits opened or closed by other processes
            except Exception:
                logger.warning("circuit sync failed", exc_info=True)

    def _refresh_now(self, *, force: bool) -> None:
        now_mono = time.monotonic()
        check_s = settings.SWITCHYARD_SNAPSHOT_CHECK_S
        budget_s = settings.SWITCHYARD_BUDGET_REFRESH_S
        if not force and self._static is not None and now_mono - self._checked_at < check_s:
            return
        with self._lock:
            if self._static is not None and now_mono - self._checked_at < check_s:
                return
            generation = generation_current()
            now = timezone.now()
            reload_static = generation != self._generation or self._static is None
            if reload_static:
                self._static = _static_load(now)
                self._keys_clear()
                self._generation = generation
            assert self._static is not None
            reprice = self._reprice_due(now)
            if reprice and not reload_static:
                self._static = _static_repriced(self._static, now)
            until = self._static.prices_until
            self._prices_until = until.timestamp() if until is not None else float("inf")
            if reload_static or reprice or now_mono - self._budgets_at >= budget_s:
                assert self._static is not None
                p95, quality = _model_stats(self._static)
                budgets = _budget_states(self._static.budgets, now)
                inputs = (budgets, p95, quality)
                # Rebuild only when something moved: a rebuild holds the GIL for a moment.
                if reload_static or reprice or inputs != self._inputs:
                    self._snapshot = _snapshot_from(
                        self._static, budgets, p95, quality, self._circuits_open
                    )
                    self._inputs = inputs
                self._budgets_at = now_mono
            self._checked_at = now_mono

    def _reprice_due(self, now: datetime) -> bool:
        until = self._static.prices_until if self._static is not None else None
        return until is not None and now >= until

    def _reprice_now(self) -> None:
        """A dated price took effect: re-price before deciding (once, under the lock)."""
        with self._lock:
            now = timezone.now()
            if self._static is None or self._snapshot is None or not self._reprice_due(now):
                return
            self._static = _static_repriced(self._static, now)
            until = self._static.prices_until
            self._prices_until = until.timestamp() if until is not None else float("inf")
            budgets, p95, quality = self._inputs or ((), {}, {})
            self._snapshot = _snapshot_from(
                self._static, budgets, p95, quality, self._circuits_open
            )

    def snapshot(self) -> Snapshot:
        self._refresh()
        now = time.time()
        if now >= self._prices_until:
            self._reprice_now()
        if now >= self._circuits_until:
            from routing.circuit_board import board

            board.show()
        assert self._snapshot is not None
        return self._snapshot

    def schedules(self) -> dict[str, list[ModelPrice]]:
        """Every dated price per model slug, oldest first (routing.pricing)."""
        self._refresh()
        assert self._static is not None
        return self._static.schedules

    def llm_router(self, task_class: str) -> LlmRouterInfo | None:
        self._refresh()
        assert self._static is not None
        return self._static.llm_routers.get(task_class)

    def extras(self, task_class: str) -> TaskClassExtras | None:
        self._refresh()
        assert self._static is not None
        return self._static.extras.get(task_class)

    def _keys_clear(self) -> None:
        with self._keys_lock:
            self._keys = {}
            self._keys_epoch += 1

    def key_for_secret(self, secret: str) -> KeyInfo | None:
        """The usable key for a secret; cached until the registry generation moves (or for
        ``SWITCHYARD_KEY_CACHE_MAX_S`` at most)."""
        self._refresh()
        digest = ApiKey.hash_secret(secret)
        max_age = settings.SWITCHYARD_KEY_CACHE_MAX_S
        with self._keys_lock:
            cached = self._keys.get(digest)
            epoch = self._keys_epoch
        if cached is not None and time.monotonic() - cached[1] < max_age:
            info = cached[0]
        else:
            read_at = time.monotonic()
            key = (
                ApiKey.objects.select_related("application", "application__team")
                .prefetch_related("application__acts_for_teams")
                .filter(secret_hash=digest, revoked_at=None)
                .first()
            )
            info = None
            if key is not None:
                info = KeyInfo(
                    key_id=key.pk,
                    prefix=key.prefix,
                    application_id=key.application_id,
                    application=key.application.slug,
                    team=key.application.team.slug,
                    scopes=frozenset(key.scopes),
                    expires_at=key.expires_at,
                    acts_for=frozenset(t.slug for t in key.application.acts_for_teams.all()),
                )
                if (
                    key.last_used_at is None
                    or (timezone.now() - key.last_used_at).total_seconds() > 60
                ):
                    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
            with self._keys_lock:
                # Cache it only if no clear ran since before the read: the row may predate a
                # revocation (or a change of the key's application) that the clear was for.
                if self._keys_epoch == epoch:
                    if len(self._keys) > 10_000:
                        self._keys = {}  # bound memory against floods of random keys
                    self._keys[digest] = (info, read_at)
        if info is not None and info.expires_at is not None and info.expires_at <= timezone.now():
            return None
        return info


registry_cache = RegistryCache()
