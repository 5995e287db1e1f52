from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from controlplane import services
from controlplane.models import BudgetSpend
from telemetry.ids import uuid7, uuid7_time
from telemetry.models import DecisionOutcome, DecisionRecord
from telemetry.services import OutcomeInput, outcome_report_batch

pytestmark = pytest.mark.django_db


def _decision(team: str) -> DecisionRecord:
    ident = uuid7()
    return DecisionRecord.objects.create(
        id=ident, created_at=uuid7_time(ident), application_id=1, application="app-a",
        team=team, task_class="triage", model="big-cloud", provider_model="m", tier=3,
        locality="cloud", strategy="rule", confidence=0.9, reason="r",
        routing_table_version=1, input_tokens=1000, context_tokens=1000,
        max_output_tokens=100, decision_us=5,
    )  # fmt: skip


def test_batch_prices_inserts_and_charges_each_outcome_once(registry: dict[str, Any]) -> None:
    budget = services.budget_create(
        name="team-a",
        scope="team",
        team=registry["team"],
        period="month",
        limit_usd=Decimal("100"),
    )
    decisions = [_decision("team-a") for _ in range(3)] + [_decision("other-team")]
    attempt = {"model": "big-cloud", "status": "ok", "latency_ms": 50,
               "input_tokens": 1000, "output_tokens": 100}  # fmt: skip
    items = [OutcomeInput(decision=d, attempts=[attempt], final_status="ok") for d in decisions]
    assert outcome_report_batch(items) == 4
    per_outcome = Decimal("0.0035")  # 1000 * 2.50 + 100 * 10.00, per million
    assert all(o.cost_usd == per_outcome for o in DecisionOutcome.objects.all())
    spend = BudgetSpend.objects.get(budget=budget, period_start=budget.period_start(timezone.now()))
    assert spend.spent_usd == per_outcome * 3
    assert outcome_report_batch(items) == 0  # already reported: kept, not charged again
    spend.refresh_from_db()
    assert spend.spent_usd == per_outcome * 3
    assert DecisionOutcome.objects.count() == 4


def test_batch_stores_every_column_as_a_single_report_does(registry: dict[str, Any]) -> None:
    """The batch sends its rows as JSON: every column (decimals, timestamps, JSON, arrays,
    nulls, text with quotes and non-ASCII) reads back as ``outcome_report`` stores it."""
    from telemetry.services import outcome_report

    attempts = [
        {"model": "big-cloud", "status": "timeout", "latency_ms": 900, "input_tokens": 1234,
         "output_tokens": 0, "escalation_reason": 'slow "really" – 100%'},
        {"model": "big-cloud", "status": "ok", "latency_ms": 57, "input_tokens": 1234,
         "output_tokens": 77, "ttft_ms": 12},
    ]  # fmt: skip
    when = timezone.now()
    fields = {
        "attempts": attempts,
        "final_status": "ok",
        "quality_score": 0.1,
        "user_feedback": "thumbs_up",
        "validation": {"gateway": "plain", "note": "é \\ '"},
        "retrieval_document_ids": ["doc-1", 'doc "2"'],
        "reported_at": when,
    }
    single, batched = _decision("team-a"), _decision("team-a")
    outcome_report(OutcomeInput(decision=single, **fields))  # type: ignore[arg-type]
    assert outcome_report_batch([OutcomeInput(decision=batched, **fields)]) == 1  # type: ignore[arg-type]
    compared = [f.name for f in DecisionOutcome._meta.fields if f.name != "decision_id"]
    compared.remove("decision_created_at")
    a = DecisionOutcome.objects.values(*compared).get(decision_id=single.id)
    b = DecisionOutcome.objects.values(*compared).get(decision_id=batched.id)
    assert a == b
    assert b["cost_usd"] > 0 and b["retrieval_document_ids"] == ["doc-1", 'doc "2"']
    assert b["reported_at"] == when and b["quality_score"] == 0.1
    stored = DecisionOutcome.objects.get(decision_id=batched.id)
    assert stored.decision_created_at == batched.created_at


@pytest.mark.parametrize("flush", [True, False])
def test_batch_settles_the_holds_of_the_outcomes_it_stores_only(
    registry: dict[str, Any], flush: bool
) -> None:
    """Each newly stored outcome's holds are settled on their leases and its cost charged;
    an outcome already reported settles and charges nothing again; the books balance
    (reserved == what the leases hold)."""
    from django.db import connection

    from controlplane.models import BudgetLease
    from telemetry.budgets import BudgetLeases

    budget = services.budget_create(
        name="all", scope="global", period="day", limit_usd=Decimal("100")
    )
    decisions = [_decision("team-a") for _ in range(4)]
    rows: list[Any] = [
        {
            "id": d.id,
            "created_at": d.created_at,
            "locality": "cloud",
            "reservations": [{"budget_id": budget.pk, "amount_usd": 0.01}],
            "budget_holds": [],
        }
        for d in decisions
    ]
    leases = BudgetLeases()
    connection.ensure_connection()
    assert leases.admit(connection.connection, rows) == {}
    leases.tick(connection.connection, close_all=True)  # what was not held goes back
    for d, r in zip(decisions, rows, strict=True):
        d.budget_holds = r["budget_holds"]
    spend = BudgetSpend.objects.get(budget=budget)
    assert spend.reserved_usd == Decimal("0.04") and spend.spent_usd == 0

    attempt = {"model": "big-cloud", "status": "ok", "latency_ms": 50,
               "input_tokens": 1000, "output_tokens": 100}  # fmt: skip
    per_outcome = Decimal("0.0035")  # 1000 * 2.50 + 100 * 10.00, per million

    def items(ds: list[DecisionRecord]) -> list[OutcomeInput]:
        return [OutcomeInput(decision=d, attempts=[attempt], final_status="ok") for d in ds]

    def books_balance() -> None:
        held = sum((lease.held_usd for lease in BudgetLease.objects.filter(budget=budget)), 0)
        spend.refresh_from_db()
        assert spend.reserved_usd == held

    assert outcome_report_batch(items(decisions[:2]), flush=flush) == 2
    spend.refresh_from_db()
    assert spend.spent_usd == per_outcome * 2 and spend.reserved_usd == Decimal("0.02")
    books_balance()
    # Two already reported, two new: only the new two settle and are charged.
    assert outcome_report_batch(items(decisions), flush=flush) == 2
    spend.refresh_from_db()
    assert spend.spent_usd == per_outcome * 4 and spend.reserved_usd == 0
    books_balance()
    settled = sum(lease.settled_usd for lease in BudgetLease.objects.filter(budget=budget))
    assert settled == Decimal("0.04")
    assert DecisionOutcome.objects.count() == 4
