"""schemathesis against the OpenAPI schema, every check: no 5xx, responses conform, every
documented status, valid data accepted and invalid data refused; apps stay apart.

The WSGI application under test is the deployed one (fast path included), called in-process.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config._checks import (
    NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES,
    POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES,
    NegativeDataRejectionConfig,
    PositiveDataAcceptanceConfig,
)

from controlplane import services
from controlplane.models import Application, Team
from evaluation import services as evaluation_services
from routing.snapshot import registry_cache
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def _load_schema() -> Any:
    from controlplane.wsgi import application

    # Served by the deployed WSGI application (the decision fast path included).
    return schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


schema = _load_schema()
# A well-formed decision that no model in the registry can serve (more tokens than any
# context window, a cost cap below every price) is a documented 422, not a refusal of
# valid data: the schema describes requests, not the registry's capacity.
schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
    expected_statuses=[*POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES, "422"]
)
# An invalid body over SWITCHYARD_MAX_BODY_BYTES is refused by its size (413) before it is
# decoded: that is a rejection too.
schema.config.checks.negative_data_rejection = NegativeDataRejectionConfig(
    expected_statuses=[*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
)


@schemathesis.hook("before_call")
def _registered_task_class(ctx: Any, case: Any, **kwargs: Any) -> None:
    """Valid data names a task class the registry holds (any slug is well-formed, but an
    unknown one is rightly a 400); invalid data is sent as generated."""
    meta = case.meta
    positive = meta is not None and meta.generation.mode.is_positive
    if positive and case.operation.path == "/api/v1/decisions" and isinstance(case.body, dict):
        case.body["task_class"] = "triage"


@pytest.fixture
def keys(registry: dict[str, Any]) -> dict[str, str]:
    _, own = services.api_key_create(
        application=registry["app"], scopes=["decide", "report", "read"]
    )
    other = Application.objects.create(slug="other-app", name="Other", team=Team.objects.get())
    _, foreign = services.api_key_create(application=other, scopes=["read", "report"])
    evaluation_services.proposal_create_manual(
        task_class=registry["triage"],
        to_model=registry["mid"],
        user=factories.user_create(None),
        rationale="Something for the proposals API to list.",
    )
    return {"own": own, "foreign": foreign}


@schema.include(
    path_regex="^/api/v1/(decisions|models|task-classes|routing-tables|proposals|handoffs)"
).parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_and_never_fails(case: Any, keys: dict[str, str]) -> None:
    registry_cache.invalidate()
    case.call_and_validate(headers={"Authorization": f"Bearer {keys['own']}"})


def test_another_application_cannot_read_a_decision(
    keys: dict[str, str], registry: dict[str, Any]
) -> None:
    from django.test import Client

    client = Client()
    created = client.post(
        "/api/v1/decisions",
        {"task_class": "triage"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {keys['own']}",
    )
    decision_id = created.json()["decision_id"]
    for path in (f"/api/v1/decisions/{decision_id}",):
        foreign = client.get(path, HTTP_AUTHORIZATION=f"Bearer {keys['foreign']}")
        assert foreign.status_code == 404
    report = client.post(
        f"/api/v1/decisions/{decision_id}/outcome",
        {
            "attempts": [
                {
                    "model": "small-local",
                    "status": "ok",
                    "latency_ms": 1,
                    "input_tokens": 1,
                    "output_tokens": 1,
                }
            ],
            "final_status": "ok",
        },
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {keys['foreign']}",
    )
    assert report.status_code == 404
