"""schemathesis against the OpenAPI schema: no 5xx, responses conform, apps stay apart.

The WSGI application under test is the deployed one (fast path included), called in-process.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from controlplane import services
from controlplane.models import Application, Team
from routing.snapshot import registry_cache

pytestmark = pytest.mark.django_db(transaction=True)


def _load_schema() -> Any:
    from controlplane.wsgi import application

    # Served by the deployed WSGI application (the decision fast path included).
    return schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


schema = _load_schema()


@pytest.fixture
def keys(registry: dict[str, Any]) -> dict[str, str]:
    _, own = services.api_key_create(
        application=registry["app"], scopes=["decide", "report", "read"]
    )
    other = Application.objects.create(slug="other-app", name="Other", team=Team.objects.get())
    _, foreign = services.api_key_create(application=other, scopes=["read", "report"])
    return {"own": own, "foreign": foreign}


@schema.include(path_regex="^/api/v1/(decisions|models|task-classes|routing-tables)").parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_and_never_fails(case: Any, keys: dict[str, str]) -> None:
    registry_cache.invalidate()
    # Every check but "valid data is accepted": an unknown task class or model slug is
    # schema-valid yet rightly refused (400/404) by what the registry holds.
    case.call_and_validate(
        headers={"Authorization": f"Bearer {keys['own']}"},
        excluded_checks=[positive_data_acceptance],
    )


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
