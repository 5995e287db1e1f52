from __future__ import annotations

from django.contrib import admin

from routing.models import LlmRouter, SemanticRoute


@admin.register(SemanticRoute)
class SemanticRouteAdmin(admin.ModelAdmin[SemanticRoute]):
    list_display = ["task_class", "name", "model", "threshold", "is_active", "updated_at"]
    list_filter = ["task_class", "is_active"]


@admin.register(LlmRouter)
class LlmRouterAdmin(admin.ModelAdmin[LlmRouter]):
    list_display = ["task_class", "router_model", "timeout_ms", "enabled", "updated_at"]
