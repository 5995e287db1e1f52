"""The role × page/API matrix: each page and API is allowed or 403 (anonymous → login)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.conftest import client_for

pytestmark = pytest.mark.django_db

ROLES = [None, "Viewer", "Reviewer", "Operator", "Admin"]
ALL = {"Viewer", "Reviewer", "Operator", "Admin"}
OPS = {"Operator", "Admin"}

PAGES = [
    ("/", ALL),
    ("/registry/", ALL),
    ("/registry/routing/", ALL),
    ("/registry/routing/{n}/", ALL),
    ("/registry/keys/", OPS),
    ("/registry/audit/", OPS),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("path", "allowed"), PAGES)
def test_page_access(
    registry: dict[str, Any], role: str | None, path: str, allowed: set[str]
) -> None:
    client = client_for(role)
    response = client.get(path.format(n=registry["version"].number))
    if role is None:
        assert response.status_code == 302 and "/login/" in response["Location"]
    elif role in allowed:
        assert response.status_code == 200
    else:
        assert response.status_code == 403


@pytest.mark.parametrize("role", ROLES)
def test_activate_page_action(registry: dict[str, Any], role: str | None) -> None:
    from controlplane import services

    draft = services.routing_version_draft_create()
    response = client_for(role).post(f"/registry/routing/{draft.number}/activate")
    draft.refresh_from_db()
    if role in OPS:
        assert response.status_code == 302 and draft.status == "active"
    else:
        assert response.status_code in {302, 403} and draft.status == "draft"
        if role is not None:
            assert response.status_code == 403


@pytest.mark.parametrize("role", ROLES)
def test_admin_site_only_for_operators(registry: dict[str, Any], role: str | None) -> None:
    response = client_for(role).get("/admin/controlplane/modelendpoint/")
    if role in OPS:
        assert response.status_code == 200
        assert b"small-local" in response.content
    else:
        assert response.status_code == 302  # admin sends non-staff to its login


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("get", "/api/v1/models", ALL),
        ("get", "/api/v1/task-classes", ALL),
        ("get", "/api/v1/routing-tables", ALL),
        ("post", "/api/v1/routing-tables/rollback", OPS),
    ],
)
def test_api_access_for_people(
    registry: dict[str, Any], role: str | None, method: str, path: str, allowed: set[str]
) -> None:
    from controlplane import services

    services.routing_version_activate(version=services.routing_version_draft_create())
    client = client_for(role)
    client.handler.enforce_csrf_checks = False
    response = getattr(client, method)(path, content_type="application/json")
    if role is None:
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
    elif role in allowed:
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"


def test_registry_page_query_count_is_bounded(registry: dict[str, Any]) -> None:
    client = client_for("Viewer")
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/registry/").status_code == 200
    assert len(queries) <= 12
