"""POST /api/v1/decisions/{id}/cascade: accept or escalate a cheap attempt, recorded on the
decision's path; hostile input, other tenants' ids and replays."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from controlplane import services
from controlplane.models import Application, TaskClass
from evaluation.services.cascade import MAX_CASCADE_CHECKS
from routing.snapshot import registry_cache
from tests.browser import roles_ensure
from tests.conftest import client_for

pytestmark = pytest.mark.django_db(transaction=True)


def _decide(client: Client, key: str) -> str:
    registry_cache.invalidate()
    response = client.post(
        "/api/v1/decisions",
        {"task_class": "triage", "prompt": "Printer on fire"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert response.status_code == 201, response.content
    return str(response.json()["decision_id"])


def _cascade(client: Client, key: str, decision_id: str, body: Any) -> Any:
    return client.post(
        f"/api/v1/decisions/{decision_id}/cascade",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def test_cascade_accepts_or_escalates_and_records_the_path(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    TaskClass.objects.filter(slug="triage").update(
        output_schema={"type": "object", "required": ["queue"]}
    )
    roles_ensure()  # a transactional test: an earlier flush may have removed the role groups
    decision_id = _decide(client, api_key)
    good = _cascade(
        client, api_key, decision_id, {"output": '{"queue": "billing"}', "self_confidence": 0.95}
    )
    assert good.status_code == 200, good.content
    body = good.json()
    assert body["action"] == "accept" and body["escalate_to"] is None
    assert body["model"] == "small-local" and body["p_success"] >= body["threshold"]

    bad = _cascade(client, api_key, decision_id, {"output": '{"queue": "bil'})
    assert bad.status_code == 200
    body = bad.json()
    assert body["action"] == "escalate" and body["escalate_to"] == "mid-cloud"
    assert any("json broken" in r for r in body["reasons"])
    assert body["p_success"] < 0.1

    wrong_shape = _cascade(client, api_key, decision_id, {"output": '{"team": "x"}'})
    assert any("schema invalid" in r for r in wrong_shape.json()["reasons"])

    shaky = _cascade(
        client,
        api_key,
        decision_id,
        {"output": '{"queue": "b"}', "model": "mid-cloud", "logprobs": [-4.0, -3.5, -5.0]},
    )
    assert shaky.json()["action"] == "escalate"
    assert shaky.json()["escalate_to"] == "big-cloud"

    detail = client.get(
        f"/api/v1/decisions/{decision_id}", HTTP_AUTHORIZATION=f"Bearer {api_key}"
    ).json()
    recorded = detail["cascade"]
    assert [c["action"] for c in recorded] == ["accept", "escalate", "escalate", "escalate"]
    assert all("output" not in c for c in recorded)  # the answer itself is not stored
    # The decision page shows the checks.
    page = client_for("Viewer").get(f"/decisions/{decision_id}/")
    assert page.status_code == 200
    assert b'data-testid="cascade"' in page.content and b"escalate" in page.content


def test_hostile_input_other_tenants_and_limits(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    decision_id = _decide(client, api_key)
    for body, field in [
        ({"output": "ok\x00"}, "output"),
        ({"output": "ok", "extra": 1}, "extra"),
        ({"output": "ok", "self_confidence": 1.5}, "self_confidence"),
        ({"output": "ok", "logprobs": [0.5]}, "logprobs"),
        ({"output": "ok", "model": "big-clоud"}, "model"),  # Cyrillic o: not a model
        ({}, "output"),
    ]:
        response = _cascade(client, api_key, decision_id, body)
        assert response.status_code == 400, (body, response.content)
        assert field in response.json()["error"]["message"], response.json()
    not_json = client.post(
        f"/api/v1/decisions/{decision_id}/cascade",
        b"{",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key}",
    )
    assert not_json.status_code == 400

    # Another application's key never sees the decision; garbage ids are 404 too.
    other = Application.objects.create(slug="app-b", name="B", team=registry["team"])
    _, other_key = services.api_key_create(application=other, scopes=["decide"])
    assert _cascade(client, other_key, decision_id, {"output": "x"}).status_code == 404
    assert _cascade(client, api_key, "not-a-uuid", {"output": "x"}).status_code == 404
    _, read_only = services.api_key_create(application=registry["app"], scopes=["read"])
    assert _cascade(client, read_only, decision_id, {"output": "x"}).status_code == 403
    assert (
        client.post(
            f"/api/v1/decisions/{decision_id}/cascade",
            {"output": "x"},
            content_type="application/json",
        ).status_code
        == 401
    )

    # Replays append, up to a bound.
    for _ in range(MAX_CASCADE_CHECKS):
        assert _cascade(client, api_key, decision_id, {"output": "x"}).status_code == 200
    refused = _cascade(client, api_key, decision_id, {"output": "x"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
