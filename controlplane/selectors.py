"""Reads from the registry."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from controlplane.models import (
    ApiKey,
    AuditLog,
    Budget,
    BudgetSpend,
    ModelEndpoint,
    ModelPrice,
    Route,
    RoutingTableVersion,
    TaskClass,
    VersionStatus,
)
from routing.route_diff import RouteChange, RouteSpec, conditions_text, routes_diff

# last_used_at is written at most this often per key, to keep authentication cheap.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def api_key_from_secret(secret: str, *, now: datetime | None = None) -> ApiKey | None:
    """The usable key for ``secret``, or None (unknown, revoked or expired)."""
    if not secret or len(secret) > 200:
        return None
    key = (
        ApiKey.objects.select_related("application", "application__team")
        .filter(secret_hash=ApiKey.hash_secret(secret))
        .first()
    )
    now = now or timezone.now()
    if key is None or not key.is_usable(now):
        return None
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key


def routing_version_active() -> RoutingTableVersion | None:
    return RoutingTableVersion.objects.filter(status=VersionStatus.ACTIVE).first()


def routing_version_list() -> QuerySet[RoutingTableVersion]:
    return RoutingTableVersion.objects.select_related("created_by", "activated_by").order_by(
        "-number"
    )


def routing_version_routes(version: RoutingTableVersion) -> QuerySet[Route]:
    return version.routes.select_related("primary", "task_class").order_by("task_class__slug")


def model_endpoint_list() -> QuerySet[ModelEndpoint]:
    return ModelEndpoint.objects.prefetch_related(
        Prefetch("prices", queryset=ModelPrice.objects.order_by("-effective_from"))
    ).order_by("tier", "slug")


def model_price_at(model: ModelEndpoint, when: datetime) -> ModelPrice | None:
    return model.price_at(when)


def budget_list_with_spend(*, now: datetime | None = None) -> list[Budget]:
    """Every budget with ``spent_usd`` and ``reserved_usd`` of its current period set."""
    now = now or timezone.now()
    budgets = list(Budget.objects.select_related("team", "application", "task_class"))
    starts = {b.pk: b.period_start(now) for b in budgets}
    spends = {
        (s.budget_id, s.period_start): s
        for s in BudgetSpend.objects.filter(
            budget_id__in=list(starts), period_start__in=set(starts.values())
        )
    }
    for b in budgets:
        spend = spends.get((b.pk, starts[b.pk]))
        b.spent_usd = spend.spent_usd if spend else 0  # type: ignore[attr-defined]
        b.reserved_usd = spend.reserved_usd if spend else 0  # type: ignore[attr-defined]
    return budgets


def task_class_list() -> QuerySet[TaskClass]:
    return TaskClass.objects.order_by("slug")


def audit_log_recent(limit: int = 50) -> QuerySet[AuditLog]:
    return AuditLog.objects.select_related("actor").order_by("-at", "-id")[:limit]


# --- routing tables as diffs ---------------------------------------------------------------


def route_spec(route: Route) -> RouteSpec:
    return RouteSpec(
        primary=route.primary.slug,
        fallbacks=tuple(route.fallbacks),
        triggers=tuple(route.escalation_triggers()),
        conditions=conditions_text(
            max_context_tokens=route.max_context_tokens,
            max_latency_budget_ms=route.max_latency_budget_ms,
            data_classifications=route.data_classifications,
            teams=route.teams,
            output_cap=route.output_cap,
        ),
        strategy=route.strategy,
    )


def routing_version_specs(version: RoutingTableVersion) -> dict[str, RouteSpec]:
    return {r.task_class.slug: route_spec(r) for r in routing_version_routes(version)}


def routing_versions_diff(
    before: RoutingTableVersion, after: RoutingTableVersion
) -> list[RouteChange]:
    """Route by route, what changes from ``before`` to ``after`` (two queries)."""
    return routes_diff(routing_version_specs(before), routing_version_specs(after))
