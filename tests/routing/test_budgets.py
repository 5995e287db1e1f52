"""Teams, budget reservations, outcome charging and the price in force, through the API.

Real PostgreSQL; decisions go through the real recorder (its own connection), so the tests
commit (transactional database)."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from controlplane import services
from controlplane.models import (
    Budget,
    BudgetLease,
    BudgetSpend,
    Team,
)
from controlplane.roles import ROLE_NAMES
from routing.pricing import next_price_change, price_in_force, price_schedule
from routing.snapshot import registry_cache
from telemetry.budgets import budget_leases_expire, holds_of
from telemetry.models import DecisionOutcome, DecisionRecord, HourlyRollup
from telemetry.recorder import recorder
from telemetry.rollups import rollups_recompute
from tests.factories import decision_post as post
from tests.factories import outcome_post as report

pytestmark = pytest.mark.django_db(transaction=True)

# triage routes to small-local (0.10 in / 0.20 out per Mtok, 8192-token window) with an
# output cap of 64: 8 000 input tokens cost at most 0.0008 + 0.0000128.
INPUT_TOKENS = 8_000
WORST = Decimal("0.0008128")


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    registry_cache.invalidate()


def attempt(model: str = "small-local", input_tokens: int = 50_000, output: int = 10) -> Any:
    return {
        "model": model,
        "status": "ok",
        "latency_ms": 100,
        "input_tokens": input_tokens,
        "output_tokens": output,
    }


def budget(team: Team, *, spent: str, limit: str = "100", name: str = "", **fields: Any) -> Budget:
    b = services.budget_create(
        name=name or f"{team.slug}-monthly",
        scope="team",
        team=team,
        period="month",
        limit_usd=Decimal(limit),
        **fields,
    )
    BudgetSpend.objects.create(
        budget=b, period_start=b.period_start(timezone.now()), spent_usd=Decimal(spent)
    )
    return b


def spend(b: Budget) -> tuple[Decimal, Decimal]:
    """(spent, reserved) once the recorder's budget leases gave back what they did not use."""
    recorder.close()  # the writer closes its leases, then its connection
    row = BudgetSpend.objects.get(budget=b, period_start=b.period_start(timezone.now()))
    return row.spent_usd, row.reserved_usd


def holds(decision_id: str) -> Decimal:
    """What a decision holds against budgets (one budget applies in these tests)."""
    stored = DecisionRecord.objects.get(id=decision_id).budget_holds
    return sum((amount for _, amount in holds_of(stored)), Decimal(0))


# --- teams --------------------------------------------------------------------------------


def test_a_body_team_of_another_team_is_403_naming_the_field(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    other = Team.objects.create(slug="team-b", name="Team B")
    other_budget = budget(other, spent="0")
    response = post(client, api_key, {"task_class": "triage", "team": "team-b"})
    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert error["code"] == "forbidden" and "team" in error["fields"]
    # An unknown team is refused the same way (no hint whether it exists).
    assert post(client, api_key, {"task_class": "triage", "team": "nobody"}).status_code == 403
    assert DecisionRecord.objects.count() == 0
    assert spend(other_budget) == (Decimal(0), Decimal(0))
    # Its own team may be named.
    assert post(client, api_key, {"task_class": "triage", "team": "team-a"}).status_code == 201


def test_an_entitled_application_acts_for_another_team_and_charges_it(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    other = Team.objects.create(slug="team-b", name="Team B")
    own_budget = budget(registry["team"], spent="0")
    other_budget = budget(other, spent="0")
    registry["app"].acts_for_teams.add(other)
    response = post(
        client, api_key, {"task_class": "triage", "team": "team-b", "input_tokens": INPUT_TOKENS}
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert [b["name"] for b in body["budgets"]] == ["team-b-monthly"]
    assert DecisionRecord.objects.get().team == "team-b"
    assert spend(other_budget) == (Decimal(0), WORST)
    assert report(client, api_key, body["decision_id"], [attempt()]).status_code == 200
    cost = Decimal("0.005002")  # 50 000 * 0.10 + 10 * 0.20 per Mtok
    assert spend(other_budget) == (cost, Decimal(0))
    assert spend(own_budget) == (Decimal(0), Decimal(0))
    # Removing the entitlement reaches the key cache (registry generation).
    registry["app"].acts_for_teams.remove(other)
    assert post(client, api_key, {"task_class": "triage", "team": "team-b"}).status_code == 403


def test_route_conditions_see_the_effective_team_not_the_body(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    draft = services.routing_version_draft_create()
    services.route_set(
        version=draft,
        task_class=registry["triage"],
        primary=registry["big"],
        fallbacks=["small-local"],
        teams=["team-b"],
    )
    services.routing_version_activate(version=draft)
    Team.objects.create(slug="team-b", name="Team B")
    assert post(client, api_key, {"task_class": "triage", "team": "team-b"}).status_code == 403
    body = post(client, api_key, {"task_class": "triage"}).json()
    assert body["model"]["slug"] == "small-local" and body["strategy"] == "fallback"


# --- reservations -------------------------------------------------------------------------


def test_reservations_hold_a_hard_limit_then_settle_and_expire(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    # Room for three worst cases (0.0025 left), not four.
    b = budget(registry["team"], spent="99.9975", hard_action="block")
    ids = []
    for _ in range(3):
        response = post(client, api_key, {"task_class": "triage", "input_tokens": INPUT_TOKENS})
        assert response.status_code == 201, response.content
        ids.append(response.json()["decision_id"])
    assert spend(b) == (Decimal("99.9975"), 3 * WORST)
    view = post(client, api_key, {"task_class": "triage", "input_tokens": 10}).json()["budgets"][0]
    assert view["reserved_usd"] == pytest.approx(float(3 * WORST), abs=1e-6)
    refused = post(client, api_key, {"task_class": "triage", "input_tokens": INPUT_TOKENS})
    assert refused.status_code == 429, refused.content
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert error["budget"]["name"] == b.name
    assert error["budget"]["reserved_usd"] >= float(3 * WORST)
    assert DecisionRecord.objects.count() == 4  # the small one fitted; the refused one is gone
    small = DecisionRecord.objects.exclude(id__in=ids).get()
    assert all(holds(i) == WORST for i in ids)
    assert spend(b) == (Decimal("99.9975"), 3 * WORST + holds(str(small.id)))

    # Settle: the hold is replaced by the real cost (once: a repeated report settles nothing).
    assert report(client, api_key, ids[0], [attempt()]).status_code == 200
    assert report(client, api_key, ids[0], [attempt()]).status_code == 200
    cost = Decimal("0.005002")
    assert spend(b) == (Decimal("99.9975") + cost, 2 * WORST + holds(str(small.id)))
    lease_id = DecisionRecord.objects.get(id=ids[0]).budget_holds[0][0]
    assert BudgetLease.objects.get(id=lease_id).settled_usd == WORST

    # Expire: unsettled holds are released after the TTL; a late outcome still pays.
    assert budget_leases_expire(now=timezone.now()) == 0
    later = timezone.now() + timedelta(seconds=910)  # TTL (900 s) after the leases closed
    assert budget_leases_expire(now=later) >= 1
    assert not BudgetLease.objects.exists()
    assert spend(b) == (Decimal("99.9975") + cost, Decimal(0))
    assert report(client, api_key, ids[1], [attempt()]).status_code == 200
    assert spend(b) == (Decimal("99.9975") + 2 * cost, Decimal(0))


def test_a_local_only_budget_keeps_a_request_local_when_its_worst_case_does_not_fit(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    draft = services.routing_version_draft_create()
    services.route_set(
        version=draft,
        task_class=registry["triage"],
        primary=registry["big"],
        fallbacks=["small-local"],
    )
    services.routing_version_activate(version=draft)
    # big-cloud's worst case (2.50 in / 10 out): 8 000 in + 64 out = 0.02064 > 0.01 left.
    b = budget(registry["team"], spent="99.99", hard_action="local_only", soft_limit_pct=100)
    response = post(client, api_key, {"task_class": "triage", "input_tokens": INPUT_TOKENS})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["model"]["slug"] == "small-local" and body["strategy"] == "budget"
    assert body["budgets"][0]["action"] == "local_only"
    assert DecisionRecord.objects.get().model == "small-local"
    assert spend(b) == (Decimal("99.99"), WORST)


# --- outcomes -----------------------------------------------------------------------------


def test_outcome_naming_an_unknown_model_is_400_and_charges_nothing(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    b = budget(registry["team"], spent="0")
    decision_id = post(client, api_key, {"task_class": "triage"}).json()["decision_id"]
    response = report(client, api_key, decision_id, [attempt(), attempt("gpt-9-imaginary")])
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and list(error["fields"]) == ["attempts[1].model"]
    assert not DecisionOutcome.objects.exists()
    assert spend(b)[0] == Decimal(0)


def test_a_charged_attempt_is_immutable_and_dashboards_agree_with_budgets(
    registry: dict[str, Any], api_key: str, client: Client
) -> None:
    b = budget(registry["team"], spent="0")
    decision_id = post(client, api_key, {"task_class": "triage"}).json()["decision_id"]
    first = report(client, api_key, decision_id, [attempt()])
    assert first.status_code == 200
    again = report(client, api_key, decision_id, [attempt()])
    assert again.status_code == 200 and again.json() == first.json()
    changed = report(client, api_key, decision_id, [attempt(input_tokens=1)])
    assert changed.status_code == 409 and changed.json()["error"]["code"] == "conflict"
    dropped = report(client, api_key, decision_id, [attempt("big-cloud")])
    assert dropped.status_code == 409
    # Appending an attempt after the charged one is a new charge, not a rewrite.
    extended = report(client, api_key, decision_id, [attempt(), attempt("big-cloud", 1000, 10)])
    assert extended.status_code == 200
    expected = Decimal("0.005002") + Decimal("0.0026")  # big: 1000*2.5 + 10*10 per Mtok
    outcome = DecisionOutcome.objects.get()
    assert outcome.cost_usd == expected and outcome.charged_attempts == 2
    assert spend(b) == (expected, Decimal(0))
    now = timezone.now()
    rollups_recompute(start=now - timedelta(hours=2), end=now + timedelta(hours=1))
    rolled = sum((r.cost_usd for r in HourlyRollup.objects.filter(team="team-a")), Decimal(0))
    assert rolled == spend(b)[0]


# --- price in force at t ------------------------------------------------------------------


def test_the_one_price_rule() -> None:
    class P:
        def __init__(self, at: Any, price: str) -> None:
            self.effective_from = at
            self.input_usd_per_mtok = Decimal(price)
            self.output_usd_per_mtok = Decimal(price)

    t0 = timezone.now()
    schedule = price_schedule([P(t0 + timedelta(days=1), "2"), P(t0, "1")])
    assert price_in_force(schedule, t0 - timedelta(seconds=1)) is None
    assert price_in_force(schedule, t0).input_usd_per_mtok == Decimal(1)  # type: ignore[union-attr]
    later = price_in_force(schedule, t0 + timedelta(days=1))
    assert later is not None and later.input_usd_per_mtok == Decimal(2)
    assert next_price_change([schedule], t0) == t0 + timedelta(days=1)
    assert next_price_change([schedule], t0 + timedelta(days=2)) is None


def test_a_price_taking_effect_later_is_picked_up_without_a_registry_change(
    registry: dict[str, Any], api_key: str, client: Client, settings: Any
) -> None:
    b = budget(registry["team"], spent="0")
    change = timezone.now() + timedelta(seconds=3)
    services.model_price_add(
        model=registry["local"],
        input_usd_per_mtok="1.00",
        output_usd_per_mtok="2.00",
        effective_from=change,
    )
    body = {"task_class": "triage", "input_tokens": INPUT_TOKENS}
    before = post(client, api_key, body).json()["decision_id"]
    # From here on nothing touches the registry: the generation does not move.
    settings.SWITCHYARD_SNAPSHOT_CHECK_S = 3600.0
    settings.SWITCHYARD_BUDGET_REFRESH_S = 3600.0
    registry_cache.snapshot()
    time.sleep(max(0.0, (change - timezone.now()).total_seconds()) + 0.1)
    after = post(client, api_key, body).json()["decision_id"]
    assert holds(before) == WORST
    assert holds(after) == Decimal("0.008128")  # 8 000 * 1.00 + 64 * 2.00 per Mtok
    # Outcomes are charged at the price in force at decision time, whenever reported.
    assert report(client, api_key, before, [attempt()]).status_code == 200
    assert report(client, api_key, after, [attempt()]).status_code == 200
    assert spend(b)[0] == Decimal("0.005002") + Decimal("0.05002")


# --- pages ----------------------------------------------------------------------------------


def test_budget_pages_show_spent_and_reserved(
    registry: dict[str, Any], api_key: str, client: Client, role_client: Any
) -> None:
    b = budget(registry["team"], spent="0")
    decision_id = post(client, api_key, {"task_class": "triage"}).json()["decision_id"]
    assert report(client, api_key, decision_id, [attempt()]).status_code == 200
    now = timezone.now()
    rollups_recompute(start=now - timedelta(hours=1), end=now + timedelta(hours=1))
    BudgetSpend.objects.filter(budget=b).update(
        spent_usd=Decimal("12.34"), reserved_usd=Decimal("5.67")
    )
    for name in ROLE_NAMES:  # a transactional test's flush removed the migration's groups
        Group.objects.get_or_create(name=name)
    viewer = role_client("Viewer")
    registry_page = viewer.get("/registry/").content.decode()
    assert "$12.34" in registry_page and "$5.67" in registry_page
    card = viewer.get("/", HTTP_HX_TARGET="budgets", HTTP_HX_REQUEST="true").content.decode()
    assert "$12.34</span> spent + $5.67 reserved" in card
