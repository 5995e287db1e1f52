from __future__ import annotations

from django.urls import path

from routing import apis

urlpatterns = [
    path("api/v1/decisions", apis.DecisionCreateApi.as_view(), name="api-decisions"),
    path("metrics", apis.MetricsView.as_view(), name="metrics"),
]
