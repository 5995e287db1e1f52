"""What the gateway's tests share (routing/gateway.py) besides their fixtures
(tests/routing/conftest.py): a registry of fleet models, an OpenAI client for the gateway,
and waiting for a call's outcome."""

from __future__ import annotations

import time
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from controlplane import services
from controlplane.models import Application, Team
from routing.circuit_board import board as circuits
from telemetry.models import DecisionOutcome
from tests import factories


def registry_create(base_url: str) -> dict[str, Any]:
    """Fleet models (local tier 1, cloud tiers 2 and 3); ``support`` routed to the tier-2
    model with the tier-3 one as fallback (output cap 24), ``redact`` local-only. Every
    circuit closed (the breakers live in the process and in Redis across tests)."""
    circuits.reset()
    local = factories.model_create(
        slug="llama-3.1-8b-local", provider_model="llama-3.1-8b-local", base_url=base_url
    )
    mid = factories.model_create(
        slug="mistral-small-hosted",
        provider_model="mistral-small-hosted",
        base_url=base_url,
        tier=2,
        locality="cloud",
        context_window=32000,
        input_usd_per_mtok="1.00",
        output_usd_per_mtok="3.00",
    )
    big = factories.model_create(
        slug="gpt-4o",
        provider_model="gpt-4o",
        base_url=base_url,
        tier=3,
        locality="cloud",
        context_window=128000,
        input_usd_per_mtok="2.50",
        output_usd_per_mtok="10.00",
    )
    support = factories.task_class_create(slug="support", default_output_cap=24)
    redact = factories.task_class_create(slug="redact", data_policy="local_only")
    factories.routing_table_create(
        {support: (mid, ["gpt-4o"]), redact: (local, [])},
    )
    team = Team.objects.create(slug="team-a", name="Team A")
    Team.objects.create(slug="team-b", name="Team B")
    app = Application.objects.create(slug="app-a", name="App A", team=team)
    _, secret = services.api_key_create(application=app, scopes=["decide", "report", "read"])
    return {"local": local, "mid": mid, "big": big, "secret": secret}


def client_for(gateway_url: str, secret: str, **kwargs: Any) -> openai.OpenAI:
    # No retries: every call the client makes is one decision.
    return openai.OpenAI(
        base_url=f"{gateway_url}/v1", api_key=secret, max_retries=0, timeout=30, **kwargs
    )


SUPPORT = {"X-Switchyard-Task-Class": "support"}
ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "My router keeps dropping the connection. What can I do?"}
]


def outcome_of(decision_id: str, wait_s: float = 5.0) -> DecisionOutcome:
    """The call's outcome: group-committed right after the answer was sent, so it may
    land a moment after the client has read it."""
    deadline = time.monotonic() + wait_s
    while True:
        outcome = DecisionOutcome.objects.filter(decision_id=decision_id).first()
        if outcome is not None:
            return outcome
        assert time.monotonic() < deadline, f"no outcome for {decision_id}"
        time.sleep(0.02)
