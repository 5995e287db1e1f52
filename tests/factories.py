"""Test data builders (plain functions: short, typed, and they go through the services)."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Group, User
from django.utils import timezone

from controlplane import services
from controlplane.models import (
    ModelEndpoint,
    RoutingTableVersion,
    TaskClass,
)

_seq = itertools.count(1)


def model_create(**overrides: Any) -> ModelEndpoint:
    n = next(_seq)
    fields: dict[str, Any] = {
        "slug": f"model-{n}",
        "provider": "test",
        "base_url": "http://127.0.0.1:8100/v1",
        "provider_model": f"provider-model-{n}",
        "tier": 1,
        "locality": "local",
        "context_window": 8192,
        "max_output_tokens": 2048,
        "input_usd_per_mtok": "0.10",
        "output_usd_per_mtok": "0.20",
        "price_effective_from": timezone.now() - timezone.timedelta(days=365),
    }
    fields.update(overrides)
    return services.model_endpoint_create(**fields)


def task_class_create(**overrides: Any) -> TaskClass:
    n = next(_seq)
    fields: dict[str, Any] = {
        "slug": f"task-{n}",
        "name": f"Task {n}",
        "default_output_cap": 256,
        "quality_target": Decimal("0.9"),
    }
    fields.update(overrides)
    return TaskClass.objects.create(**fields)


def routing_table_create(
    routes: dict[TaskClass, tuple[ModelEndpoint, list[str]]],
    *,
    activate: bool = True,
    strategies: dict[str, str] | None = None,
) -> RoutingTableVersion:
    """A new routing-table version with ``routes``; ``strategies``: task class slug → route
    strategy (routing.enums.RouteStrategy; default rule)."""
    version = services.routing_version_draft_create(based_on=None)
    version.routes.all().delete()
    for task_class, (primary, fallbacks) in routes.items():
        services.route_set(
            version=version,
            task_class=task_class,
            primary=primary,
            fallbacks=fallbacks,
            strategy=(strategies or {}).get(task_class.slug, "rule"),
        )
    if activate:
        services.routing_version_activate(version=version)
    return version


def user_create(role: str | None, username: str | None = None) -> User:
    user = User.objects.create_user(
        username=username or f"user-{next(_seq)}", password="test-password-123"
    )
    if role:
        # get_or_create: a transactional test's flush removes the groups the roles migration made
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        if role in {"Operator", "Admin"}:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
    return user


# --- API calls as a service makes them --------------------------------------------------


def decision_post(client: Any, secret: str, body: Any, **extra: Any) -> Any:
    """POST /api/v1/decisions with a bearer key (a dict is sent as JSON, str/bytes as is)."""
    return client.post(
        "/api/v1/decisions",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
        **extra,
    )


def outcome_post(
    client: Any,
    secret: str,
    decision_id: str,
    attempts: list[dict[str, Any]],
    status: str = "ok",
) -> Any:
    """POST /api/v1/decisions/{id}/outcome with a bearer key."""
    return client.post(
        f"/api/v1/decisions/{decision_id}/outcome",
        {"attempts": attempts, "final_status": status},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )


def team_budget_create(registry: dict[str, Any], spent: str, **fields: Any) -> Any:
    """A monthly $100 budget of the registry fixture's team, with ``spent`` USD already spent
    this period."""
    from controlplane.models import BudgetSpend

    budget = services.budget_create(
        name="team-a-monthly",
        scope="team",
        team=registry["team"],
        period="month",
        limit_usd=Decimal("100"),
        **fields,
    )
    BudgetSpend.objects.create(
        budget=budget, period_start=budget.period_start(timezone.now()), spent_usd=Decimal(spent)
    )
    return budget
