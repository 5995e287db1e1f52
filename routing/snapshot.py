"""The in-memory registry the decision API decides from.

The engine never touches the database. This module builds its ``Snapshot`` from the
registry and keeps it fresh cheaply:

A background thread per process does the refreshing, so no request ever waits for it
(with both intervals set to 0, as in tests, the request thread refreshes synchronously):

1. Every ``SWITCHYARD_SNAPSHOT_CHECK_S`` seconds, one query reads the registry generation
   (a sequence bumped after any registry change commits). If it moved, the whole snapshot
   is rebuilt: active routing table, models with current prices, task classes, budgets,
   and the API-key cache is cleared (so a revoked key stops working within that interval).
2. Every ``SWITCHYARD_BUDGET_REFRESH_S`` seconds the budget spends of the current periods
   and the observed model statistics are re-read (small queries) and the snapshot rebuilt.
3. Otherwise a request reads the snapshot from memory: no query at all.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class TaskClassExtras:
    """What the API needs beside the engine's view of a task class."""

    prompt_retention_days: int


@dataclass(frozen=True, slots=True)
class _Static:
    """Everything that only changes with the registry generation."""

    version: int
    models: dict[str, ModelInfo]
    task_classes: dict[str, TaskClassInfo]
    routes: dict[str, RouteInfo]
    budgets: tuple[Budget, ...]
    extras: dict[str, TaskClassExtras]


def _models_load(now: datetime) -> dict[str, ModelInfo]:
    prices: dict[int, ModelPrice] = {}
    for price in ModelPrice.objects.filter(effective_from__lte=now).order_by("effective_from"):
        prices[price.model_id] = price  # the latest effective price wins
    models = {}
    for m in ModelEndpoint.objects.all():
        current = prices.get(m.pk)
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
            input_usd_per_mtok=float(current.input_usd_per_mtok) if current else 0.0,
            output_usd_per_mtok=float(current.output_usd_per_mtok) if current else 0.0,
        )
    return models


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
        )
        extras[tc.slug] = TaskClassExtras(prompt_retention_days=tc.prompt_retention_days)
    budgets = tuple(
        Budget.objects.filter(is_active=True).select_related("team", "application", "task_class")
    )
    return _Static(
        version=active.number if active else 0,
        models=_models_load(now),
        task_classes=task_classes,
        routes=routes,
        budgets=budgets,
        extras=extras,
    )


def _budget_states(budgets: tuple[Budget, ...], now: datetime) -> tuple[BudgetState, ...]:
    if not budgets:
        return ()
    wanted = Q()
    for b in budgets:
        wanted |= Q(budget_id=b.pk, period_start=b.period_start(now))
    spent = {s.budget_id: float(s.spent_usd) for s in BudgetSpend.objects.filter(wanted)}
    return tuple(
        BudgetState(
            id=b.pk,
            name=b.name,
            scope=b.scope,
            scope_key=b.scope_key,
            period=b.period,
            limit_usd=float(b.limit_usd),
            spent_usd=spent.get(b.pk, 0.0),
            soft_limit_pct=float(b.soft_limit_pct),
            hard_action=b.hard_action,
        )
        for b in budgets
    )


def _model_stats() -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Observed p95 latency per model and success rate per (model, task class)."""
    try:
        from telemetry.selectors import model_stats_recent
    except ImportError:
        return {}, {}
    stats: dict[str, Any] = model_stats_recent()
    p95 = {m: float(v["p95_ms"]) for m, v in stats.get("latency", {}).items()}
    quality = {(m, t): float(rate) for (m, t), rate in stats.get("success", {}).items()}
    return p95, quality


def registry_snapshot_build(*, now: datetime | None = None) -> Snapshot:
    """A fresh engine snapshot straight from the database (no caching)."""
    now = now or timezone.now()
    static = _static_load(now)
    return _snapshot_from(static, _budget_states(static.budgets, now), {}, {})


def _snapshot_from(
    static: _Static,
    budgets: tuple[BudgetState, ...],
    p95: dict[str, float],
    quality: dict[tuple[str, str], float],
) -> Snapshot:
    models = static.models
    if p95:
        from dataclasses import replace

        models = {
            slug: replace(m, p95_latency_ms=p95[slug]) if slug in p95 else m
            for slug, m in models.items()
        }
    return snapshot_build(
        version=static.version,
        models=models,
        task_classes=static.task_classes,
        routes=static.routes,
        budgets=budgets,
        quality=quality,
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
        self._keys: dict[str, KeyInfo | None] = {}
        self._refresher: threading.Thread | None = None
        self._inputs: tuple[Any, ...] | None = None

    def invalidate(self) -> None:
        with self._lock:
            self._generation = None
            self._checked_at = 0.0

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

        while True:
            time.sleep(check_s)
            try:
                self._refresh_now(force=False)
            except Exception:  # keep serving the last good snapshot; retry next tick
                logger.warning("registry refresh failed", exc_info=True)
                connection.close()

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
                self._keys = {}
                self._generation = generation
            if reload_static or now_mono - self._budgets_at >= budget_s:
                assert self._static is not None
                p95, quality = _model_stats()
                budgets = _budget_states(self._static.budgets, now)
                inputs = (budgets, p95, quality)
                # Rebuild only when something moved: a rebuild holds the GIL for a moment.
                if reload_static or inputs != self._inputs:
                    self._snapshot = _snapshot_from(self._static, budgets, p95, quality)
                    self._inputs = inputs
                self._budgets_at = now_mono
            self._checked_at = now_mono

    def snapshot(self) -> Snapshot:
        self._refresh()
        assert self._snapshot is not None
        return self._snapshot

    def extras(self, task_class: str) -> TaskClassExtras | None:
        self._refresh()
        assert self._static is not None
        return self._static.extras.get(task_class)

    def key_for_secret(self, secret: str) -> KeyInfo | None:
        """The usable key for a secret; cached until the registry generation moves."""
        self._refresh()
        digest = ApiKey.hash_secret(secret)
        if digest in self._keys:
            info = self._keys[digest]
        else:
            key = (
                ApiKey.objects.select_related("application", "application__team")
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
                )
                if (
                    key.last_used_at is None
                    or (timezone.now() - key.last_used_at).total_seconds() > 60
                ):
                    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
            if len(self._keys) > 10_000:
                self._keys.clear()  # bound memory against floods of random keys
            self._keys[digest] = info
        if info is not None and info.expires_at is not None and info.expires_at <= timezone.now():
            return None
        return info


registry_cache = RegistryCache()
