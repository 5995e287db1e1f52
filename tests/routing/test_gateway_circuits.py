"""Upstream health over real HTTP: the replay fleet really failing (a model taken down),
the gateway's circuit breakers opening, the engine routing around them, a half-open probe
closing them again, a local model answering when every cloud model is down — and the state
on /metrics and the model page."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from django.test import Client

from controlplane import services
from controlplane.generation import generation_bump
from controlplane.models import Application, TaskClass
from evaluation.fleet import RunningFleet
from routing.circuit_board import board, circuit_view
from routing.snapshot import registry_cache
from telemetry.models import DecisionRecord
from tests import factories
from tests.routing.gateway_support import (
    ASK,
    SUPPORT,
    client_for,
    outcome_of,
    registry_create,
)

pytestmark = pytest.mark.django_db(transaction=True)
MID = "mistral-small-hosted"


@pytest.fixture
def fleet_registry(fleet: RunningFleet, settings: Any) -> dict[str, Any]:
    settings.SWITCHYARD_CIRCUIT_FAILURES = 2
    settings.SWITCHYARD_CIRCUIT_COOLDOWN_S = 4.0  # long enough to look at it open
    fleet.state.reset()
    return registry_create(f"{fleet.url}/v1")


def _calls(fleet: RunningFleet, slug: str) -> int:
    return int(httpx.get(f"{fleet.url}/admin/stats").json()["models"][slug]["requests"])


def _wait_routable(slug: str, seconds: float = 10.0) -> None:
    """Until this process's engine may choose ``slug`` again (the registry refresh shows a
    circuit whose cool-down is over as half-open, every SWITCHYARD_SNAPSHOT_CHECK_S)."""
    deadline = time.monotonic() + seconds
    while registry_cache.snapshot().models[slug].circuit_open:
        assert time.monotonic() < deadline, f"{slug} still routed around"
        time.sleep(0.05)


def test_a_failing_model_is_routed_around_then_probed_back(
    fleet_registry: dict[str, Any], gateway_url: str, fleet: RunningFleet
) -> None:
    fleet.state.configure(MID, fail_rate=None, down=True)
    client = client_for(gateway_url, fleet_registry["secret"])
    for _ in range(2):  # each call: the mid model fails, the fallback answers
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=ASK, extra_headers=SUPPORT
        )
        assert raw.headers["x-switchyard-model"] == "gpt-4o"
        assert raw.headers["x-switchyard-escalations"] == "1"
    assert circuit_view(MID) is not None and circuit_view(MID).state == "open"  # type: ignore[union-attr]
    failed_calls = _calls(fleet, MID)
    # Open: the engine routes to the fallback directly; the sick model is not called.
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT
    )
    assert raw.headers["x-switchyard-model"] == "gpt-4o"
    assert raw.headers["x-switchyard-escalations"] == "0"
    record = DecisionRecord.objects.get(id=raw.headers["x-switchyard-decision-id"])
    assert record.model == "gpt-4o" and record.strategy == "fallback"
    assert "circuit open" in record.reason
    assert _calls(fleet, MID) == failed_calls
    # Visible on /metrics and on the model page.
    app = Application.objects.get(slug="app-a")
    _, reader = services.api_key_create(application=app, scopes=["read"])
    metrics = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {reader}").content.decode()
    assert f'switchyard_model_circuit_state{{model="{MID}"}} 2.0' in metrics
    assert f'switchyard_model_circuit_opened_total{{model="{MID}"}}' in metrics
    viewer = Client()
    viewer.force_login(factories.user_create("Viewer"))
    page = viewer.get(f"/dashboards/models/{MID}/").content.decode()
    circuit = page[page.index('data-testid="circuit"') :][:400]
    assert '<strong class="bad">open</strong>' in circuit, circuit
    # The model recovers; after the cool-down one probe closes the circuit.
    fleet.state.configure(MID, fail_rate=None, down=False)
    _wait_routable(MID)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT
    )
    assert raw.headers["x-switchyard-model"] == MID
    assert circuit_view(MID).state == "closed"  # type: ignore[union-attr]
    assert _calls(fleet, MID) == failed_calls + 1
    page = viewer.get(f"/dashboards/models/{MID}/").content.decode()
    assert "<strong>closed</strong>" in page


def test_a_failed_probe_opens_the_circuit_again(
    fleet_registry: dict[str, Any], gateway_url: str, fleet: RunningFleet
) -> None:
    fleet.state.configure(MID, fail_rate=None, down=True)
    client = client_for(gateway_url, fleet_registry["secret"])
    for _ in range(2):
        client.chat.completions.create(model="auto", messages=ASK, extra_headers=SUPPORT)
    first = circuit_view(MID)
    assert first is not None and first.state == "open"
    _wait_routable(MID)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT
    )
    assert raw.headers["x-switchyard-model"] == "gpt-4o"  # the probe failed, escalated
    again = circuit_view(MID)
    assert again is not None and again.state == "open" and again.opened_at > first.opened_at
    outcome = outcome_of(raw.headers["x-switchyard-decision-id"])
    assert outcome.attempts[0]["model"] == MID
    assert outcome.attempts[0]["escalation_reason"] == "HTTP 503"  # the fleet says it is down


def test_every_cloud_model_down_answers_locally_where_the_class_allows_it(
    fleet_registry: dict[str, Any], gateway_url: str, fleet: RunningFleet
) -> None:
    for slug in (MID, "gpt-4o"):
        fleet.state.configure(slug, fail_rate=None, down=True)
    client = client_for(gateway_url, fleet_registry["secret"])
    for _ in range(2):  # both cloud models fail on each call: a clean 502
        raw = httpx.post(
            f"{gateway_url}/v1/chat/completions",
            json={"model": "support", "messages": ASK},
            headers={"Authorization": f"Bearer {fleet_registry['secret']}"},
        )
        assert raw.status_code == 502
    assert board.allow(MID) is False and board.allow("gpt-4o") is False
    # Not allowed to degrade: every route model is down, nothing is called.
    raw = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        json={"model": "support", "messages": ASK},
        headers={"Authorization": f"Bearer {fleet_registry['secret']}"},
    )
    assert raw.status_code == 422
    assert raw.json()["error"]["code"] == "no_eligible_model"
    reasons = {c["model"]: c["reason"] for c in raw.json()["error"]["candidates"]}
    assert reasons == {MID: "circuit open", "gpt-4o": "circuit open"}
    # Allowed: the local model answers (degraded but working while the cloud is away).
    TaskClass.objects.filter(slug="support").update(local_when_down=True)
    generation_bump()
    registry_cache.invalidate()
    local = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT
    )
    assert local.headers["x-switchyard-model"] == "llama-3.1-8b-local"
    assert local.headers["x-switchyard-tier"] == "1"
    assert local.parse().choices[0].message.content
    record = DecisionRecord.objects.get(id=local.headers["x-switchyard-decision-id"])
    assert "circuit open" in record.reason
