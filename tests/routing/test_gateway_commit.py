"""The gateway calls the model while the decision's COMMIT runs, and sends nothing before
that COMMIT has returned (routing.gateway._committed): a COMMIT made slow or made to fail by
a deferred trigger (tests/commit_faults.py) in the real PostgreSQL, the official openai
client in front, the replay fleet behind."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import psycopg
import pytest

from controlplane import services
from controlplane.models import BudgetSpend, Team
from evaluation.fleet import RunningFleet
from telemetry.budgets import BudgetLeases
from telemetry.models import DecisionOutcome, DecisionRecord
from telemetry.recorder import connection_params, recorder
from tests import commit_faults
from tests.routing.gateway_support import (
    ASK,
    SUPPORT,
    client_for,
    outcome_of,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def faults() -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(**connection_params(), autocommit=True)
    commit_faults.install(conn)
    recorder.close()  # the writer's connection reopens with the trigger in place
    try:
        yield conn
    finally:
        commit_faults.remove(conn)
        conn.close()


def _fleet_calls(fleet: RunningFleet) -> int:
    stats = httpx.get(f"{fleet.url}/admin/stats").json()
    return sum(int(m["requests"]) for m in stats["models"].values())


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_the_answer_waits_for_the_decisions_commit(
    fleet_registry: dict[str, Any],
    gateway_url: str,
    fleet: RunningFleet,
    faults: psycopg.Connection[Any],
    stream: bool,
) -> None:
    commit_faults.arm(faults, 1, "slow")  # the next COMMIT takes 0.4 s more, then succeeds
    client = client_for(gateway_url, fleet_registry["secret"])
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT, stream=stream
    )
    # The headers are here: the decision row must be committed already (no waiting).
    decision_id = raw.headers["x-switchyard-decision-id"]
    assert DecisionRecord.objects.filter(id=decision_id).exists()
    assert commit_faults.fired(faults) == 1, "the COMMIT was slowed (else this proves nothing)"
    parsed = raw.parse()
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in parsed)  # type: ignore[union-attr]
    else:
        text = parsed.choices[0].message.content or ""  # type: ignore[union-attr]
    assert text
    assert outcome_of(decision_id).final_status == "ok"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_failed_commit_is_an_error_never_an_unrecorded_answer(
    fleet_registry: dict[str, Any],
    gateway_url: str,
    fleet: RunningFleet,
    faults: psycopg.Connection[Any],
    settings: Any,
    stream: bool,
) -> None:
    settings.SWITCHYARD_RECORD_TIMEOUT_S = 1.0
    commit_faults.arm(faults, 1000, "abort")  # every COMMIT fails until disarmed
    client = client_for(gateway_url, fleet_registry["secret"])
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(
            model="auto", messages=ASK, extra_headers=SUPPORT, stream=stream
        )
    assert failed.value.status_code == 503
    assert failed.value.body["code"] == "recording_unavailable"  # type: ignore[index]
    assert "choices" not in failed.value.response.text
    # The model was called meanwhile (the call overlaps the COMMIT), its answer dropped.
    assert _fleet_calls(fleet) == 1
    assert commit_faults.fired(faults) >= 1
    commit_faults.disarm(faults)
    assert not DecisionRecord.objects.exists() and not DecisionOutcome.objects.exists()
    # Once the database commits again, so does the gateway.
    recorder.close()
    answer = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT
    )
    assert DecisionRecord.objects.filter(id=answer.headers["x-switchyard-decision-id"]).exists()


def test_holds_taken_without_waiting_are_settled_like_the_others(
    fleet_registry: dict[str, Any], gateway_url: str
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
    admission = recorder.admission
    assert isinstance(admission, BudgetLeases)
    taken = admission.taken
    ids, costs = [], Decimal(0)
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=ASK, extra_headers=SUPPORT
        )
        ids.append(raw.headers["x-switchyard-decision-id"])
        costs += Decimal(raw.headers["x-switchyard-cost-usd"])
    # One lease (taken by the writer for the first call); the rest held from it in memory.
    assert admission.taken == taken + 1
    for decision_id in ids:
        assert DecisionRecord.objects.get(id=decision_id).budget_holds
        outcome_of(decision_id)
    recorder.close()  # the lease gives back what it did not use
    row = BudgetSpend.objects.get(budget=budget)
    assert row.spent_usd == costs > 0
    assert row.reserved_usd == 0
