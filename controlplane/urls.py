from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from controlplane import apis, views
from telemetry import views as telemetry_views

handler400 = "controlplane.errors.handler400"
handler403 = "controlplane.errors.handler403"
handler404 = "controlplane.errors.handler404"
handler500 = "controlplane.errors.handler500"

api_v1 = [
    path("models", apis.ModelListApi.as_view(), name="api-models"),
    path("task-classes", apis.TaskClassListApi.as_view(), name="api-task-classes"),
    path("routing-tables", apis.RoutingVersionListApi.as_view(), name="api-routing-tables"),
    path(
        "routing-tables/<int:number>/activate",
        apis.RoutingVersionActivateApi.as_view(),
        name="api-routing-table-activate",
    ),
    path(
        "routing-tables/rollback",
        apis.RoutingVersionRollbackApi.as_view(),
        name="api-routing-table-rollback",
    ),
]

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", telemetry_views.overview, name="home"),
    path("registry/", views.registry_home, name="registry"),
    path("registry/routing/", views.routing_version_list, name="routing-versions"),
    path("registry/routing/compare", views.routing_version_compare, name="routing-compare"),
    path("registry/routing/rollback", views.routing_version_rollback, name="routing-rollback"),
    path("registry/routing/<int:number>/", views.routing_version_detail, name="routing-version"),
    path(
        "registry/routing/<int:number>/activate",
        views.routing_version_activate,
        name="routing-version-activate",
    ),
    path("registry/keys/", views.api_key_list, name="api-keys"),
    path("registry/keys/action", views.api_key_action, name="api-key-action"),
    path("registry/audit/", views.audit_log, name="audit-log"),
    path("", include("routing.urls")),
    path("", include("telemetry.urls")),
    path("", include("evaluation.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include(api_v1)),
]
