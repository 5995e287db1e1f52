"""The policy gate through the real decision pipeline: disguised personal data in any free-text
field never reaches a cloud model, and the class's retention applies to every field."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from controlplane import services
from routing.schemas import NO_CONTROL_CHARACTERS
from routing.snapshot import registry_cache
from telemetry.models import DecisionRecord
from telemetry.retention import decision_prompts_purge
from tests.factories import decision_post as post
from tests.routing.pii_corpus import disguised_rows, request_bodies

pytestmark = pytest.mark.django_db(transaction=True)


def _route_to_cloud(registry: dict[str, Any], fallbacks: list[str]) -> None:
    draft = services.routing_version_draft_create()
    services.route_set(
        version=draft, task_class=registry["triage"], primary=registry["big"], fallbacks=fallbacks
    )
    services.routing_version_activate(version=draft)
    registry_cache.invalidate()


@pytest.fixture
def cloud_triage(registry: dict[str, Any], api_key: str, client: Client) -> dict[str, Any]:
    """`triage` routed to a cloud model first, a local one as the last fallback."""
    _route_to_cloud(registry, ["small-local"])
    clean = post(client, api_key, {"task_class": "triage", "prompt": "Reset my router"})
    assert clean.status_code == 201 and clean.json()["model"]["slug"] == "big-cloud"
    return registry


def _has_control_characters(value: Any) -> bool:
    if isinstance(value, str):
        return re.search(NO_CONTROL_CHARACTERS, value) is None
    if isinstance(value, dict):
        return any(
            _has_control_characters(k) or _has_control_characters(v) for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_has_control_characters(v) for v in value)
    return False


def test_no_disguised_positive_reaches_a_cloud_model(
    cloud_triage: dict[str, Any], api_key: str, client: Client
) -> None:
    positives = [row for row in disguised_rows() if row["pii"]]
    assert len(positives) >= 90
    posted = 0
    for row in positives:
        for body in request_bodies(row, "triage"):
            response = post(client, api_key, body)
            if _has_control_characters(body):  # refused at the edge: nothing decided
                assert response.status_code == 400, (body, response.content)
                assert response.json()["error"]["code"] == "invalid"
                continue
            assert response.status_code == 201, (body, response.content)
            decision = response.json()
            assert decision["model"]["locality"] == "local", body
            found = decision["policy"]["pii_types_found"]
            assert found and set(row["pii"]) <= set(found), (body, found)
            posted += 1
    assert posted > 2 * len(positives)  # free text goes in the prompt, query and metadata
    assert DecisionRecord.objects.filter(locality="cloud").count() == 1  # the clean request


def test_without_a_local_model_disguised_personal_data_is_refused(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    _route_to_cloud(registry, ["mid-cloud"])
    services.model_endpoint_set_status(model=registry["local"], status="disabled")
    registry_cache.invalidate()
    bodies = [
        {"task_class": "triage", "prompt": "Mail ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ"},
        {"task_class": "triage", "retrieval": {"query": "card 4111\u00a01111\u00a01111\u00a01111"}},
        {"task_class": "triage", "metadata": {"cc": "jane\u200b.doe@example.com"}},
    ]
    for body in bodies:
        response = post(client, api_key, body)
        assert response.status_code == 422, response.content
        assert response.json()["error"]["code"] == "no_eligible_model"
    assert DecisionRecord.objects.count() == 0


def test_a_class_that_keeps_no_prompts_keeps_no_query_or_metadata_text(
    cloud_triage: dict[str, Any], api_key: str, client: Client
) -> None:
    assert cloud_triage["triage"].prompt_retention_days == 0
    body = {
        "task_class": "triage",
        "prompt": "Where is my parcel?",
        "retrieval": {"query": "parcel status for order 5531", "document_ids": ["kb-7"]},
        "prompt_template": {"id": "triage", "version": "3"},
        "metadata": {"ticket": "T-1", "attempt": 2, "shadow": False},
    }
    decision = post(client, api_key, body).json()
    row = DecisionRecord.objects.get(id=decision["decision_id"])
    assert row.prompt is None and row.prompt_expires_at is None
    assert row.retrieval_query == ""
    assert row.metadata == {"ticket": None, "attempt": 2, "shadow": False}
    assert row.retrieval_document_ids == ["kb-7"]
    assert (row.prompt_template_id, row.prompt_template_version) == ("triage", "3")


def test_kept_free_text_expires_with_the_prompt(
    cloud_triage: dict[str, Any], api_key: str, client: Client
) -> None:
    triage = cloud_triage["triage"]
    triage.prompt_retention_days = 30
    triage.save()
    registry_cache.invalidate()
    body = {
        "task_class": "triage",
        "retrieval": {"query": "parcel status for order 5531"},
        "metadata": {"reference_answer": "in transit", "attempt": 2, "card": 4111111111111111},
    }
    decision = post(client, api_key, body).json()
    assert decision["policy"]["pii_types_found"] == ["credit_card"]
    assert decision["model"]["locality"] == "local"
    row = DecisionRecord.objects.get(id=decision["decision_id"])
    assert row.prompt is None  # none was sent; the query and metadata still expire
    assert row.prompt_expires_at is not None
    assert (row.prompt_expires_at - row.created_at).days == 30
    assert row.retrieval_query == "parcel status for order 5531"
    assert row.metadata == {"reference_answer": "in transit", "attempt": 2, "card": None}
    DecisionRecord.objects.filter(id=row.id, created_at=row.created_at).update(
        prompt_expires_at=row.created_at
    )
    assert decision_prompts_purge() == 1
    row.refresh_from_db()
    assert row.retrieval_query == "" and row.prompt_expires_at is None
    assert row.metadata == {"reference_answer": None, "attempt": 2, "card": None}
