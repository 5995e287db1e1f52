"""Django admin for Operators: every save goes through model validation and is audited."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from controlplane import services
from controlplane.models import (
    ApiKey,
    Application,
    AuditLog,
    Budget,
    ModelEndpoint,
    ModelPrice,
    Route,
    RoutingTableVersion,
    TaskClass,
    Team,
)


class ModelPriceInline(admin.TabularInline[ModelPrice, ModelEndpoint]):
    model = ModelPrice
    extra = 0

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # prices are dated: add a new one instead of editing history

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ModelEndpoint)
class ModelEndpointAdmin(admin.ModelAdmin[ModelEndpoint]):
    list_display = ["slug", "provider", "tier", "locality", "status", "context_window"]
    list_filter = ["tier", "locality", "status"]
    inlines = [ModelPriceInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["slug"] if obj else []  # routes refer to models by slug


@admin.register(TaskClass)
class TaskClassAdmin(admin.ModelAdmin[TaskClass]):
    list_display = ["slug", "risk", "data_policy", "default_output_cap", "quality_target"]
    list_filter = ["risk", "data_policy", "latency_class"]


class RouteInline(admin.StackedInline[Route, RoutingTableVersion]):
    model = Route
    extra = 0

    def _editable(self, obj: Any) -> bool:
        return obj is None or obj.is_editable

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._editable(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._editable(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._editable(obj) and super().has_delete_permission(request, obj)


@admin.register(RoutingTableVersion)
class RoutingTableVersionAdmin(admin.ModelAdmin[RoutingTableVersion]):
    list_display = ["number", "status", "created_at", "activated_at", "note"]
    readonly_fields = ["status", "activated_at", "activated_by", "created_at"]
    inlines = [RouteInline]
    actions = ["activate", "new_draft"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is not None and obj.is_editable

    @admin.action(description="Activate the selected draft")
    def activate(self, request: HttpRequest, queryset: QuerySet[RoutingTableVersion]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version.", messages.ERROR)
            return
        try:
            version = services.routing_version_activate(version=queryset.get(), user=request.user)
            self.message_user(request, f"v{version.number} is active.")
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), messages.ERROR)

    @admin.action(description="New draft copied from the selected version")
    def new_draft(self, request: HttpRequest, queryset: QuerySet[RoutingTableVersion]) -> None:
        for version in queryset:
            draft = services.routing_version_draft_create(based_on=version, user=request.user)
            self.message_user(request, f"Draft v{draft.number} created from v{version.number}.")


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin[Budget]):
    list_display = ["name", "scope", "period", "limit_usd", "soft_limit_pct", "hard_action"]


admin.site.register(Team)


@admin.register(Application)
class ApplicationAdmin(admin.ModelAdmin[Application]):
    """``acts for teams``: the other teams this application may name in a decision's
    ``team`` (their budgets, route conditions and charges); anything else is a 403."""

    list_display = ["slug", "name", "team"]
    filter_horizontal = ["acts_for_teams"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    list_display = ["prefix", "application", "scopes", "expires_at", "revoked_at", "last_used_at"]
    readonly_fields = ["prefix", "secret_hash", "last_used_at", "replaced_by", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are created on the API keys page, which shows the secret once


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin[AuditLog]):
    list_display = ["at", "actor_label", "action", "object_type", "object_repr"]
    list_filter = ["action", "object_type"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
