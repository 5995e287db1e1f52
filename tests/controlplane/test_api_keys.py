from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from controlplane import services
from controlplane.models import ApiKey, AuditLog

pytestmark = pytest.mark.django_db


def _get(client: Client, secret: str) -> int:
    return client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code


def test_secret_is_stored_only_as_a_hash(registry: dict[str, Any]) -> None:
    key, secret = services.api_key_create(application=registry["app"], scopes=["read"])
    assert secret.startswith(f"sy_{key.prefix}_")
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM controlplane_apikey")
        rows = cursor.fetchall()
    flat = " ".join(str(v) for row in rows for v in row)
    assert secret not in flat
    assert secret.split("_", 2)[2] not in flat
    assert key.secret_hash == ApiKey.hash_secret(secret)
    audit = " ".join(str(e.after) for e in AuditLog.objects.filter(object_type="apikey"))
    assert secret not in audit and key.secret_hash not in audit


def test_valid_key_works_and_records_last_use(registry: dict[str, Any], client: Client) -> None:
    key, secret = services.api_key_create(application=registry["app"], scopes=["read"])
    assert _get(client, secret) == 200
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_revoked_and_expired_keys_are_refused(registry: dict[str, Any], client: Client) -> None:
    key, secret = services.api_key_create(application=registry["app"], scopes=["read"])
    services.api_key_revoke(key=key)
    assert _get(client, secret) == 401
    _, old = services.api_key_create(
        application=registry["app"],
        scopes=["read"],
        expires_at=timezone.now() - timedelta(seconds=1),
    )
    response = client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {old}")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert _get(client, "sy_nothing_here") == 401


def test_rotation_keeps_the_old_secret_for_the_grace_period(
    registry: dict[str, Any], client: Client
) -> None:
    key, old_secret = services.api_key_create(application=registry["app"], scopes=["read"])
    new_key, new_secret = services.api_key_rotate(key=key, grace=timedelta(hours=1))
    assert new_secret != old_secret and new_key.scopes == ["read"]
    assert _get(client, old_secret) == 200
    assert _get(client, new_secret) == 200
    # Once the grace period is over, only the new secret works.
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert _get(client, old_secret) == 401
    assert _get(client, new_secret) == 200
    assert AuditLog.objects.filter(object_id=str(key.pk), action="rotate").exists()


def test_wrong_scope_is_forbidden(registry: dict[str, Any], client: Client) -> None:
    _, secret = services.api_key_create(application=registry["app"], scopes=["decide"])
    response = client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_create_api_key_command_prints_the_secret_last(
    db: Any, capsys: pytest.CaptureFixture[str], client: Client
) -> None:
    call_command("create_api_key", "billing-bot", "--scopes", "decide,report,read")
    lines = capsys.readouterr().out.strip().splitlines()
    secret = lines[-1]
    assert secret.startswith("sy_")
    key = ApiKey.objects.get(secret_hash=ApiKey.hash_secret(secret))
    assert key.application.slug == "billing-bot" and key.application.team.slug == "demo"
    assert sorted(key.scopes) == ["decide", "read", "report"]
    assert _get(client, secret) == 200
