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
