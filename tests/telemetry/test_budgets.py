"""The admission hook on its own (real PostgreSQL): all-or-nothing per row, batch order,
local_only budgets, settlement and expiry bookkeeping."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, cast

import pytest
from django.db import connection
from django.utils import timezone

from controlplane import services
from controlplane.models import Budget, BudgetReservation, BudgetSpend
from telemetry.budgets import reservation_amount, reservations_admit, reservations_settle
from telemetry.ids import uuid7, uuid7_time
from telemetry.recorder import DecisionRow

pytestmark = pytest.mark.django_db


def row(locality: str, *reservations: tuple[Budget, float]) -> DecisionRow:
    decision_id = uuid7()
    return cast(
        DecisionRow,
        {
            "id": decision_id,
            "created_at": uuid7_time(decision_id),
            "locality": locality,
            "reservations": [{"budget_id": b.pk, "amount_usd": a} for b, a in reservations],
        },
    )


def global_budget(name: str, limit: str, hard_action: str = "block") -> Budget:
    return services.budget_create(
        name=name, scope="global", period="day", limit_usd=Decimal(limit), hard_action=hard_action
    )


def admit(rows: list[DecisionRow]) -> dict[uuid.UUID, dict[str, Any]]:
    with connection.cursor() as cursor:
        return reservations_admit(cursor.cursor, rows)


def reserved(b: Budget) -> Decimal:
    return BudgetSpend.objects.get(budget=b).reserved_usd


def test_a_row_is_admitted_on_all_its_budgets_or_on_none() -> None:
    a, b = global_budget("a", "10"), global_budget("b", "0.5")
    first, second = row("cloud", (a, 0.4), (b, 0.4)), row("cloud", (a, 0.4), (b, 0.4))
    third = row("cloud", (a, 0.05), (b, 0.05))
    refused = admit([first, second, third])
    assert set(refused) == {second["id"]}
    assert refused[second["id"]]["budget_id"] == b.pk
    assert refused[second["id"]]["reserved_usd"] == pytest.approx(0.4)
    assert reserved(a) == Decimal("0.45") and reserved(b) == Decimal("0.45")
    assert set(BudgetReservation.objects.values_list("decision_id", flat=True)) == {
        first["id"],
        third["id"],
    }


def test_a_local_only_budget_refuses_cloud_rows_but_never_local_ones() -> None:
    b = global_budget("local-only", "0.5", hard_action="local_only")
    cloud, local = row("cloud", (b, 0.6)), row("local", (b, 0.6))
    assert set(admit([cloud, local])) == {cloud["id"]}
    assert reserved(b) == Decimal("0.6")  # the local row's reservation still counts


def test_settlement_releases_exactly_and_charges_the_real_cost() -> None:
    b = global_budget("g", "10")
    r = row("cloud", (b, 0.123456789))
    assert admit([r]) == {}
    held = reservation_amount(0.123456789)
    assert held == Decimal("0.12345679") and reserved(b) == held  # rounded up, never down
    slot = (b.pk, b.period_start(timezone.now()))
    with connection.cursor() as cursor:
        reservations_settle(cursor, decision_ids=[r["id"]], charges={slot: Decimal("0.1")})
        # A second settlement releases nothing more.
        reservations_settle(cursor, decision_ids=[r["id"]], charges={})
    spend = BudgetSpend.objects.get(budget=b)
    assert spend.spent_usd == Decimal("0.1") and spend.reserved_usd == 0
    assert not BudgetReservation.objects.exists()
