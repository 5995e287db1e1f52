"""The per-process API-key cache (routing/snapshot.py): revocation reaches it even when a
lookup races the revocation, and no entry outlives SWITCHYARD_KEY_CACHE_MAX_S."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from controlplane import services
from controlplane.models import ApiKey
from routing.snapshot import KeyInfo, registry_cache

pytestmark = pytest.mark.django_db(transaction=True)


def _post(client: Client, secret: str) -> int:
    response = client.post(
        "/api/v1/decisions",
        {"task_class": "triage"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    return response.status_code


def _key_reads(queries: CaptureQueriesContext) -> int:
    return sum('FROM "controlplane_apikey"' in q["sql"] for q in queries.captured_queries)


def test_a_revocation_that_commits_during_a_key_lookup_is_not_cached(
    registry: dict[str, Any], client: Client
) -> None:
    """The race: a lookup reads the key (not yet revoked); the revocation commits and bumps
    the generation; this process sees the bump and clears its key cache; only then does
    the lookup store what it read. The stored row must not outlive the clear."""
    key, secret = services.api_key_create(application=registry["app"], scopes=["decide"])
    registry_cache.snapshot()  # load the registry at the current generation
    read_done = threading.Event()
    release = threading.Event()
    found: list[KeyInfo | None] = []
    failures: list[BaseException] = []

    def pause_after_key_read(
        execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        result = execute(sql, params, many, context)
        if 'FROM "controlplane_apikey"' in sql and not read_done.is_set():
            read_done.set()  # the key row is read (before the revocation) ...
            assert release.wait(30)  # ... and is stored only after the clear
        return result

    def lookup() -> None:
        try:
            with connection.execute_wrapper(pause_after_key_read):
                found.append(registry_cache.key_for_secret(secret))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
            read_done.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=lookup)
    thread.start()
    try:
        assert read_done.wait(30)
        services.api_key_revoke(key=key)  # commits, then bumps the generation
        registry_cache.snapshot()  # this process sees the bump and clears its key cache
    finally:
        release.set()
        thread.join(30)
    assert not failures and not thread.is_alive()
    # The lookup that read before the revocation committed answers what it read ...
    assert found and found[0] is not None and found[0].key_id == key.pk
    # ... but every lookup after the clear refuses the key.
    assert registry_cache.key_for_secret(secret) is None
    assert _post(client, secret) == 401


def test_a_key_created_during_a_negative_lookup_is_not_refused_from_the_cache(
    registry: dict[str, Any],
) -> None:
    """The same race the other way round: "no such key" read just before the key's
    creation commits must not be cached past the clear that the creation caused."""
    key, secret = services.api_key_create(application=registry["app"], scopes=["decide"])
    services.api_key_revoke(key=key)
    registry_cache.snapshot()
    read_done = threading.Event()
    release = threading.Event()
    found: list[KeyInfo | None] = []

    def pause_after_key_read(
        execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        result = execute(sql, params, many, context)
        if 'FROM "controlplane_apikey"' in sql and not read_done.is_set():
            read_done.set()
            release.wait(30)
        return result

    def lookup() -> None:
        try:
            with connection.execute_wrapper(pause_after_key_read):
                found.append(registry_cache.key_for_secret(secret))
        finally:
            read_done.set()
            connections.close_all()

    thread = threading.Thread(target=lookup)
    thread.start()
    try:
        assert read_done.wait(30)
        # Un-revoke through the model (an audited save: commits, then bumps the generation).
        key.revoked_at = None
        key.save(update_fields=["revoked_at"])
        registry_cache.snapshot()
    finally:
        release.set()
        thread.join(30)
    assert found == [None]
    info = registry_cache.key_for_secret(secret)
    assert info is not None and info.key_id == key.pk


def test_a_key_is_read_once_then_served_from_memory(registry: dict[str, Any]) -> None:
    _, secret = services.api_key_create(application=registry["app"], scopes=["decide"])
    with CaptureQueriesContext(connection) as queries:
        first = registry_cache.key_for_secret(secret)
        second = registry_cache.key_for_secret(secret)
        unknown = registry_cache.key_for_secret(secret + "x")
        registry_cache.key_for_secret(secret + "x")
    assert first is not None and second == first and unknown is None
    assert _key_reads(queries) == 2  # one per distinct secret, however often it is used


def test_a_cached_key_is_re_read_after_the_maximum_age(
    registry: dict[str, Any], settings: Any
) -> None:
    """Even a revocation whose generation bump never happened (written here without the
    model's signals) stops the key once its cache entry is older than the maximum age."""
    key, secret = services.api_key_create(application=registry["app"], scopes=["decide"])
    assert registry_cache.key_for_secret(secret) is not None
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())  # no signal, no bump
    assert registry_cache.key_for_secret(secret) is not None  # still cached (60 s default)
    settings.SWITCHYARD_KEY_CACHE_MAX_S = 0.0
    assert registry_cache.key_for_secret(secret) is None
