from __future__ import annotations

from django.contrib import admin

from routing.models import SemanticRoute


@admin.register(SemanticRoute)
class SemanticRouteAdmin(admin.ModelAdmin[SemanticRoute]):
    list_display = ["task_class", "name", "model", "threshold", "is_active", "updated_at"]
    list_filter = ["task_class", "is_active"]
