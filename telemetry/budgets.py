"""Budgets that hold: reservations admitted with the decision record, settled by outcomes.

A decision's spend is only known when its outcome is reported, so a hard limit judged on
spend alone lets any number of in-flight decisions through a nearly exhausted budget. So:

1. **Reserve** (``reservations_admit``, the recorder's admission hook). The decision pipeline
   attaches to each decision row its worst-case cost (input tokens + the output cap at the
   chosen model's price in force now) for every budget that applies. The recorder calls the
   hook inside the transaction that writes a batch, before writing it. Per batch: the
   (budget, period) rows of ``controlplane_budgetspend`` are locked in (budget, period)
   order, the rows are admitted in batch order while, for every budget of the row,
   ``spent + reserved + amount <= limit``; then one UPDATE raises ``reserved_usd`` of each
   budget by what was admitted, and one INSERT writes a ``BudgetReservation`` per
   (decision, budget). So decisions take turns per *batch*, not per request, and under any
   concurrency ``spent + reserved`` never passes a limit through reservations; real costs
   replace reservations, so a limit is passed at most by what one request's real cost
   exceeds its reservation (never, while callers stay within the output cap on the model
   they were given).
2. A refused row is not written; the caller answers 429 ``budget_exceeded`` for a budget
   whose hard action is ``block``. For a ``local_only`` budget only *cloud* decisions are
   refused: the pipeline decides again with that budget treated as exhausted, which keeps
   the request on a local model; local decisions are always admitted (their reservations
   still count), because such a budget caps cloud spend, not local traffic.
3. **Settle** (``reservations_settle``, in the outcome's transaction). The decision's
   reservations are deleted and, in one statement, each budget's ``reserved_usd`` lowered by
   them and ``spent_usd`` raised by the real cost.
4. **Expire** (``reservations_expire``, Celery beat every
   ``SWITCHYARD_RESERVATION_EXPIRE_EVERY_S``): a reservation whose outcome has not arrived
   ``SWITCHYARD_RESERVATION_TTL_S`` after the decision is released (a later outcome is
   still charged in full).

Lock order everywhere: reservation rows, then budget-spend rows in (budget, period) order;
the admission only inserts new reservation rows, so nothing waits in a cycle.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, transaction

from controlplane.models import budget_period_start
from telemetry.recorder import DecisionRow

_CENT_FRACTION = Decimal("0.00000001")  # the precision of the spend columns

Slot = tuple[int, datetime]  # (budget id, period start)


def reservation_amount(amount_usd: float) -> Decimal:
    """A float worst case as stored: rounded up to the spend columns' precision, so what
    is reserved is never less than the worst case."""
    return Decimal(repr(amount_usd)).quantize(_CENT_FRACTION, rounding="ROUND_CEILING")


def reservation_ttl() -> timedelta:
    return timedelta(seconds=settings.SWITCHYARD_RESERVATION_TTL_S)


def budget_spend_apply(cursor: Any, changes: Mapping[Slot, tuple[Decimal, Decimal]]) -> None:
    """Add (spent, reserved) deltas to budget periods in one statement, creating missing
    period rows, in (budget, period) order so concurrent writers cannot deadlock."""
    slots = sorted(s for s, (spent, reserved) in changes.items() if spent or reserved)
    if not slots:
        return
    cursor.execute(
        """
        INSERT INTO controlplane_budgetspend
            (budget_id, period_start, spent_usd, reserved_usd, updated_at)
        SELECT b, p, s, r, now()
        FROM unnest(%s::bigint[], %s::timestamptz[], %s::numeric[], %s::numeric[])
            AS t(b, p, s, r)
        ORDER BY b, p
        ON CONFLICT (budget_id, period_start) DO UPDATE
        SET spent_usd = controlplane_budgetspend.spent_usd + EXCLUDED.spent_usd,
            reserved_usd = controlplane_budgetspend.reserved_usd + EXCLUDED.reserved_usd,
            updated_at = now()
        """,
        [
            [s[0] for s in slots],
            [s[1] for s in slots],
            [changes[s][0] for s in slots],
            [changes[s][1] for s in slots],
        ],
    )


def reservations_admit(
    cursor: psycopg.Cursor[Any], rows: list[DecisionRow]
) -> dict[uuid.UUID, dict[str, Any]]:
    """The recorder's admission hook: reserve each row's amounts or refuse the row.

    Returns {decision id: refusal detail} for refused rows; see the module doc, step 1."""
    wanted = sorted({r["budget_id"] for row in rows for r in row["reservations"]})
    if not wanted:
        return {}
    cursor.execute(
        "SELECT id, period, limit_usd, hard_action FROM controlplane_budget WHERE id = ANY(%s)",
        [wanted],
    )
    budgets: dict[int, tuple[str, Decimal, str]] = {
        int(b): (period, Decimal(limit), action) for b, period, limit, action in cursor.fetchall()
    }
    slots = sorted(
        {
            (r["budget_id"], budget_period_start(budgets[r["budget_id"]][0], row["created_at"]))
            for row in rows
            for r in row["reservations"]
            if r["budget_id"] in budgets  # a budget deleted meanwhile holds nothing
        }
    )
    if not slots:
        return {}
    slot_arrays = [[s[0] for s in slots], [s[1] for s in slots]]
    cursor.execute(
        """
        INSERT INTO controlplane_budgetspend
            (budget_id, period_start, spent_usd, reserved_usd, updated_at)
        SELECT b, p, 0, 0, now() FROM unnest(%s::bigint[], %s::timestamptz[]) AS t(b, p)
        ORDER BY b, p
        ON CONFLICT (budget_id, period_start) DO NOTHING
        """,
        slot_arrays,
    )
    cursor.execute(
        """
        SELECT budget_id, period_start, spent_usd, reserved_usd FROM controlplane_budgetspend
        WHERE (budget_id, period_start) IN
              (SELECT b, p FROM unnest(%s::bigint[], %s::timestamptz[]) AS t(b, p))
        ORDER BY budget_id, period_start
        FOR UPDATE
        """,
        slot_arrays,
    )
    used: dict[Slot, list[Decimal]] = {
        (int(b), p): [Decimal(spent), Decimal(reserved)]
        for b, p, spent, reserved in cursor.fetchall()
    }
    refused: dict[uuid.UUID, dict[str, Any]] = {}
    added: dict[Slot, tuple[Decimal, Decimal]] = {}
    reservations: list[tuple[uuid.UUID, int, datetime, Decimal, datetime, datetime]] = []
    ttl = reservation_ttl()
    for row in rows:
        items: list[tuple[Slot, Decimal]] = []
        for r in row["reservations"]:
            budget = budgets.get(r["budget_id"])
            if budget is not None:
                slot = (r["budget_id"], budget_period_start(budget[0], row["created_at"]))
                items.append((slot, reservation_amount(r["amount_usd"])))
        refusal = _refusal(row, items, budgets, used)
        if refusal is not None:
            refused[row["id"]] = refusal
            continue
        for slot, amount in items:
            used[slot][1] += amount
            added[slot] = (Decimal(0), added.get(slot, (Decimal(0), Decimal(0)))[1] + amount)
            reservations.append(
                (row["id"], slot[0], slot[1], amount, row["created_at"], row["created_at"] + ttl)
            )
    budget_spend_apply(cursor, added)
    if reservations:
        cursor.execute(
            """
            INSERT INTO controlplane_budgetreservation
                (decision_id, budget_id, period_start, amount_usd, created_at, expires_at)
            SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::timestamptz[], %s::numeric[],
                                 %s::timestamptz[], %s::timestamptz[])
            """,
            [list(column) for column in zip(*reservations, strict=True)],
        )
    return refused


def _refusal(
    row: DecisionRow,
    items: Sequence[tuple[Slot, Decimal]],
    budgets: Mapping[int, tuple[str, Decimal, str]],
    used: Mapping[Slot, list[Decimal]],
) -> dict[str, Any] | None:
    """Why ``row`` cannot be admitted (the first budget it does not fit), or None."""
    for slot, amount in items:
        _, limit, hard_action = budgets[slot[0]]
        if hard_action != "block" and row["locality"] == "local":
            continue  # a local_only budget keeps requests local; it does not refuse them
        spent, reserved = used[slot]
        if spent + reserved + amount > limit:
            return {
                "budget_id": slot[0],
                "hard_action": hard_action,
                "spent_usd": float(spent),
                "reserved_usd": float(reserved),
                "limit_usd": float(limit),
                "amount_usd": float(amount),
            }
    return None


def reservations_settle(
    cursor: Any, *, decision_ids: Sequence[uuid.UUID], charges: Mapping[Slot, Decimal]
) -> None:
    """Release the decisions' reservations and charge their real costs, in one statement
    per step (module doc, step 3). Call inside the outcome's transaction."""
    changes: dict[Slot, tuple[Decimal, Decimal]] = {
        slot: (amount, Decimal(0)) for slot, amount in charges.items()
    }
    if decision_ids:
        cursor.execute(
            "DELETE FROM controlplane_budgetreservation WHERE decision_id = ANY(%s) "
            "RETURNING budget_id, period_start, amount_usd",
            [list(decision_ids)],
        )
        for slot, amount in _released(cursor.fetchall()).items():
            spent = changes.get(slot, (Decimal(0), Decimal(0)))[0]
            changes[slot] = (spent, -amount)
    budget_spend_apply(cursor, changes)


def _released(rows: Iterable[tuple[Any, datetime, Any]]) -> dict[Slot, Decimal]:
    out: dict[Slot, Decimal] = {}
    for budget_id, period_start, amount in rows:
        slot = (int(budget_id), period_start)
        out[slot] = out.get(slot, Decimal(0)) + Decimal(amount)
    return out


def reservations_expire(*, now: datetime | None = None, limit: int = 10_000) -> int:
    """Release reservations past their expiry (module doc, step 4); returns how many.

    Rows an outcome is settling right now are skipped (SKIP LOCKED): the outcome releases
    them itself."""
    params: list[Any] = [now, limit] if now is not None else [None, limit]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            """
            DELETE FROM controlplane_budgetreservation WHERE id IN (
                SELECT id FROM controlplane_budgetreservation
                WHERE expires_at < coalesce(%s::timestamptz, now())
                ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
            RETURNING budget_id, period_start, amount_usd
            """,
            params,
        )
        rows = cursor.fetchall()
        released = _released(rows)
        budget_spend_apply(
            cursor, {slot: (Decimal(0), -amount) for slot, amount in released.items()}
        )
    return len(rows)
