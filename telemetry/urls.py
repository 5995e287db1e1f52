from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from telemetry import apis, views

urlpatterns: list[URLPattern | URLResolver] = [
    path(
        "api/v1/decisions/<str:decision_id>",
        apis.DecisionDetailApi.as_view(),
        name="api-decision-detail",
    ),
    path(
        "api/v1/decisions/<str:decision_id>/outcome",
        apis.DecisionOutcomeApi.as_view(),
        name="api-decision-outcome",
    ),
    path(
        "dashboards/task-classes/<slug:slug>/",
        views.task_class_page,
        name="task-class-dashboard",
    ),
    path("dashboards/models/<str:slug>/", views.model_page, name="model-dashboard"),
    path("decisions/", views.decision_list, name="decisions"),
    path("decisions/export.csv", views.decision_export, name="decisions-export"),
    path("decisions/<uuid:decision_id>/", views.decision_detail, name="decision-detail"),
]
