"""Idempotency of the decision API: one decision per request_id and body, for a window."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections
from django.test import Client
from django.utils import timezone

from controlplane import services
from routing.snapshot import registry_cache
from telemetry.models import DecisionIdempotency, DecisionRecord
from telemetry.recorder import recorder
from telemetry.retention import decisions_maintain, idempotency_keys_purge
from tests.factories import decision_post as post

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    registry_cache.invalidate()


def _cloud_route(registry: dict[str, Any]) -> None:
    draft = services.routing_version_draft_create()
    services.route_set(
        version=draft, task_class=registry["triage"], primary=registry["big"], fallbacks=[]
    )
    services.routing_version_activate(version=draft)


def test_same_body_in_any_key_order_or_spacing_replays_the_stored_decision(
    api_key: str, client: Client
) -> None:
    first = post(
        client,
        api_key,
        '{"task_class": "triage", "request_id": "r-1", "prompt": "hi",'
        ' "metadata": {"a": 1, "b": 2}}',
    )
    again = post(
        client,
        api_key,
        '{ "metadata":{"b":2,"a":1},"prompt":"hi",\n "request_id":"r-1","task_class":"triage"}',
    )
    assert first.status_code == 201, first.content
    assert again.status_code == 200, again.content
    assert again.json() == first.json()
    assert DecisionRecord.objects.count() == 1
    key = DecisionIdempotency.objects.get()
    assert len(key.body_sha256) == 64


def test_a_changed_body_under_the_same_request_id_is_a_409(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    """The issue's replay: a cloud decision must not answer a new, personal body."""
    _cloud_route(registry)
    first = post(client, api_key, {"task_class": "triage", "request_id": "r-2", "prompt": "hi"})
    assert first.status_code == 201 and first.json()["model"]["locality"] == "cloud"
    replay = post(
        client,
        api_key,
        {
            "task_class": "triage",
            "request_id": "r-2",
            "prompt": "Mail jane.doe@example.com her card 4111 1111 1111 1111",
            "data_classification": "personal",
        },
    )
    assert replay.status_code == 409, replay.content
    error = replay.json()["error"]
    assert error["code"] == "idempotency_conflict" and error["status"] == 409
    assert "request_id" in error["fields"]
    assert "model" not in replay.json()
    assert DecisionRecord.objects.count() == 1
    # A new request_id gets a fresh decision through the policy gate.
    fresh = post(
        client,
        api_key,
        {
            "task_class": "triage",
            "request_id": "r-3",
            "prompt": "Mail jane.doe@example.com",
            "data_classification": "personal",
        },
    )
    assert fresh.status_code == 201 and fresh.json()["model"]["locality"] == "local"


def _concurrently(count: int, call: Any) -> list[Any]:
    results: list[Any] = []
    start = threading.Barrier(count)

    def run(n: int) -> None:
        try:
            start.wait()
            results.append(call(n))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_identical_concurrent_replays_record_one_decision(api_key: str) -> None:
    body = {"task_class": "triage", "request_id": "same", "prompt": "printer"}
    responses = _concurrently(12, lambda n: post(Client(), api_key, body))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 11 + [201], statuses
    assert len({r.json()["decision_id"] for r in responses}) == 1
    assert DecisionRecord.objects.count() == 1
    assert DecisionIdempotency.objects.count() == 1


def test_concurrent_replays_with_different_bodies_get_one_decision_and_409s(
    api_key: str,
) -> None:
    def call(n: int) -> tuple[int, Any]:
        body = {"task_class": "triage", "request_id": "race", "prompt": f"body {n % 2}"}
        return n, post(Client(), api_key, body)

    responses = _concurrently(10, call)
    created = [(n, r) for n, r in responses if r.status_code == 201]
    assert len(created) == 1, [r.status_code for _, r in responses]
    winner_n, winner = created[0]
    assert str(DecisionRecord.objects.get().id) == winner.json()["decision_id"]
    for n, response in responses:
        if n == winner_n:
            continue
        if n % 2 == winner_n % 2:  # the winner's body: its decision
            assert response.status_code == 200
            assert response.json()["decision_id"] == winner.json()["decision_id"]
        else:
            assert response.status_code == 409, response.content
            assert response.json()["error"]["code"] == "idempotency_conflict"


def _age_key(request_id: str, hours: float) -> None:
    key = DecisionIdempotency.objects.get(request_id=request_id)
    key.created_at = timezone.now() - timedelta(hours=hours)
    key.save(update_fields=["created_at"])


def test_a_request_id_reused_after_the_window_makes_a_new_decision(
    api_key: str, client: Client, settings: Any
) -> None:
    settings.SWITCHYARD_IDEMPOTENCY_WINDOW_HOURS = 24
    first = post(client, api_key, {"task_class": "triage", "request_id": "old"}).json()
    _age_key("old", 25)
    # After expiry even another body is a new request, not a conflict.
    again = post(client, api_key, {"task_class": "triage", "request_id": "old", "prompt": "new"})
    assert again.status_code == 201, again.content
    assert again.json()["decision_id"] != first["decision_id"]
    key = DecisionIdempotency.objects.get(request_id="old")
    assert str(key.decision_id) == again.json()["decision_id"]
    replay = post(client, api_key, {"task_class": "triage", "request_id": "old", "prompt": "new"})
    assert replay.status_code == 200 and replay.json() == again.json()


def test_a_key_whose_decision_was_dropped_is_not_a_permanent_503(
    api_key: str, client: Client
) -> None:
    """Retention dropped the decision's partition; once past the window the key is reusable."""
    post(client, api_key, {"task_class": "triage", "request_id": "gone"})
    DecisionRecord.objects.all().delete()
    _age_key("gone", 24 * 91)
    again = post(client, api_key, {"task_class": "triage", "request_id": "gone"})
    assert again.status_code == 201, again.content


def test_expired_keys_are_purged_before_their_decisions(
    api_key: str, client: Client, settings: Any
) -> None:
    settings.SWITCHYARD_IDEMPOTENCY_WINDOW_HOURS = 24
    for name in ("k-old", "k-edge", "k-new"):
        assert (
            post(client, api_key, {"task_class": "triage", "request_id": name}).status_code == 201
        )
    _age_key("k-old", 30)
    _age_key("k-edge", 23.5)
    assert idempotency_keys_purge() == 1
    assert set(DecisionIdempotency.objects.values_list("request_id", flat=True)) == {
        "k-edge",
        "k-new",
    }
    assert DecisionRecord.objects.count() == 3  # the decisions stay until their retention
    _age_key("k-edge", 25)
    result = decisions_maintain()
    assert result["idempotency_keys_purged"] == 1
    call_command("decisions_maintain", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert list(DecisionIdempotency.objects.values_list("request_id", flat=True)) == ["k-new"]


def test_the_window_never_outlives_retention() -> None:
    from django.conf import settings

    assert settings.SWITCHYARD_IDEMPOTENCY_WINDOW_HOURS <= (
        settings.SWITCHYARD_DECISION_RETENTION_DAYS * 24
    )


def test_nul_in_request_id_is_a_400_not_a_500(api_key: str, client: Client) -> None:
    response = post(client, api_key, '{"task_class": "triage", "request_id": "a\\u0000b"}')
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and "request_id" in error["fields"]
    assert post(client, api_key, {"task_class": "triage", "request_id": "ab"}).status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metadata": {"note": "a\u0000b"}}, "metadata"),
        ({"retrieval": {"query": "q\u0000", "document_ids": []}}, "retrieval"),
        ({"prompt_template": {"id": "t\u0000", "version": "1"}}, "prompt_template"),
    ],
)
def test_nul_in_a_stored_field_is_a_400_and_others_are_unaffected(
    api_key: str, body: dict[str, Any], field: str
) -> None:
    def call(n: int) -> Any:
        payload = {"task_class": "triage", "prompt": f"ok {n}"}
        if n == 0:
            payload.update(body)
        return n, post(Client(), api_key, payload)

    results = dict(_concurrently(8, call))
    bad = results.pop(0)
    assert bad.status_code == 400, bad.content
    error = bad.json()["error"]
    assert error["code"] == "invalid"
    assert any(name.startswith(field) for name in error["fields"]), error
    assert all(r.status_code == 201 for r in results.values())
    assert DecisionRecord.objects.count() == 7


def test_a_full_recorder_queue_answers_503_with_retry_after(
    api_key: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder, "queue_max", 0)
    response = post(client, api_key, {"task_class": "triage"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "recording_unavailable"
    assert response["Retry-After"] == "1"
    assert DecisionRecord.objects.count() == 0
