"""Django admin for evaluation: Operators edit graders, judge prompts and shadow candidates;
sweep schedules are django-celery-beat's periodic tasks (already in admin)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from evaluation.models import (
    GradedCount,
    GraderConfig,
    JudgePrompt,
    LearnedRouter,
    LearnedThresholdTarget,
    OutputCheckPolicy,
    PromptTemplate,
    Proposal,
    ShadowConfig,
    SweepRun,
    WebhookEndpoint,
)


@admin.register(GraderConfig)
class GraderConfigAdmin(admin.ModelAdmin[GraderConfig]):
    list_display = ["task_class", "kind", "judge_model", "judge_prompt", "updated_at"]
    list_filter = ["kind"]


@admin.register(JudgePrompt)
class JudgePromptAdmin(admin.ModelAdmin[JudgePrompt]):
    list_display = ["slug", "version", "created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # A stored judge prompt is versioned: change the wording by adding a new version.
        return ["slug", "version", "template"] if obj else []


@admin.register(PromptTemplate)
class PromptTemplateAdmin(admin.ModelAdmin[PromptTemplate]):
    list_display = ["slug", "version", "created_at"]


@admin.register(ShadowConfig)
class ShadowConfigAdmin(admin.ModelAdmin[ShadowConfig]):
    list_display = [
        "task_class",
        "candidate_model",
        "candidate_template",
        "sample_rate",
        "max_samples",
        "is_active",
    ]
    list_filter = ["is_active"]


@admin.register(SweepRun)
class SweepRunAdmin(admin.ModelAdmin[SweepRun]):
    list_display = ["pk", "kind", "task_class", "status", "created_at", "samples_done"]
    list_filter = ["kind", "status"]
    readonly_fields = [f.name for f in SweepRun._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Proposal)
class ProposalAdmin(admin.ModelAdmin[Proposal]):
    """Read-only: proposals change state only through the review flow (and its checks)."""

    list_display = ["title", "change", "status", "based_on_version", "created_at"]
    list_filter = ["status", "change"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(LearnedRouter)
class LearnedRouterAdmin(admin.ModelAdmin[LearnedRouter]):
    """Read-only: routers are trained by the task/command and serve through proposals."""

    list_display = ["task_class", "version", "status", "threshold", "window_end", "created_at"]
    list_filter = ["status"]
    readonly_fields = [f.name for f in LearnedRouter._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(LearnedThresholdTarget)
class LearnedThresholdTargetAdmin(admin.ModelAdmin[LearnedThresholdTarget]):
    list_display = ["task_class", "kind", "target", "window_days", "enabled", "last_run_at"]
    readonly_fields = ["last_run_at", "last_result"]


@admin.register(GradedCount)
class GradedCountAdmin(admin.ModelAdmin[GradedCount]):
    list_display = ["task_class", "model", "successes", "trials", "live_trials", "sweep_trials"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(OutputCheckPolicy)
class OutputCheckPolicyAdmin(admin.ModelAdmin[OutputCheckPolicy]):
    list_display = ["task_class", "check_personal_data", "check_schema", "max_chars", "on_failure"]
    list_filter = ["on_failure"]


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin[WebhookEndpoint]):
    list_display = ["application", "url", "is_active", "created_at"]
