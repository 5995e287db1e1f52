from __future__ import annotations

from typing import Any

import pytest
from django.test import Client


def test_healthz_answers_without_the_database(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_ready_when_migrated(client: Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["status"] == "ready"


@pytest.mark.django_db
def test_readyz_reports_unapplied_migrations(client: Client, monkeypatch: Any) -> None:
    from django.db.migrations.executor import MigrationExecutor

    monkeypatch.setattr(
        MigrationExecutor,
        "migration_plan",
        lambda self, targets: [
            (type("M", (), {"app_label": "controlplane", "name": "9999_future"})(), False)
        ],
    )
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reason"] == "migrations not applied"
    assert response.json()["pending"] == ["controlplane.9999_future"]


def test_readyz_answers_503_when_the_database_is_unreachable() -> None:
    from django.db import connections

    conn = connections["default"]
    old_port = conn.settings_dict["PORT"]
    conn.close()
    conn.settings_dict["PORT"] = "1"  # nothing listens there
    try:
        response = Client().get("/readyz")
    finally:
        conn.close()
        conn.settings_dict["PORT"] = old_port
    assert response.status_code == 503
    assert "database unreachable" in response.json()["reason"]


@pytest.mark.django_db
def test_landing_sends_signed_out_visitors_to_login_and_signs_in(client: Client) -> None:
    from controlplane.demo import demo_users_load

    users = demo_users_load()
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    for user in users:
        c = Client()
        response = c.post("/login/", {"username": user["username"], "password": user["password"]})
        assert response.status_code == 302, user
        assert c.get("/").status_code == 200
