"""POST /api/v1/decisions/{id}/checks: stored with the decision; a failure answers what the
task class says (escalate to the next model, or hand off)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from controlplane import services as registry_services
from controlplane.models import Application
from evaluation.models import Handoff, OutputCheck, OutputCheckPolicy
from tests import factories

# Decisions are stored by the recorder on its own connection (committed): flush after.
pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "Customer jane.roe@example.org asks for a refund of order 1142."


def _auth(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


@pytest.fixture
def decision_id(registry: dict[str, Any], api_key: str) -> str:
    response = Client().post(
        "/api/v1/decisions",
        {"task_class": "triage", "prompt": "Refund for order 1142?"},
        content_type="application/json",
        **_auth(api_key),
    )
    assert response.status_code == 201, response.content
    return str(response.json()["decision_id"])


def _check(secret: str, decision_id: str, body: Any) -> Any:
    return Client().post(
        f"/api/v1/decisions/{decision_id}/checks",
        body,
        content_type="application/json",
        **_auth(secret),
    )


def test_a_passing_output_is_stored(api_key: str, decision_id: str) -> None:
    response = _check(
        api_key, decision_id, {"output": "Your refund is on its way.", "input": PROMPT}
    )
    assert response.status_code == 201, response.content
    result = response.json()
    assert result["passed"] and result["findings"] == [] and result["action"] == "none"
    assert OutputCheck.objects.get().decision_id.hex == decision_id.replace("-", "")


def test_without_a_policy_personal_data_is_still_checked(api_key: str, decision_id: str) -> None:
    leak = _check(
        api_key, decision_id, {"output": "Ask billing@acme-corp.com", "input": PROMPT}
    ).json()
    assert not leak["passed"] and leak["rules"] == ["personal_data"]
    assert leak["action"] == "none" and leak["handoff_id"] is None


def test_escalate_names_the_next_model(
    registry: dict[str, Any], api_key: str, decision_id: str
) -> None:
    OutputCheckPolicy.objects.create(
        task_class=registry["triage"], forbidden_terms=["guaranteed"], on_failure="escalate"
    )
    first = _check(api_key, decision_id, {"output": "Refund guaranteed!", "input": PROMPT}).json()
    assert first["action"] == "escalate" and first["next_model"] == "mid-cloud"
    assert first["findings"][0]["rule"] == "forbidden_term"
    second = _check(
        api_key, decision_id, {"output": "Refund guaranteed!", "model": "mid-cloud"}
    ).json()
    assert second["action"] == "escalate" and second["next_model"] == "big-cloud"
    # The last model in the chain failed: nobody left to escalate to, so a person decides.
    last = _check(api_key, decision_id, {"output": "Refund guaranteed!", "model": "big-cloud"})
    assert last.json()["action"] == "handoff" and last.json()["next_model"] == ""
    handoff = Handoff.objects.get()
    assert handoff.source == "output_check" and handoff.draft == "Refund guaranteed!"
    assert str(handoff.public_id) == last.json()["handoff_id"]
    assert OutputCheck.objects.count() == 3


def test_handoff_policy_puts_the_output_on_the_desk(
    registry: dict[str, Any], api_key: str, decision_id: str
) -> None:
    OutputCheckPolicy.objects.create(
        task_class=registry["triage"], on_failure="handoff", handoff_sla_minutes=15
    )
    registry["triage"].output_schema = {"type": "object", "required": ["answer"]}
    registry["triage"].save()
    result = _check(
        api_key,
        decision_id,
        {"output": '{"answer": "IBAN DE89 3704 0044 0532 0130 00"}', "input": PROMPT},
    ).json()
    assert result["action"] == "handoff" and result["rules"] == ["personal_data"]
    handoff = Handoff.objects.get(public_id=result["handoff_id"])
    assert handoff.sla_minutes == 15 and handoff.context["failed_checks"] == "personal_data"
    schema = _check(api_key, decision_id, {"output": '{"reply": 1}', "input": PROMPT}).json()
    assert schema["rules"] == ["schema"] and schema["handoff_id"] == result["handoff_id"]
    reviewer = Client()
    reviewer.force_login(factories.user_create("Reviewer"))
    assert "failed output check" in reviewer.get("/handoffs/").content.decode()
    page = reviewer.get(f"/decisions/{decision_id}/").content.decode()
    assert "personal_data (iban)" in page and "DE89" not in page  # findings, never the value


def test_hostile_and_foreign_requests(
    registry: dict[str, Any], api_key: str, decision_id: str
) -> None:
    assert _check(api_key, decision_id, {"output": "nul\x00"}).status_code == 400
    unknown = _check(api_key, decision_id, {"output": "x", "grade": "A"})
    assert unknown.status_code == 400 and "grade" in unknown.json()["error"]["fields"]
    assert _check(api_key, decision_id, {"output": "x" * 1_100_000}).status_code == 413
    assert _check(api_key, "not-a-decision", {"output": "x"}).status_code == 404
    other_app = Application.objects.create(slug="app-b", name="B", team=registry["team"])
    _, stranger = registry_services.api_key_create(application=other_app, scopes=["report"])
    assert _check(stranger, decision_id, {"output": "x"}).status_code == 404
    _, reader = registry_services.api_key_create(application=registry["app"], scopes=["read"])
    assert _check(reader, decision_id, {"output": "x"}).status_code == 403
    assert OutputCheck.objects.count() == 0
