"""Budget leases on their own (real PostgreSQL): all-or-nothing per row, local_only budgets,
lease sizing, closing, settlement and expiry - and the books always balance:
reserved_usd == sum over leases of (amount - unused - settled)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from controlplane import services
from controlplane.models import Budget, BudgetLease, BudgetSpend
from telemetry.budgets import (
    BudgetLeases,
    budget_holds_settle,
    budget_leases_expire,
    holds_of,
    reservation_amount,
)
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
            "budget_holds": [],
        },
    )


def global_budget(name: str, limit: str, hard_action: str = "block") -> Budget:
    return services.budget_create(
        name=name, scope="global", period="day", limit_usd=Decimal(limit), hard_action=hard_action
    )


def raw() -> psycopg.Connection[Any]:
    connection.ensure_connection()
    return cast(psycopg.Connection[Any], connection.connection)


def admit(leases: BudgetLeases, rows: list[DecisionRow]) -> dict[uuid.UUID, dict[str, Any]]:
    return leases.admit(raw(), rows)


def reserved(b: Budget) -> Decimal:
    return BudgetSpend.objects.get(budget=b).reserved_usd


def held(rows: list[DecisionRow], b: Budget) -> Decimal:
    ids = set(BudgetLease.objects.filter(budget=b).values_list("id", flat=True))
    return sum(
        (amount for r in rows for lease, amount in holds_of(r["budget_holds"]) if lease in ids),
        Decimal(0),
    )


def books_balance(b: Budget) -> None:
    leases = BudgetLease.objects.filter(budget=b)
    assert reserved(b) == sum((lease.held_usd for lease in leases), Decimal(0))


def test_a_row_is_admitted_on_all_its_budgets_or_on_none() -> None:
    leases = BudgetLeases()
    a, b = global_budget("a", "10"), global_budget("b", "0.5")
    first, second = row("cloud", (a, 0.4), (b, 0.4)), row("cloud", (a, 0.4), (b, 0.4))
    third = row("cloud", (a, 0.05), (b, 0.05))
    refused = admit(leases, [first, second, third])
    assert set(refused) == {second["id"]}
    assert refused[second["id"]]["budget_id"] == b.pk
    assert refused[second["id"]]["reserved_usd"] == pytest.approx(0.4)
    assert second["budget_holds"] == []
    assert held([first, third], a) == Decimal("0.45") == held([first, third], b)
    # A lease may hold more than its rows (a's is a slice of its headroom) until it closes.
    assert reserved(a) >= Decimal("0.45") and reserved(b) == Decimal("0.45")
    books_balance(a)
    leases.tick(raw(), close_all=True)
    assert reserved(a) == Decimal("0.45") and reserved(b) == Decimal("0.45")
    books_balance(a)
    books_balance(b)


def test_holds_never_let_spent_plus_reserved_pass_a_hard_limit() -> None:
    leases = BudgetLeases()
    b = global_budget("tight", "1")
    BudgetSpend.objects.create(
        budget=b, period_start=b.period_start(timezone.now()), spent_usd=Decimal("0.3")
    )
    rows = [row("cloud", (b, 0.0123)) for _ in range(200)]
    refused = admit(leases, rows)
    admitted = [r for r in rows if r["id"] not in refused]
    assert refused and admitted  # the limit was reached within the batch
    total = held(admitted, b)
    assert Decimal("0.3") + total <= Decimal("1")
    assert Decimal("0.3") + total + reservation_amount(0.0123) > Decimal("1")  # no room left
    spend = BudgetSpend.objects.get(budget=b)
    assert spend.spent_usd + spend.reserved_usd <= spend.budget.limit_usd
    books_balance(b)


def test_a_local_only_budget_refuses_cloud_rows_but_never_local_ones() -> None:
    leases = BudgetLeases()
    b = global_budget("local-only", "0.5", hard_action="local_only")
    cloud, local = row("cloud", (b, 0.6)), row("local", (b, 0.6))
    assert set(admit(leases, [cloud, local])) == {cloud["id"]}
    leases.tick(raw(), close_all=True)
    assert reserved(b) == Decimal("0.6")  # the local row's hold still counts
    books_balance(b)


def test_a_retried_row_keeps_its_holds_and_a_given_back_row_frees_them() -> None:
    leases = BudgetLeases()
    b = global_budget("g", "10")
    r = row("cloud", (b, 0.25))
    assert admit(leases, [r]) == {}
    holds = list(r["budget_holds"])
    assert admit(leases, [r]) == {} and r["budget_holds"] == holds  # not held twice
    leases.give_back([r])
    assert r["budget_holds"] == []
    leases.tick(raw(), close_all=True)
    assert reserved(b) == 0  # given back to its lease, which gave it back on closing
    books_balance(b)


def test_leases_grow_with_traffic_so_most_batches_take_none() -> None:
    leases = BudgetLeases()
    b = global_budget("big", "1000000")
    for _ in range(50):
        assert admit(leases, [row("cloud", (b, 0.001)) for _ in range(20)]) == {}
    assert leases.taken <= 4  # 1,000 rows in 50 batches; a lease at most every few batches


def test_settlement_releases_exactly_and_charges_the_real_cost() -> None:
    leases = BudgetLeases()
    b = global_budget("g", "10")
    r = row("cloud", (b, 0.123456789))
    assert admit(leases, [r]) == {}
    leases.tick(raw(), close_all=True)
    amount = reservation_amount(0.123456789)
    assert amount == Decimal("0.12345679") and reserved(b) == amount  # rounded up, never down
    slot = (b.pk, b.period_start(timezone.now()))
    with connection.cursor() as cursor:
        budget_holds_settle(
            cursor, holds=holds_of(r["budget_holds"]), charges={slot: Decimal("0.1")}
        )
    spend = BudgetSpend.objects.get(budget=b)
    assert spend.spent_usd == Decimal("0.1") and spend.reserved_usd == 0
    books_balance(b)


def test_expiry_releases_what_a_lease_still_holds_even_if_its_holder_died() -> None:
    b = global_budget("g", "10")
    alive, dead = BudgetLeases(), BudgetLeases()
    settled, pending = row("cloud", (b, 0.2)), row("cloud", (b, 0.3))
    assert admit(alive, [settled, pending]) == {}
    alive.tick(raw(), close_all=True)
    assert admit(dead, [row("cloud", (b, 0.4))]) == {}  # never closed: its holder "died"
    dead_lease = BudgetLease.objects.get(unused_usd=None)
    assert dead_lease.amount_usd > Decimal("0.4")  # a slice: more than its one row
    slot = (b.pk, b.period_start(timezone.now()))
    with connection.cursor() as cursor:
        budget_holds_settle(
            cursor, holds=holds_of(settled["budget_holds"]), charges={slot: Decimal("0.05")}
        )
    books_balance(b)
    assert budget_leases_expire(now=timezone.now()) == 0  # nothing due yet
    later = timezone.now() + timedelta(seconds=3600)
    assert budget_leases_expire(now=later) == 2
    spend = BudgetSpend.objects.get(budget=b)
    assert spend.reserved_usd == 0 and spend.spent_usd == Decimal("0.05")
    assert not BudgetLease.objects.exists()
    # An outcome after expiry is charged in full; its hold is gone already.
    with connection.cursor() as cursor:
        budget_holds_settle(
            cursor, holds=holds_of(pending["budget_holds"]), charges={slot: Decimal("0.07")}
        )
    spend.refresh_from_db()
    assert spend.reserved_usd == 0 and spend.spent_usd == Decimal("0.12")


def test_admit_now_holds_from_open_leases_and_a_used_lease_is_renewed_on_tick() -> None:
    leases = BudgetLeases()
    b = global_budget("g", "100")
    first = row("cloud", (b, 0.01))
    assert not leases.admit_now(first), "no lease yet: the writer must take one"
    assert admit(leases, [first]) == {}
    second = row("cloud", (b, 0.01))
    assert leases.admit_now(second)  # in memory, no statement
    assert held([second], b) == Decimal("0.01")
    # More than the open lease has left: nothing held, the writer decides.
    huge = row("cloud", (b, 50.0))
    assert not leases.admit_now(huge) and huge["budget_holds"] == []
    # The lease's lifetime ends: the writer's tick closes it and, as it was used, takes the
    # next one at once, so requests keep being admitted without waiting for a lease.
    taken = leases.taken
    for lease in leases._open.values():
        lease.closes_at = 0.0
    leases.tick(raw())
    assert leases.taken == taken + 1
    third = row("cloud", (b, 0.01))
    assert leases.admit_now(third)
    assert BudgetLease.objects.filter(budget=b).count() == 2
    leases.tick(raw(), close_all=True)
    assert reserved(b) == Decimal("0.03")
    books_balance(b)
