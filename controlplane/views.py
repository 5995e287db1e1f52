"""Pages of the registry, health endpoints and sign-in landing."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from controlplane import selectors, services
from controlplane.decorators import role_required
from controlplane.models import ApiKey, Application, RoutingTableVersion
from controlplane.roles import OPERATOR, VIEWER


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database answers and every migration is applied."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception as exc:  # any failure to reach the database means "not ready"
        return JsonResponse(
            {"status": "unavailable", "reason": f"database unreachable: {exc.__class__.__name__}"},
            status=503,
        )
    if pending:
        names = [f"{m.app_label}.{m.name}" for m, _ in pending][:10]
        return JsonResponse(
            {"status": "unavailable", "reason": "migrations not applied", "pending": names},
            status=503,
        )
    return JsonResponse({"status": "ready"})


@role_required(VIEWER)
def registry_home(request: HttpRequest) -> HttpResponse:
    active = selectors.routing_version_active()
    routes = list(selectors.routing_version_routes(active)) if active else []
    return render(
        request,
        "controlplane/registry.html",
        {
            "active": active,
            "routes": routes,
            "models": selectors.model_endpoint_list(),
            "task_classes": selectors.task_class_list(),
            "budgets": selectors.budget_list_with_spend(),
        },
    )


def _version_number(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isdigit() and len(raw) < 9 else None


@role_required(VIEWER)
def routing_version_compare(request: HttpRequest) -> HttpResponse:
    """Two routing-table versions as a diff of routes (default: the newest one against the
    version it was based on, or the one before it)."""
    versions = list(selectors.routing_version_list())
    by_number = {v.number: v for v in versions}
    to_number = _version_number(request.GET.get("to"))
    from_number = _version_number(request.GET.get("from"))
    if (to_number is not None and to_number not in by_number) or (
        from_number is not None and from_number not in by_number
    ):
        raise Http404("No such routing-table version.")
    after = by_number.get(to_number) if to_number is not None else None
    if after is None:
        after = versions[0] if versions else None  # the newest (a draft under review)
    before = by_number.get(from_number) if from_number is not None else None
    if before is None and after is not None:
        based_on = next((v for v in versions if v.pk == after.based_on_id), None)
        before = based_on or next((v for v in versions if v.number < after.number), None)
    changes = selectors.routing_versions_diff(before, after) if before and after else []
    return render(
        request,
        "controlplane/routing_compare.html",
        {"versions": versions, "before": before, "after": after, "changes": changes},
    )


@role_required(VIEWER)
def routing_version_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "controlplane/routing_versions.html",
        {"versions": selectors.routing_version_list()},
    )


@role_required(VIEWER)
def routing_version_detail(request: HttpRequest, number: int) -> HttpResponse:
    version = get_object_or_404(RoutingTableVersion, number=number)
    return render(
        request,
        "controlplane/routing_version.html",
        {"version": version, "routes": selectors.routing_version_routes(version)},
    )


@require_POST
@role_required(OPERATOR)
def routing_version_activate(request: HttpRequest, number: int) -> HttpResponse:
    version = get_object_or_404(RoutingTableVersion, number=number)
    try:
        services.routing_version_activate(
            version=version, user=request.user, comment=request.POST.get("comment", "")
        )
        messages.success(request, f"Routing table v{number} is now active.")
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            messages.error(request, f"{field}: {'; '.join(errors)}")
    return redirect("routing-version", number=number)


@require_POST
@role_required(OPERATOR)
def routing_version_rollback(request: HttpRequest) -> HttpResponse:
    try:
        version = services.routing_version_rollback(user=request.user)
        messages.success(request, f"Rolled back: v{version.number} is active again.")
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
    return redirect("routing-versions")


@role_required(OPERATOR)
def api_key_list(request: HttpRequest) -> HttpResponse:
    keys = ApiKey.objects.select_related("application", "application__team").order_by(
        "application__slug", "-created_at"
    )
    return render(
        request,
        "controlplane/api_keys.html",
        {"keys": keys, "applications": Application.objects.order_by("slug")},
    )


@require_POST
@role_required(OPERATOR)
def api_key_action(request: HttpRequest) -> HttpResponse:
    action = request.POST.get("action")
    secret = None
    try:
        if action == "create":
            app = get_object_or_404(Application, slug=request.POST.get("application", ""))
            _, secret = services.api_key_create(
                application=app,
                scopes=request.POST.getlist("scopes"),
                name=request.POST.get("name", ""),
            )
        elif action in {"revoke", "rotate"}:
            key = get_object_or_404(ApiKey, pk=request.POST.get("key"))
            if action == "revoke":
                services.api_key_revoke(key=key)
                messages.success(request, f"Key {key.prefix}… revoked.")
            else:
                _, secret = services.api_key_rotate(key=key)
        else:
            messages.error(request, "Unknown action.")
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
    if secret:
        # Shown once, on this response only; only the hash is stored.
        messages.warning(request, f"New secret (copy it now, it is not shown again): {secret}")
    return redirect("api-keys")


@role_required(OPERATOR)
def audit_log(request: HttpRequest) -> HttpResponse:
    return render(request, "controlplane/audit.html", {"entries": selectors.audit_log_recent(200)})
