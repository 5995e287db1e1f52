"""Budgets that hold: worst cases held by leases the recorder takes, settled by outcomes.

A decision's spend is only known when its outcome is reported, so a hard limit judged on
spend alone lets any number of in-flight decisions through a nearly exhausted budget. So
every decision *holds* its worst case (input tokens + the output cap at the chosen model's
price in force) against every budget that applies until its outcome arrives. Locking the
budget rows for every batch of decisions would make both web workers take turns on one hot
row for the whole of each write (measured: -40 % saturation throughput), so holds are carved
out of **leases** instead:

1. **Lease** (``BudgetLeases.take``, one short transaction). A process's decision recorder
   takes a slice of a budget period's headroom: it locks the (budget, period) row of
   ``controlplane_budgetspend``, checks ``spent + reserved + need <= limit`` (for a hard
   limit), raises ``reserved_usd`` by the slice and inserts a ``BudgetLease`` row. The slice
   is sized to what this process admitted per lease lifetime lately (doubled), never more
   than ``SWITCHYARD_BUDGET_LEASE_SHARE`` of the headroom left, never less than the request
   at hand.
2. **Admit** (``BudgetLeases.admit``, the recorder's admission hook, before it writes a
   batch; ``admit_now`` for the gateway's rows, on the request's thread, when the open
   leases cover them without a statement). Each row's holds are taken from this process's
   open leases in memory; the row is written with them (``telemetry_decision.budget_holds``
   = [[lease id, amount], ...]). A row is admitted on all its budgets or on none. When a
   lease runs short a new one is taken; when even that does not fit, the row is refused: 429
   ``budget_exceeded`` for a ``block`` budget; for a ``local_only`` budget only *cloud*
   decisions are refused (the pipeline decides again and keeps the request local), local
   ones are admitted with a lease of exactly their worst case, as their holds still count.
3. **Close** (``BudgetLeases.tick``). After ``SWITCHYARD_BUDGET_LEASE_S`` (or when it runs
   short) a lease stops admitting and its holder gives back the part it did not use
   (``unused_usd``; ``reserved_usd`` lowered by it).
4. **Settle** (``budget_holds_settle``, in the first outcome's transaction). The decision's
   holds are added to their leases' ``settled_usd`` and taken off ``reserved_usd``; the real
   cost is added to ``spent_usd``.
5. **Expire** (``budget_leases_expire``, Celery beat every
   ``SWITCHYARD_RESERVATION_EXPIRE_EVERY_S``). A lease ``SWITCHYARD_RESERVATION_TTL_S``
   after it closed releases whatever it still holds - holds whose outcome never came, and the
   unused part of a holder that died - and is deleted. An outcome after that is charged in
   full; its hold is gone already.

So ``reserved_usd`` of a period is always the sum over its leases of
``amount - unused - settled``, and a hard limit is never passed through holds:
``spent + reserved <= limit`` whenever a lease is taken, and holds only come out of leases.
Real costs replace holds, so a limit is passed at most by what one request's real cost
exceeds its hold. The price of leasing: near the limit another process's open lease can hold
headroom for up to one lease lifetime, so a request may be refused while a little room is
left elsewhere (fail closed); leases shrink with the headroom, so this stays small.

Lock order everywhere: lease rows (by id), then budget-spend rows in (budget, period) order.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, transaction

from controlplane.models import budget_period_start
from telemetry.recorder import DecisionRow

logger = logging.getLogger(__name__)

_CENT_FRACTION = Decimal("0.00000001")  # the precision of the spend columns
_ZERO = Decimal(0)

Slot = tuple[int, datetime]  # (budget id, period start)
Hold = tuple[int, Decimal]  # (lease id, amount)


def reservation_amount(amount_usd: float) -> Decimal:
    """A float worst case as stored: rounded up to the spend columns' precision, so what
    is held is never less than the worst case."""
    return Decimal(repr(amount_usd)).quantize(_CENT_FRACTION, rounding="ROUND_CEILING")


def reservation_ttl() -> timedelta:
    return timedelta(seconds=settings.SWITCHYARD_RESERVATION_TTL_S)


def holds_of(value: Iterable[Sequence[Any]]) -> list[Hold]:
    """A decision's ``budget_holds`` as (lease id, amount) pairs."""
    return [(int(lease), Decimal(str(amount))) for lease, amount in value]


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
        WHERE EXISTS (SELECT 1 FROM controlplane_budget WHERE id = b)
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


# -- leases: the recorder's side -------------------------------------------------------------


@dataclass(eq=False)
class _Lease:
    id: int
    slot: Slot
    amount: Decimal
    remaining: Decimal
    taken_at: float  # monotonic
    closes_at: float  # monotonic


@dataclass(frozen=True)
class _BudgetMeta:
    period: str
    hard_action: str


class BudgetLeases:
    """One process's open leases; the decision recorder's admission hook (module doc).

    Used by the recorder's writer thread; a lock guards the state because a replaced
    (hung) writer may still be inside a call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[Slot, _Lease] = {}
        self._size: dict[Slot, Decimal] = {}  # the next lease's size per slot
        self._meta: dict[int, _BudgetMeta] = {}
        self._meta_read = 0.0
        self.holder = f"{socket.gethostname()}:{os.getpid()}"[:128]
        self.taken = 0

    @property
    def lease_s(self) -> float:
        return float(settings.SWITCHYARD_BUDGET_LEASE_S)

    # -- the recorder's hooks -----------------------------------------------------------

    def admit(
        self, conn: psycopg.Connection[Any], rows: Sequence[DecisionRow]
    ) -> dict[uuid.UUID, dict[str, Any]]:
        """Give each row its holds (``row["budget_holds"]``) or refuse it.

        Called with the rows about to be written that carry reservations and have no holds
        yet (a row retried after an uncertain write keeps the holds it was written with).
        Returns {row id: refusal detail} for refused rows; those must not be written."""
        refused: dict[uuid.UUID, dict[str, Any]] = {}
        # Within one call, a slot that refused an amount refuses any larger one unasked.
        full: dict[Slot, tuple[Decimal, dict[str, Any]]] = {}
        with self._lock:
            self._close_due(conn, time.monotonic())
            self._meta_refresh(conn, {r["budget_id"] for row in rows for r in row["reservations"]})
            for row in rows:
                if row["budget_holds"]:
                    continue  # admitted by an earlier attempt
                held: list[tuple[_Lease, Decimal]] = []
                refusal: dict[str, Any] | None = None
                for reservation in row["reservations"]:
                    meta = self._meta.get(reservation["budget_id"])
                    if meta is None:
                        continue  # a budget deleted meanwhile holds nothing
                    slot = (
                        reservation["budget_id"],
                        budget_period_start(meta.period, row["created_at"]),
                    )
                    amount = reservation_amount(reservation["amount_usd"])
                    force = meta.hard_action != "block" and row["locality"] == "local"
                    if not force and slot in full and amount >= full[slot][0]:
                        refusal = full[slot][1]
                        break
                    lease, refusal = self._lease_for(conn, slot, amount, meta, force=force)
                    if refusal is not None:
                        full[slot] = (amount, refusal)
                    if lease is None:
                        if refusal is None:
                            continue  # the budget is gone
                        break
                    lease.remaining -= amount
                    held.append((lease, amount))
                if refusal is not None:
                    for lease, amount in held:
                        lease.remaining += amount
                    refused[row["id"]] = refusal
                    continue
                row["budget_holds"] = [[lease.id, str(amount)] for lease, amount in held]
        return refused

    def admit_now(self, row: DecisionRow) -> bool:
        """Give ``row`` its holds from the open leases in memory, without the database (the
        request's own thread, before the writer sees the row), if every budget it reserves
        against is known and has an open lease with room; else hold nothing and return
        False — the writer's ``admit`` then decides (it may take a lease, or refuse). Never
        blocks behind the writer: a lock it holds (a lease being taken) means False."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            now = time.monotonic()
            if now - self._meta_read >= self.lease_s:
                return False  # the budgets' settings may have changed: the writer reads them
            held: list[tuple[_Lease, Decimal]] = []
            for reservation in row["reservations"]:
                meta = self._meta.get(reservation["budget_id"])
                lease = None
                amount = reservation_amount(reservation["amount_usd"])
                if meta is not None:
                    slot = (
                        reservation["budget_id"],
                        budget_period_start(meta.period, row["created_at"]),
                    )
                    lease = self._open.get(slot)
                if lease is None or lease.closes_at <= now or lease.remaining < amount:
                    for taken, back in held:
                        taken.remaining += back
                    return False
                lease.remaining -= amount
                held.append((lease, amount))
            row["budget_holds"] = [[lease.id, str(amount)] for lease, amount in held]
            return True
        finally:
            self._lock.release()

    def give_back(self, rows: Iterable[DecisionRow]) -> None:
        """Return the holds of rows that are certainly not stored to their open leases (a
        lease closed meanwhile keeps them until it expires: fail closed)."""
        with self._lock:
            by_id = {lease.id: lease for lease in self._open.values()}
            for row in rows:
                for lease_id, amount in holds_of(row["budget_holds"]):
                    lease = by_id.get(lease_id)
                    if lease is not None:
                        lease.remaining += amount
                row["budget_holds"] = []

    def tick(self, conn: psycopg.Connection[Any], *, close_all: bool = False) -> None:
        """Close leases past their lifetime (all of them with ``close_all``). Otherwise a
        closed lease that was used is renewed at once, and the budgets' settings are read
        again before they go stale, so ``admit_now`` keeps finding what it needs and the
        gateway's rows rarely wait for the writer to take a lease."""
        with self._lock:
            now = time.monotonic()
            if close_all:
                self._close_due(conn, float("inf"))
                return
            due = [lease for lease in self._open.values() if lease.closes_at <= now]
            self._close_due(conn, now)
            if self._meta and now - self._meta_read >= self.lease_s / 2:
                self._meta_refresh(conn, set(self._meta), force=True)
            today = datetime.now(UTC)
            for lease in due:
                meta = self._meta.get(lease.slot[0])
                if (
                    lease.remaining < lease.amount
                    and meta is not None
                    and budget_period_start(meta.period, today) == lease.slot[1]
                ):
                    # Sized as the next lease would be (_close); a refusal takes nothing:
                    # the next row's admission decides then.
                    self._take(conn, lease.slot, _CENT_FRACTION, meta, force=False)

    def has_open(self) -> bool:
        return bool(self._open)

    def reset(self) -> None:
        """Forget every lease without touching the database (tests: a flushed database)."""
        with self._lock:
            self._open.clear()
            self._size.clear()
            self._meta.clear()
            self._meta_read = 0.0

    # -- internals ----------------------------------------------------------------------

    def _meta_refresh(
        self, conn: psycopg.Connection[Any], budget_ids: set[int], *, force: bool = False
    ) -> None:
        now = time.monotonic()
        if not force and budget_ids <= self._meta.keys() and now - self._meta_read < self.lease_s:
            return
        wanted = sorted(budget_ids | self._meta.keys())
        rows = conn.execute(
            "SELECT id, period, hard_action FROM controlplane_budget WHERE id = ANY(%s)",
            [wanted],
        ).fetchall()
        self._meta = {int(b): _BudgetMeta(period, action) for b, period, action in rows}
        self._meta_read = now

    def _lease_for(
        self,
        conn: psycopg.Connection[Any],
        slot: Slot,
        amount: Decimal,
        meta: _BudgetMeta,
        *,
        force: bool,
    ) -> tuple[_Lease | None, dict[str, Any] | None]:
        lease = self._open.get(slot)
        if lease is not None and lease.remaining >= amount:
            return lease, None
        if lease is not None:
            self._close(conn, lease)  # too little left: give it back, then take anew
        return self._take(conn, slot, amount, meta, force=force)

    def _take(
        self,
        conn: psycopg.Connection[Any],
        slot: Slot,
        need: Decimal,
        meta: _BudgetMeta,
        *,
        force: bool,
    ) -> tuple[_Lease | None, dict[str, Any] | None]:
        """Take a lease of at least ``need`` on ``slot``; (None, refusal) when it does not fit
        a hard limit, (None, None) when the budget no longer exists."""
        budget_id, period_start = slot
        want = max(need, self._size.get(slot, need * 8))
        share = Decimal(repr(settings.SWITCHYARD_BUDGET_LEASE_SHARE))
        life = self.lease_s
        with conn.transaction(), conn.cursor() as cursor:
            # No fsync of its own: a decision holding from this lease is written later, and
            # its synchronous COMMIT flushes the WAL up to and past this one; a lease no
            # decision used that is lost in a crash held nothing.
            cursor.execute("SET LOCAL synchronous_commit = off")
            cursor.execute(
                """
                INSERT INTO controlplane_budgetspend
                    (budget_id, period_start, spent_usd, reserved_usd, updated_at)
                SELECT id, %s, 0, 0, now() FROM controlplane_budget WHERE id = %s
                ON CONFLICT (budget_id, period_start) DO NOTHING
                """,
                [period_start, budget_id],
            )
            cursor.execute(
                """
                SELECT b.limit_usd, s.spent_usd, s.reserved_usd
                FROM controlplane_budgetspend s JOIN controlplane_budget b ON b.id = s.budget_id
                WHERE s.budget_id = %s AND s.period_start = %s
                FOR UPDATE OF s
                """,
                [budget_id, period_start],
            )
            found = cursor.fetchone()
            if found is None:
                return None, None
            limit, spent, reserved = (Decimal(v) for v in found)
            headroom = limit - spent - reserved
            if headroom < need and not force:
                return None, {
                    "budget_id": budget_id,
                    "hard_action": meta.hard_action,
                    "spent_usd": float(spent),
                    "reserved_usd": float(reserved),
                    "limit_usd": float(limit),
                    "amount_usd": float(need),
                }
            granted = need if headroom <= need else max(need, min(want, headroom * share))
            granted = granted.quantize(_CENT_FRACTION, rounding="ROUND_FLOOR").max(need)
            cursor.execute(
                """
                WITH raised AS (
                    UPDATE controlplane_budgetspend
                    SET reserved_usd = reserved_usd + %(granted)s, updated_at = now()
                    WHERE budget_id = %(budget)s AND period_start = %(period)s
                )
                INSERT INTO controlplane_budgetlease
                    (budget_id, period_start, amount_usd, settled_usd, holder,
                     created_at, closes_at, expires_at)
                VALUES (%(budget)s, %(period)s, %(granted)s, 0, %(holder)s, now(),
                        now() + %(life)s, now() + %(life)s + %(ttl)s)
                RETURNING id
                """,
                {
                    "granted": granted,
                    "budget": budget_id,
                    "period": period_start,
                    "holder": self.holder,
                    "life": timedelta(seconds=life),
                    "ttl": reservation_ttl(),
                },
            )
            lease_row = cursor.fetchone()
            assert lease_row is not None
        now = time.monotonic()
        lease = _Lease(int(lease_row[0]), slot, granted, granted, now, now + life)
        self._open[slot] = lease
        self.taken += 1
        return lease, None

    def _close_due(self, conn: psycopg.Connection[Any], now: float) -> None:
        for lease in [lease for lease in self._open.values() if lease.closes_at <= now]:
            self._close(conn, lease)

    def _close(self, conn: psycopg.Connection[Any], lease: _Lease) -> None:
        """Stop admitting on ``lease`` and give back what it did not use."""
        if self._open.get(lease.slot) is lease:
            del self._open[lease.slot]
        # Size the next lease to what this one admitted per lifetime, doubled.
        now = time.monotonic()
        used = lease.amount - lease.remaining
        elapsed = max(now - lease.taken_at, 0.01)
        self._size[lease.slot] = (used * Decimal(repr(2 * self.lease_s / elapsed))).quantize(
            _CENT_FRACTION
        )
        with conn.transaction(), conn.cursor() as cursor:
            # No fsync: a give-back lost in a crash stays held until the lease expires.
            cursor.execute("SET LOCAL synchronous_commit = off")
            cursor.execute(
                "UPDATE controlplane_budgetlease SET unused_usd = %s "
                "WHERE id = %s AND unused_usd IS NULL RETURNING budget_id, period_start",
                [lease.remaining, lease.id],
            )
            if cursor.fetchone() is not None and lease.remaining:
                budget_spend_apply(cursor, {lease.slot: (_ZERO, -lease.remaining)})


# -- outcomes and expiry ------------------------------------------------------------------


def budget_holds_settle(
    cursor: Any, *, holds: Sequence[Hold], charges: Mapping[Slot, Decimal]
) -> None:
    """Settle decisions' holds (their first outcome) and charge real costs (module doc,
    step 4). Call inside the outcome's transaction; a hold whose lease expired meanwhile was
    released already. ``holds`` may be empty (a later report only charges)."""
    changes: dict[Slot, tuple[Decimal, Decimal]] = {
        slot: (amount, _ZERO) for slot, amount in charges.items()
    }
    per_lease: dict[int, Decimal] = {}
    for lease_id, amount in holds:
        per_lease[lease_id] = per_lease.get(lease_id, _ZERO) + amount
    if per_lease:
        ids = sorted(per_lease)
        # One round trip: the leases still there are locked in id order (the CTE, never
        # inlined with FOR UPDATE, is where any lock wait happens), then credited.
        cursor.execute(
            """
            WITH locked AS (
                SELECT id FROM controlplane_budgetlease
                WHERE id = ANY(%s) ORDER BY id FOR UPDATE
            )
            UPDATE controlplane_budgetlease l SET settled_usd = l.settled_usd + t.amount
            FROM locked, unnest(%s::bigint[], %s::numeric[]) AS t(id, amount)
            WHERE l.id = locked.id AND l.id = t.id
            RETURNING l.id, l.budget_id, l.period_start
            """,
            [ids, ids, [per_lease[i] for i in ids]],
        )
        found = cursor.fetchall()
        for lease_id, budget_id, period_start in found:
            slot = (int(budget_id), period_start)
            spent, reserved = changes.get(slot, (_ZERO, _ZERO))
            changes[slot] = (spent, reserved - per_lease[int(lease_id)])
    budget_spend_apply(cursor, changes)


def budget_leases_expire(*, now: datetime | None = None, limit: int = 10_000) -> int:
    """Release what leases past their expiry still hold and delete them (module doc, step
    5); returns how many. Leases an outcome is settling right now are skipped (SKIP LOCKED)
    and expire on the next run."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            """
            DELETE FROM controlplane_budgetlease WHERE id IN (
                SELECT id FROM controlplane_budgetlease
                WHERE expires_at < coalesce(%s::timestamptz, now())
                ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
            RETURNING budget_id, period_start,
                      amount_usd - coalesce(unused_usd, 0) - settled_usd
            """,
            [now, limit],
        )
        rows = cursor.fetchall()
        released: dict[Slot, Decimal] = {}
        for budget_id, period_start, held in rows:
            slot = (int(budget_id), period_start)
            released[slot] = released.get(slot, _ZERO) + Decimal(held)
        budget_spend_apply(cursor, {slot: (_ZERO, -held) for slot, held in released.items()})
    if rows:
        logger.info("budget leases: %d expired", len(rows))
    return len(rows)
