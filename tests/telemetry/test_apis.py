"""The read and outcome APIs (telemetry/apis.py): reading a decision is limited to its
application; outcomes are validated, owned, priced at decision time and charged once."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connections
from django.test import Client
from django.utils import timezone

from controlplane import services
from controlplane.models import Application, BudgetSpend, Team
from telemetry.models import DecisionOutcome
from tests.factories import decision_post as post
from tests.factories import outcome_post, team_budget_create

pytestmark = pytest.mark.django_db(transaction=True)


def test_reading_a_decision_is_limited_to_its_application(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    decision_id = post(client, api_key, {"task_class": "triage"}).json()["decision_id"]
    _, reader = services.api_key_create(application=registry["app"], scopes=["read"])
    own = client.get(f"/api/v1/decisions/{decision_id}", HTTP_AUTHORIZATION=f"Bearer {reader}")
    assert own.status_code == 200
    assert own.json()["decision"]["decision_id"] == decision_id
    assert own.json()["candidates"][0]["model"] == "small-local"
    other_app = Application.objects.create(slug="app-b", name="B", team=Team.objects.get())
    _, stranger = services.api_key_create(application=other_app, scopes=["read"])
    response = client.get(
        f"/api/v1/decisions/{decision_id}", HTTP_AUTHORIZATION=f"Bearer {stranger}"
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    missing = client.get("/api/v1/decisions/not-a-uuid", HTTP_AUTHORIZATION=f"Bearer {reader}")
    assert missing.status_code == 404


def test_outcome_cost_uses_the_price_at_decision_time_and_is_charged_once(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    budget = team_budget_create(registry, "0")
    decision_id = post(client, api_key, {"task_class": "triage"}).json()["decision_id"]
    # A new price after the decision must not change its cost.
    services.model_price_add(
        model=registry["big"],
        input_usd_per_mtok="100",
        output_usd_per_mtok="100",
        effective_from=timezone.now(),
    )
    attempts = [
        {
            "model": "small-local",
            "status": "low_confidence",
            "latency_ms": 120,
            "input_tokens": 1000,
            "output_tokens": 100,
            "escalation_reason": "confidence 0.4",
        },
        {
            "model": "big-cloud",
            "status": "ok",
            "latency_ms": 900,
            "input_tokens": 1000,
            "output_tokens": 200,
        },
    ]
    response = outcome_post(client, api_key, decision_id, attempts)
    assert response.status_code == 200, response.content
    # small: 1000*0.10 + 100*0.20 = 120e-6 ; big: 1000*2.5 + 200*10 = 4500e-6
    expected = Decimal("0.00462")
    assert Decimal(response.json()["cost_usd"]) == expected
    assert response.json()["escalated"] is True
    assert outcome_post(client, api_key, decision_id, attempts).status_code == 200  # repeated
    spend = BudgetSpend.objects.get(budget=budget)
    assert spend.spent_usd == expected
    outcome = DecisionOutcome.objects.get()
    assert outcome.final_model == "big-cloud" and outcome.charged_attempts == 2


def test_concurrent_outcome_reports_charge_the_budget_exactly(
    registry: dict[str, Any], api_key: str
) -> None:
    budget = team_budget_create(registry, "0")
    client = Client()
    ids = [post(client, api_key, {"task_class": "triage"}).json()["decision_id"] for _ in range(12)]
    attempt = {
        "model": "big-cloud",
        "status": "ok",
        "latency_ms": 10,
        "input_tokens": 2000,
        "output_tokens": 500,
    }
    errors: list[Any] = []

    def report(decision_id: str) -> None:
        try:
            for _ in range(2):  # each decision reported twice, concurrently with the others
                response = outcome_post(Client(), api_key, decision_id, [attempt])
                if response.status_code != 200:
                    errors.append(response.content)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=report, args=(d,)) for d in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    per_decision = Decimal("0.01")  # 2000*2.5 + 500*10 = 10000e-6
    assert BudgetSpend.objects.get(budget=budget).spent_usd == per_decision * len(ids)
    total = sum((o.cost_usd for o in DecisionOutcome.objects.all()), Decimal(0))
    assert total == per_decision * len(ids)


def test_outcome_validation_and_ownership(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    decision_id = post(client, api_key, {"task_class": "triage"}).json()["decision_id"]
    bad = outcome_post(
        client,
        api_key,
        decision_id,
        [{"model": "x", "status": "weird", "latency_ms": 1, "input_tokens": 1, "output_tokens": 1}],
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"
    other_app = Application.objects.create(slug="app-c", name="C", team=Team.objects.get())
    _, stranger = services.api_key_create(application=other_app, scopes=["report"])
    response = outcome_post(
        client,
        stranger,
        decision_id,
        [
            {
                "model": "small-local",
                "status": "ok",
                "latency_ms": 1,
                "input_tokens": 1,
                "output_tokens": 1,
            }
        ],
    )
    assert response.status_code == 404
    assert not DecisionOutcome.objects.exists()


def test_clients_cannot_write_the_gateways_savings(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    decision_id = post(client, api_key, {"task_class": "triage"}).json()["decision_id"]
    attempt = {
        "model": "small-local",
        "status": "ok",
        "latency_ms": 1,
        "input_tokens": 1,
        "output_tokens": 1,
    }
    url = f"/api/v1/decisions/{decision_id}/outcome"
    for key in ("gateway", "cache", "saved_usd", "condensed"):
        body = {"attempts": [attempt], "final_status": "ok", "validation": {key: "hit"}}
        response = client.post(
            url, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api_key}"
        )
        assert response.status_code == 400
        assert list(response.json()["error"]["fields"]) == [f"validation.{key}"]
    assert not DecisionOutcome.objects.exists()
    # Grades of the client's own are welcome.
    body = {"attempts": [attempt], "final_status": "ok", "validation": {"valid": True}}
    response = client.post(
        url, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api_key}"
    )
    assert response.status_code == 200
    assert DecisionOutcome.objects.get().validation == {"valid": True}
