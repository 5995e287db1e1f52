"""LLM-as-router: the router prompt and answer parsing, the decision it makes (or the rule
that stands), and live decisions through the API with the replay fleet as the router model
— including a router that never answers (timeout: the rule decides)."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from controlplane import services as registry_services
from controlplane.models import Application, Team
from evaluation.fleet import RunningFleet
from evaluation.workload import workload_items
from routing.engine import (
    DecisionRequest,
    ModelInfo,
    RouteInfo,
    TaskClassInfo,
    decide,
    snapshot_build,
)
from routing.llm_router import decision_llm_routed, router_answer_parse, router_messages
from routing.models import LlmRouter
from routing.snapshot import registry_cache
from telemetry.models import DecisionRecord
from tests import factories
from tests.browser import roles_ensure
from tests.conftest import client_for

CLASS = "multi-step-reasoning"


def test_router_prompt_and_answer_parsing() -> None:
    messages = router_messages([("small", "cheap, easy sums"), ("big", "")], "Add 2 and 2")
    assert messages[0]["role"] == "system" and "name only" in messages[0]["content"]
    user = messages[1]["content"]
    assert "- small: cheap, easy sums\n- big: no description\n" in user
    assert "<<<\nAdd 2 and 2\n>>>" in user
    names = ["gpt-4o", "gpt-4o-mini", "llama-local"]
    assert router_answer_parse("gpt-4o-mini", names) == "gpt-4o-mini"
    assert router_answer_parse("`llama-local`.", names) == "llama-local"
    assert router_answer_parse("I would pick gpt-4o-mini here.", names) == "gpt-4o-mini"
    assert router_answer_parse("gpt-4o, or llama-local", names) is None
    assert router_answer_parse("the big one", names) is None


def _model(slug: str, tier: int, locality: str, price: float) -> ModelInfo:
    return ModelInfo(
        slug=slug, provider="p", base_url="http://127.0.0.1:1/v1", provider_model=slug,
        version="1", tier=tier, locality=locality, context_window=32000,
        max_output_tokens=512, status="active", input_usd_per_mtok=price,
        output_usd_per_mtok=price,
    )  # fmt: skip


def test_decision_follows_a_valid_pick_and_keeps_the_rule_otherwise() -> None:
    snapshot = snapshot_build(
        version=2,
        models=[_model("small", 1, "local", 0.1), _model("big", 3, "cloud", 10.0)],
        task_classes=[TaskClassInfo(slug="qa", default_output_cap=256)],
        routes=[RouteInfo(task_class="qa", primary="big", fallbacks=("small",))],
        quality={("small", "qa"): 0.66},
    )
    rule = decide(DecisionRequest(task_class="qa", input_tokens=50, prompt="x"), snapshot)
    assert rule.model.slug == "big"
    picked = decision_llm_routed(
        rule, snapshot, task_class="qa", router_model="small", status="ok",
        latency_ms=42.0, answer="small", choice="small",
    )  # fmt: skip
    assert picked.model.slug == "small" and picked.strategy == "llm"
    assert [f.model.slug for f in picked.fallbacks] == ["big"]
    assert picked.confidence == 0.66 and picked.max_output_tokens == 256
    assert picked.router_call is not None and picked.router_call["applied"]
    assert picked.router_call["latency_ms"] == 42.0 and picked.router_call["answer"] == "small"
    assert "picked small" in picked.reason
    timed_out = decision_llm_routed(
        rule, snapshot, task_class="qa", router_model="small", status="timeout",
        latency_ms=800.0, answer="", choice=None,
    )  # fmt: skip
    assert timed_out.model.slug == "big" and timed_out.strategy == "rule"
    assert timed_out.reason.startswith("LLM router small timeout after 800 ms: the rule stands.")
    assert timed_out.router_call is not None and not timed_out.router_call["applied"]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    finally:
        server.close()


@pytest.mark.django_db(transaction=True)
def test_live_decisions_are_routed_by_the_fleet_router_model(
    client: Client, eval_fleet: RunningFleet, silent_server: str
) -> None:
    roles_ensure()
    base_url = f"{eval_fleet.url}/v1"
    local = factories.model_create(
        slug="llama-3.1-8b-local", provider_model="llama-3.1-8b-local", base_url=base_url,
        tier=1, locality="local", input_usd_per_mtok="0.03", output_usd_per_mtok="0.06",
    )  # fmt: skip
    factories.model_create(
        slug="gpt-4o-mini", provider_model="gpt-4o-mini", base_url=base_url, tier=2,
        locality="cloud", input_usd_per_mtok="0.15", output_usd_per_mtok="0.60",
    )  # fmt: skip
    big = factories.model_create(
        slug="gpt-4o", provider_model="gpt-4o", base_url=base_url, tier=3, locality="cloud",
        input_usd_per_mtok="2.50", output_usd_per_mtok="10.00",
    )  # fmt: skip
    # A router model of its own: the fleet's small local model under another slug.
    router_model = factories.model_create(
        slug="router-local", provider_model="qwen2.5-7b-local", base_url=base_url, tier=1,
        locality="local",
    )  # fmt: skip
    reasoning = factories.task_class_create(slug=CLASS, prompt_retention_days=1)
    routes = {reasoning: (big, ["gpt-4o-mini", "llama-3.1-8b-local"])}
    factories.routing_table_create(routes, strategies={CLASS: "llm"})
    config = LlmRouter.objects.create(
        task_class=reasoning,
        router_model=router_model,
        timeout_ms=2000,
        descriptions={
            "llama-3.1-8b-local": "small local model: one-step sums",
            "gpt-4o-mini": "mid model: a few steps",
            "gpt-4o": "frontier model: long multi-step problems",
        },
    )
    team = Team.objects.create(slug="team-l", name="Team L")
    app = Application.objects.create(slug="app-l", name="App L", team=team)
    registry_cache.invalidate()
    _, secret = registry_services.api_key_create(application=app, scopes=["decide"])

    def post(prompt: str) -> dict[str, Any]:
        response = client.post(
            "/api/v1/decisions",
            {"task_class": CLASS, "prompt": prompt},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {secret}",
        )
        assert response.status_code == 201, response.content
        body: dict[str, Any] = response.json()
        return body

    picks: Counter[tuple[int, str]] = Counter()
    for item in workload_items(CLASS, size=60):
        body = post(item.prompt)
        assert body["strategy"] == "llm", body["reason"]
        picks[(item.difficulty, body["model"]["slug"])] += 1
    print("LLM router picks by difficulty:", dict(picks))
    # The router sends easy items to the local model and hard ones to the frontier model
    # more often than not.
    assert picks[(1, "llama-3.1-8b-local")] > picks[(1, "gpt-4o")]
    assert picks[(3, "gpt-4o")] > picks[(3, "llama-3.1-8b-local")]
    stored = DecisionRecord.objects.filter(strategy="llm").first()
    assert stored is not None
    call = stored.path["llm_router"]
    assert call["router_model"] == "router-local" and call["status"] == "ok"
    assert call["applied"] and call["answer"] == call["choice"] and call["latency_ms"] > 0
    viewer = client_for("Viewer")
    page = viewer.get(f"/decisions/{stored.id}/")
    assert page.status_code == 200
    assert b'data-testid="llm-router-call"' in page.content
    assert b'data-testid="llm-router"' in viewer.get(f"/dashboards/task-classes/{CLASS}/").content
    # Personal data: the restriction decides, the router is not asked.
    personal = post("Call me at +44 20 7946 0958: what is 2 + 2?")
    assert personal["strategy"] == "policy"
    # A router that never answers: the timeout bounds the wait and the rule stands.
    local.refresh_from_db()
    router_model.base_url = silent_server
    router_model.save()
    config.timeout_ms = 300
    config.save()
    registry_cache.invalidate()
    body = post(workload_items(CLASS, size=1)[0].prompt)
    assert body["strategy"] == "rule" and body["model"]["slug"] == "gpt-4o"
    assert "LLM router router-local timeout after" in body["reason"]
    record = DecisionRecord.objects.get(id=body["decision_id"])
    assert record.path["llm_router"]["status"] == "timeout"
    assert 250 <= record.path["llm_router"]["latency_ms"] < 2000
    # The router stays enabled, but a route whose strategy is not llm decides by its rule:
    # the router is not asked (nothing on the path) and the page says it is not used.
    factories.routing_table_create(routes)  # strategy rule
    registry_cache.invalidate()
    body = post(workload_items(CLASS, size=2)[1].prompt)
    assert body["strategy"] == "rule" and body["model"]["slug"] == "gpt-4o", body["reason"]
    assert "LLM router" not in body["reason"]
    assert "llm_router" not in DecisionRecord.objects.get(id=body["decision_id"]).path
    page = viewer.get(f"/dashboards/task-classes/{CLASS}/").content.decode()
    assert "is enabled but not used: the route's strategy is rule" in page
