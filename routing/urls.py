from __future__ import annotations

from django.urls import path

from routing import apis

urlpatterns = [
    path("api/v1/decisions", apis.DecisionCreateApi.as_view(), name="api-decisions"),
    path(
        "api/v1/decisions/<str:decision_id>/cascade",
        apis.DecisionCascadeApi.as_view(),
        name="api-decision-cascade",
    ),
    path("metrics", apis.MetricsView.as_view(), name="metrics"),
]
