"""Context condensing (routing/condense.py) over real HTTP: the replay fleet's local model
condenses a long context before the frontier model is called; what it saved is recorded and
shown on the dashboards."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from django.db.models import Sum
from django.test import Client
from openai.types.chat import ChatCompletionMessageParam

from controlplane import services
from controlplane.generation import generation_bump
from controlplane.models import BudgetSpend, TaskClass, Team
from evaluation.fleet import RunningFleet
from routing.condense import condensing_worst_tokens
from routing.engine import estimated_cost_usd
from routing.snapshot import registry_cache
from telemetry.budgets import holds_of
from telemetry.models import DecisionRecord, HourlyRollup
from telemetry.recorder import recorder
from telemetry.rollups import rollups_rebuild
from tests import factories
from tests.routing.gateway_support import (
    ASK,
    SUPPORT,
    client_for,
    outcome_of,
    registry_create,
)

pytestmark = pytest.mark.django_db(transaction=True)
LOCAL = "llama-3.1-8b-local"
RESEARCH = {"X-Switchyard-Task-Class": "research"}
DOCUMENT = " ".join(
    f"Clause {i}: the supplier delivers batch {i} within {i + 3} working days, penalties "
    f"of {i}% apply after that, and the buyer may cancel batch {i} in writing."
    for i in range(1, 25)
)
LONG: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": f"Contract excerpt:\n{DOCUMENT}"},
    {"role": "user", "content": "Which clause covers batch 7?"},
    {"role": "assistant", "content": "Clause 7 covers batch 7."},
    {"role": "user", "content": "What penalty applies if batch 7 is late?"},
]


@pytest.fixture
def fleet_registry(fleet: RunningFleet) -> dict[str, Any]:
    fleet.state.reset()
    made = registry_create(f"{fleet.url}/v1")
    research = factories.task_class_create(slug="research", condense_above_tokens=200)
    support = TaskClass.objects.get(slug="support")
    redact = TaskClass.objects.get(slug="redact")
    factories.routing_table_create(
        {
            research: (made["big"], []),
            support: (made["mid"], ["gpt-4o"]),
            redact: (made["local"], []),
        }
    )
    generation_bump()
    registry_cache.invalidate()
    return made


def _calls(fleet: RunningFleet, slug: str) -> int:
    models = httpx.get(f"{fleet.url}/admin/stats").json()["models"]
    return int(models.get(slug, {}).get("requests", 0))


def test_a_long_context_is_condensed_locally_before_the_frontier_call(
    fleet_registry: dict[str, Any], gateway_url: str, fleet: RunningFleet
) -> None:
    client = client_for(gateway_url, fleet_registry["secret"])
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=LONG, extra_headers=RESEARCH
    )
    assert raw.headers["x-switchyard-model"] == "gpt-4o"
    assert raw.parse().choices[0].message.content
    assert _calls(fleet, LOCAL) == 1 and _calls(fleet, "gpt-4o") == 1
    outcome = outcome_of(raw.headers["x-switchyard-decision-id"])
    condensed = outcome.validation["condensed"]
    assert condensed["model"] == LOCAL and "error" not in condensed
    assert condensed["input_tokens_before"] > 200 > condensed["input_tokens_after"] > 0
    assert Decimal(condensed["saved_usd"]) > 0
    # The frontier model was sent the condensed context: fewer input tokens than the full
    # request costs it.
    full = httpx.post(
        f"{fleet.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": LONG}
    ).json()["usage"]["prompt_tokens"]
    assert outcome.input_tokens < full
    # The overview shows the saving.
    rollups_rebuild()  # the dashboards read rollups (Celery beat refreshes them)
    viewer = Client()
    viewer.force_login(factories.user_create("Viewer"))
    html = viewer.get("/?range=24h").content.decode()
    assert 'data-kpi="condense-saved"' in html and "in 1 frontier calls" in html


def test_short_contexts_and_non_frontier_models_are_not_condensed(
    fleet_registry: dict[str, Any], gateway_url: str, fleet: RunningFleet
) -> None:
    TaskClass.objects.filter(slug="support").update(condense_above_tokens=10)
    generation_bump()
    registry_cache.invalidate()
    client = client_for(gateway_url, fleet_registry["secret"])
    short = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=RESEARCH
    )
    mid = client.chat.completions.with_raw_response.create(
        model="auto", messages=LONG, extra_headers=SUPPORT
    )  # the tier-2 model: no condensing, however long
    assert mid.headers["x-switchyard-model"] == "mistral-small-hosted"
    assert _calls(fleet, LOCAL) == 0
    for raw in (short, mid):
        assert "condensed" not in outcome_of(raw.headers["x-switchyard-decision-id"]).validation


def test_a_failed_condensing_call_leaves_the_request_whole(
    fleet_registry: dict[str, Any], gateway_url: str, fleet: RunningFleet
) -> None:
    fleet.state.configure(LOCAL, fail_rate=None, down=True)
    client = client_for(gateway_url, fleet_registry["secret"])
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=LONG, extra_headers=RESEARCH
    )
    assert raw.headers["x-switchyard-model"] == "gpt-4o"
    assert raw.parse().choices[0].message.content
    condensed = outcome_of(raw.headers["x-switchyard-decision-id"]).validation["condensed"]
    assert condensed["error"] == "HTTP 503" and "input_tokens_after" not in condensed


def test_the_condensing_call_is_charged_like_any_attempt(
    fleet_registry: dict[str, Any], gateway_url: str, fleet: RunningFleet
) -> None:
    team = Team.objects.get(slug="team-a")
    budget = services.budget_create(
        name="team-a-daily",
        scope="team",
        team=team,
        period="day",
        limit_usd=Decimal("100"),
        hard_action="block",
    )
    client = client_for(gateway_url, fleet_registry["secret"])
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=LONG, extra_headers=RESEARCH
    )
    assert _calls(fleet, LOCAL) == 1
    outcome = outcome_of(raw.headers["x-switchyard-decision-id"])
    condensing, answer = outcome.attempts
    assert condensing["model"] == LOCAL and condensing["purpose"] == "condense"
    assert condensing["status"] == "ok" and condensing["input_tokens"] > 200
    assert Decimal(condensing["cost_usd"]) > 0
    micro = Decimal("0.000001")  # the header and validation.condensed show 6 decimals
    assert Decimal(condensing["cost_usd"]).quantize(micro) == Decimal(
        outcome.validation["condensed"]["condense_cost_usd"]
    )
    assert answer["model"] == "gpt-4o" and "purpose" not in answer
    # One attempt at answering, not an escalation; its tokens are the frontier call's.
    assert outcome.attempt_count == 1 and not outcome.escalated
    assert outcome.final_model == "gpt-4o"
    assert outcome.input_tokens == answer["input_tokens"]
    # The cost header, the outcome, the budget and the dashboards' rollups agree.
    total = Decimal(condensing["cost_usd"]) + Decimal(answer["cost_usd"])
    assert outcome.cost_usd == total
    assert total.quantize(micro) == Decimal(raw.headers["x-switchyard-cost-usd"])
    recorder.close()  # the budget's lease gives back what it did not use
    spend = BudgetSpend.objects.get(budget=budget)
    assert spend.spent_usd == total and spend.reserved_usd == 0
    rollups_rebuild()
    rolled = HourlyRollup.objects.aggregate(cost=Sum("cost_usd"), escalations=Sum("escalations"))
    assert rolled["cost"] == total and rolled["escalations"] == 0


def _held(decision_id: str) -> Decimal:
    holds = holds_of(DecisionRecord.objects.get(id=decision_id).budget_holds)
    assert len(holds) == 1, "one budget applies"
    return holds[0][1]


def test_the_budget_hold_covers_the_condensing_call(
    fleet_registry: dict[str, Any], gateway_url: str, fleet: RunningFleet
) -> None:
    """A call that may be condensed holds the frontier call's worst case plus the
    condensing call's, so spent + reserved bounds what it can spend before it spends it."""
    whole = factories.task_class_create(slug="research-whole")  # the same, never condensed
    routes = {
        TaskClass.objects.get(slug="research"): (fleet_registry["big"], []),
        whole: (fleet_registry["big"], []),
        TaskClass.objects.get(slug="support"): (fleet_registry["mid"], ["gpt-4o"]),
        TaskClass.objects.get(slug="redact"): (fleet_registry["local"], []),
    }
    factories.routing_table_create(routes)
    generation_bump()
    registry_cache.invalidate()
    team = Team.objects.get(slug="team-a")
    budget = services.budget_create(
        name="team-a-daily",
        scope="team",
        team=team,
        period="day",
        limit_usd=Decimal("1"),
        soft_limit_pct=100,  # no downgrade before the hard limit: the hold decides alone
        hard_action="block",
    )
    client = client_for(gateway_url, fleet_registry["secret"])
    condensed = client.chat.completions.with_raw_response.create(
        model="auto", messages=LONG, extra_headers=RESEARCH
    )
    full = client.chat.completions.with_raw_response.create(
        model="auto", messages=LONG, extra_headers={"X-Switchyard-Task-Class": "research-whole"}
    )
    with_condensing = _held(condensed.headers["x-switchyard-decision-id"])
    without = _held(full.headers["x-switchyard-decision-id"])
    # The difference is the condensing call's worst case at the local model's price.
    record = DecisionRecord.objects.get(id=condensed.headers["x-switchyard-decision-id"])
    local = registry_cache.snapshot().models[LOCAL]
    worst = estimated_cost_usd(
        local, *condensing_worst_tokens(record.input_tokens, local.max_output_tokens, 200)
    )
    assert worst > 0
    assert with_condensing - without == pytest.approx(Decimal(str(worst)), abs=Decimal("1e-8"))
    # What the call did spend — the condensing call and the frontier call — is within it.
    outcome = outcome_of(condensed.headers["x-switchyard-decision-id"])
    assert outcome.attempts[0]["purpose"] == "condense"
    assert 0 < outcome.cost_usd <= with_condensing
    outcome_of(full.headers["x-switchyard-decision-id"])
    recorder.close()  # the lease gives back what it did not use
    spend = BudgetSpend.objects.get(budget=budget)
    assert spend.reserved_usd == 0
    # Room for the frontier call's worst case but not for the condensing call's too: the
    # condensing class is refused before any model is called, the other is not.
    room = without + (with_condensing - without) / 2
    BudgetSpend.objects.filter(pk=spend.pk).update(spent_usd=budget.limit_usd - room)
    registry_cache.invalidate()
    calls = _calls(fleet, LOCAL) + _calls(fleet, "gpt-4o")
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="auto", messages=LONG, extra_headers=RESEARCH)
    assert refused.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert _calls(fleet, LOCAL) + _calls(fleet, "gpt-4o") == calls
    admitted = client.chat.completions.with_raw_response.create(
        model="auto", messages=LONG, extra_headers={"X-Switchyard-Task-Class": "research-whole"}
    )
    assert admitted.headers["x-switchyard-model"] == "gpt-4o"
    outcome_of(admitted.headers["x-switchyard-decision-id"])
    row = BudgetSpend.objects.get(pk=spend.pk)
    assert row.spent_usd + row.reserved_usd <= budget.limit_usd
