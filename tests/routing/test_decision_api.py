"""The decision API end to end through Django: decide, record, report, read back."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from controlplane import services
from routing.snapshot import registry_cache
from telemetry.models import DecisionIdempotency, DecisionRecord
from tests.factories import decision_post as post
from tests.factories import team_budget_create

pytestmark = pytest.mark.django_db(transaction=True)


def test_decision_is_answered_and_recorded_with_its_path(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    response = post(
        client,
        api_key,
        {
            "task_class": "triage",
            "prompt": "Printer on fire",
            "retrieval": {"query": "printer", "document_ids": ["kb-1"]},
            "prompt_template": {"id": "triage", "version": "3"},
            "metadata": {"ticket": "T-1"},
        },
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["model"]["slug"] == "small-local" and body["model"]["tier"] == 1
    assert body["strategy"] == "rule"
    assert [f["model"] for f in body["fallbacks"]] == ["mid-cloud", "big-cloud"]
    assert body["routing_table_version"] == registry["version"].number
    assert body["max_output_tokens"] == 64
    record = DecisionRecord.objects.get(id=body["decision_id"])
    assert record.response == body
    assert record.retrieval_document_ids == ["kb-1"] and record.prompt_template_version == "3"
    assert {c["model"] for c in record.path["candidates"]} >= {"small-local"}
    assert record.application == "app-a" and record.team == "team-a"
    assert record.prompt is None  # the task class keeps no prompts (retention 0)


def test_personal_data_never_goes_to_a_cloud_model(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    draft = services.routing_version_draft_create()
    services.route_set(
        version=draft,
        task_class=registry["triage"],
        primary=registry["big"],
        fallbacks=["small-local"],
    )
    services.routing_version_activate(version=draft)
    clean = post(client, api_key, {"task_class": "triage", "prompt": "Reset my router"}).json()
    assert clean["model"]["slug"] == "big-cloud"
    pii = post(
        client,
        api_key,
        {"task_class": "triage", "prompt": "Mail me at jane.doe@example.com please"},
    ).json()
    assert pii["model"]["locality"] == "local"
    assert pii["policy"]["pii_types_found"] == ["email"]
    assert pii["strategy"] == "policy"
    declared = post(
        client, api_key, {"task_class": "triage", "prompt": "x", "data_classification": "personal"}
    ).json()
    assert declared["model"]["locality"] == "local"
    record = DecisionRecord.objects.get(id=pii["decision_id"])
    rejected = {c["model"]: c["reason"] for c in record.path["candidates"] if not c["accepted"]}
    assert "cloud model not allowed" in rejected["big-cloud"]


def test_unknown_task_class_lists_the_valid_ones(api_key: str, client: Client) -> None:
    response = post(client, api_key, {"task_class": "nope"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unknown_task_class"
    assert error["valid_task_classes"] == ["redact", "triage"]
    assert DecisionRecord.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task_class": "triage", "input_tokens": "many"}, "input_tokens"),
        ({"task_class": "triage", "data_classification": "secret"}, "data_classification"),
        ({"prompt": "hi"}, "task_class"),
        ({"task_class": "triage", "colour": "red"}, "colour"),
        ({"task_class": "triage", "metadata": {"nested": {"a": 1}}}, "metadata"),
        ({"task_class": "triage", "input_tokens": -5}, "input_tokens"),
    ],
)
def test_wrong_input_names_the_field(api_key: str, client: Client, body: Any, field: str) -> None:
    response = post(client, api_key, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error


def test_malformed_json_is_a_400(api_key: str, client: Client) -> None:
    response = post(client, api_key, "{not json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


def test_keys_missing_invalid_revoked_expired_or_wrong_scope(
    registry: dict[str, Any], client: Client
) -> None:
    body = {"task_class": "triage"}
    assert (
        client.post("/api/v1/decisions", body, content_type="application/json").status_code == 401
    )
    assert post(client, "sy_bogus_key", body).status_code == 401
    key, secret = services.api_key_create(application=registry["app"], scopes=["decide"])
    assert post(client, secret, body).status_code == 201
    services.api_key_revoke(key=key)
    response = post(client, secret, body)
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"
    _, expired = services.api_key_create(
        application=registry["app"],
        scopes=["decide"],
        expires_at=timezone.now() - timedelta(seconds=1),
    )
    assert post(client, expired, body).status_code == 401
    _, reader = services.api_key_create(application=registry["app"], scopes=["read"])
    response = post(client, reader, body)
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert DecisionRecord.objects.count() == 1


def test_oversized_prompt_and_metadata_are_413(api_key: str, client: Client, settings: Any) -> None:
    settings.SWITCHYARD_MAX_PROMPT_CHARS = 1000
    response = post(client, api_key, {"task_class": "triage", "prompt": "a" * 1001})
    assert response.status_code == 413 and "prompt" in response.json()["error"]["fields"]
    response = post(
        client,
        api_key,
        {"task_class": "triage", "metadata": {f"k{i}": "v" * 100 for i in range(60)}},
    )
    assert response.status_code == 413 and "metadata" in response.json()["error"]["fields"]
    assert DecisionRecord.objects.count() == 0


def test_request_id_makes_the_call_idempotent(api_key: str, client: Client) -> None:
    first = post(client, api_key, {"task_class": "triage", "request_id": "r-1"})
    again = post(client, api_key, {"task_class": "triage", "request_id": "r-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json() == again.json()
    assert DecisionRecord.objects.count() == 1
    assert DecisionIdempotency.objects.count() == 1


def test_concurrent_same_request_id_records_one_decision(
    registry: dict[str, Any], api_key: str
) -> None:
    results: list[dict[str, Any]] = []

    def call() -> None:
        try:
            results.append(
                post(Client(), api_key, {"task_class": "triage", "request_id": "same"}).json()
            )
        finally:
            connections.close_all()

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r["decision_id"] for r in results}) == 1
    assert DecisionRecord.objects.count() == 1


def test_hard_budget_limit_answers_429_naming_the_budget(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    team_budget_create(registry, "100", hard_action="block")
    response = post(client, api_key, {"task_class": "triage"})
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded" and error["budget"]["name"] == "team-a-monthly"
    assert DecisionRecord.objects.count() == 0


def test_soft_budget_limit_downgrades_one_tier(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    draft = services.routing_version_draft_create()
    services.route_set(
        version=draft,
        task_class=registry["triage"],
        primary=registry["big"],
        fallbacks=["mid-cloud", "small-local"],
    )
    services.routing_version_activate(version=draft)
    team_budget_create(registry, "85", soft_limit_pct=Decimal("80"))
    body = post(client, api_key, {"task_class": "triage"}).json()
    assert body["model"]["tier"] == 2 and body["strategy"] == "budget"
    assert body["budgets"][0]["action"] == "downgrade"


def test_activated_version_is_used_by_the_next_decision(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    assert post(client, api_key, {"task_class": "triage"}).json()["model"]["slug"] == "small-local"
    draft = services.routing_version_draft_create()
    services.route_set(
        version=draft, task_class=registry["triage"], primary=registry["mid"], fallbacks=[]
    )
    services.routing_version_activate(version=draft)
    body = post(client, api_key, {"task_class": "triage"}).json()
    assert body["model"]["slug"] == "mid-cloud"
    assert body["routing_table_version"] == draft.number


def test_disabled_model_is_skipped_for_the_next_in_chain(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    services.model_endpoint_set_status(model=registry["local"], status="disabled")
    body = post(client, api_key, {"task_class": "triage"}).json()
    assert body["model"]["slug"] == "mid-cloud" and body["strategy"] == "fallback"


def test_database_unreachable_answers_503_json(api_key: str, client: Client) -> None:
    registry_cache.snapshot()
    conn = connections["default"]
    old_port = conn.settings_dict["PORT"]
    conn.close()
    conn.settings_dict["PORT"] = "1"
    registry_cache.invalidate()
    try:
        response = post(client, api_key, {"task_class": "triage"})
        page = client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {api_key}")
    finally:
        conn.close()
        conn.settings_dict["PORT"] = old_port
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert page.status_code == 503 and page["Content-Type"] == "application/json"


def test_hot_path_queries_are_bounded(
    registry: dict[str, Any], api_key: str, client: Client, settings: Any
) -> None:
    settings.SWITCHYARD_SNAPSHOT_CHECK_S = 60
    settings.SWITCHYARD_BUDGET_REFRESH_S = 60
    post(client, api_key, {"task_class": "triage"})  # warm the caches
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            assert (
                post(client, api_key, {"task_class": "triage", "prompt": "hello"}).status_code
                == 201
            )
    assert len(queries) == 0  # recording happens on the recorder's own connection
    assert DecisionRecord.objects.count() == 6


def test_metrics_count_decisions(registry: dict[str, Any], api_key: str, client: Client) -> None:
    post(client, api_key, {"task_class": "triage"})
    _, reader = services.api_key_create(application=registry["app"], scopes=["read"])
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {reader}")
    assert response.status_code == 200
    text = response.content.decode()
    assert 'switchyard_decisions_total{strategy="rule",task_class="triage",tier="1"}' in text
    assert "switchyard_decision_seconds_bucket" in text
    assert client.get("/metrics").status_code == 401


def test_revocation_reaches_the_key_cache_through_the_registry_generation(
    registry: dict[str, Any], client: Client
) -> None:
    key, secret = services.api_key_create(application=registry["app"], scopes=["decide"])
    assert post(client, secret, {"task_class": "triage"}).status_code == 201
    services.api_key_revoke(key=key)  # commits, then bumps the generation
    assert post(client, secret, {"task_class": "triage"}).status_code == 401
