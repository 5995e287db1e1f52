"""Outcome reporting: cost per attempt from the price in force at decision time, budgets charged.

Charging is atomic and idempotent:
1. The outcome row of the decision is created if missing and locked (SELECT … FOR UPDATE),
   so concurrent reports of one decision take turns.
2. Attempts are identified by their position in the report; only attempts beyond
   ``charged_attempts`` are charged, so a repeated report charges nothing twice.
3. Each budget that applies (global, the team, the application, the task class) is charged
   with one ``INSERT … ON CONFLICT DO UPDATE SET spent = spent + x``: concurrent charges
   of one budget never lose an update.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NotRequired, TypedDict

import orjson
from django.db import connection, transaction
from django.utils import timezone

from controlplane.models import Budget, ModelEndpoint, ModelPrice
from routing.enums import AttemptStatus
from telemetry.models import DecisionOutcome, DecisionRecord

ATTEMPT_STATUSES = tuple(AttemptStatus)
_MTOK = Decimal(1_000_000)


class AttemptInput(TypedDict):
    model: str
    status: str
    latency_ms: int
    input_tokens: int
    output_tokens: int
    escalation_reason: NotRequired[str]


@dataclass(frozen=True, slots=True)
class _Price:
    effective_from: datetime
    input_per_mtok: Decimal
    output_per_mtok: Decimal


class PriceBook:
    """All dated prices in memory; ``cost`` uses the price in force at a given time."""

    def __init__(self, prices: Iterable[ModelPrice], tiers: dict[str, int]) -> None:
        self._by_model: dict[str, list[_Price]] = {}
        self._starts: dict[str, list[datetime]] = {}
        self.tiers = tiers
        for price in sorted(prices, key=lambda p: p.effective_from):
            slug = price.model.slug
            self._by_model.setdefault(slug, []).append(
                _Price(price.effective_from, price.input_usd_per_mtok, price.output_usd_per_mtok)
            )
        for slug, entries in self._by_model.items():
            self._starts[slug] = [p.effective_from for p in entries]

    @classmethod
    def load(cls) -> PriceBook:
        prices = ModelPrice.objects.select_related("model")
        tiers = dict(ModelEndpoint.objects.values_list("slug", "tier"))
        return cls(prices, tiers)

    def price_at(self, model: str, when: datetime) -> _Price | None:
        starts = self._starts.get(model)
        if not starts:
            return None
        index = bisect.bisect_right(starts, when) - 1
        return self._by_model[model][index] if index >= 0 else None

    def cost(self, model: str, when: datetime, input_tokens: int, output_tokens: int) -> Decimal:
        price = self.price_at(model, when)
        if price is None:
            return Decimal(0)
        return (price.input_per_mtok * input_tokens + price.output_per_mtok * output_tokens) / _MTOK


_pricebook_lock = threading.Lock()
_pricebook: tuple[int, PriceBook] | None = None


def pricebook_current() -> PriceBook:
    """The price book, reloaded when the registry generation changes."""
    global _pricebook
    from controlplane.generation import generation_current

    generation = generation_current()
    with _pricebook_lock:
        if _pricebook is None or _pricebook[0] != generation:
            _pricebook = (generation, PriceBook.load())
        return _pricebook[1]


def budgets_applicable(decision: DecisionRecord) -> list[Budget]:
    """Active budgets that a decision's spend counts against."""
    budgets = Budget.objects.filter(is_active=True).select_related(
        "team", "application", "task_class"
    )
    return [b for b in budgets if _budget_applies(b, decision)]


def budget_charge(*, budget: Budget, when: datetime, amount: Decimal) -> None:
    """Add ``amount`` to the budget's spend for the period containing ``when``, atomically."""
    if amount <= 0:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO controlplane_budgetspend (budget_id, period_start, spent_usd, updated_at)
            VALUES (%s, %s, %s, now())
            ON CONFLICT (budget_id, period_start)
            DO UPDATE SET spent_usd = controlplane_budgetspend.spent_usd + EXCLUDED.spent_usd,
                          updated_at = now()
            """,
            [budget.pk, budget.period_start(when), amount],
        )


@dataclass(frozen=True, slots=True)
class OutcomeInput:
    decision: DecisionRecord
    attempts: Sequence[AttemptInput]
    final_status: str
    quality_score: float | None = None
    user_feedback: str = ""
    validation: dict[str, Any] | None = None
    retrieval_document_ids: Sequence[str] = ()
    reported_at: datetime | None = None


def _attempts_priced(
    item: OutcomeInput, pricebook: PriceBook
) -> tuple[list[dict[str, Any]], Decimal]:
    priced = []
    total = Decimal(0)
    for attempt in item.attempts:
        cost = pricebook.cost(
            attempt["model"],
            item.decision.created_at,
            attempt["input_tokens"],
            attempt["output_tokens"],
        )
        total += cost
        priced.append(
            {
                "model": attempt["model"],
                "tier": pricebook.tiers.get(attempt["model"], 0),
                "status": attempt["status"],
                "latency_ms": attempt["latency_ms"],
                "input_tokens": attempt["input_tokens"],
                "output_tokens": attempt["output_tokens"],
                "escalation_reason": attempt.get("escalation_reason", ""),
                "cost_usd": str(cost),
            }
        )
    return priced, total


def outcome_report(item: OutcomeInput, *, pricebook: PriceBook | None = None) -> DecisionOutcome:
    """Store (or update) a decision's outcome and charge its budgets; see the module doc."""
    pricebook = pricebook or pricebook_current()
    decision = item.decision
    priced, total_cost = _attempts_priced(item, pricebook)
    last = priced[-1]
    with transaction.atomic():
        outcome, _ = DecisionOutcome.objects.get_or_create(
            decision_id=decision.id,
            decision_created_at=decision.created_at,
            defaults=_outcome_fields(item, priced, total_cost, last),
        )
        outcome = DecisionOutcome.objects.select_for_update().get(
            decision_id=decision.id, decision_created_at=decision.created_at
        )
        new_attempts = priced[outcome.charged_attempts :]
        new_cost = sum((Decimal(a["cost_usd"]) for a in new_attempts), Decimal(0))
        for field_name, value in _outcome_fields(item, priced, total_cost, last).items():
            setattr(outcome, field_name, value)
        outcome.charged_attempts = max(outcome.charged_attempts, len(priced))
        # The table's key includes the partition column, so update with both key parts.
        DecisionOutcome.objects.filter(
            decision_id=decision.id, decision_created_at=decision.created_at
        ).update(**{f: getattr(outcome, f) for f in _UPDATED_FIELDS})
        if new_cost > 0:
            for budget in budgets_applicable(decision):
                budget_charge(budget=budget, when=decision.created_at, amount=new_cost)
    return outcome


_UPDATED_FIELDS = (
    "reported_at",
    "final_model",
    "final_tier",
    "final_status",
    "attempts",
    "attempt_count",
    "escalated",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "quality_score",
    "user_feedback",
    "validation",
    "retrieval_document_ids",
    "charged_attempts",
)


def _outcome_fields(
    item: OutcomeInput, priced: list[dict[str, Any]], total_cost: Decimal, last: dict[str, Any]
) -> dict[str, Any]:
    decision = item.decision
    return {
        "reported_at": item.reported_at or timezone.now(),
        "application_id": decision.application_id,
        "application": decision.application,
        "team": decision.team,
        "task_class": decision.task_class,
        "routed_model": decision.model,
        "routed_tier": decision.tier,
        "final_model": last["model"],
        "final_tier": last["tier"] or decision.tier,
        "final_status": item.final_status,
        "attempts": priced,
        "attempt_count": len(priced),
        "escalated": len(priced) > 1,
        "input_tokens": sum(a["input_tokens"] for a in priced),
        "output_tokens": sum(a["output_tokens"] for a in priced),
        "cost_usd": total_cost,
        "latency_ms": sum(a["latency_ms"] for a in priced),
        "quality_score": item.quality_score,
        "user_feedback": item.user_feedback,
        "validation": item.validation or {},
        "retrieval_document_ids": list(item.retrieval_document_ids),
    }


_OUTCOME_COLUMNS = (
    "decision_id", "decision_created_at", "reported_at", "application_id", "application",
    "team", "task_class", "routed_model", "routed_tier", "final_model", "final_tier",
    "final_status", "attempts", "attempt_count", "escalated", "input_tokens", "output_tokens",
    "cost_usd", "latency_ms", "quality_score", "user_feedback", "validation",
    "retrieval_document_ids", "charged_attempts",
)  # fmt: skip
_OUTCOME_JSON = {"attempts", "validation"}


def _budget_applies(budget: Budget, decision: DecisionRecord) -> bool:
    key = budget.scope_key
    return (
        budget.scope == "global"
        or (budget.scope == "team" and key == decision.team)
        or (budget.scope == "application" and key == decision.application)
        or (budget.scope == "task_class" and key == decision.task_class)
    )


def outcome_report_batch(items: Sequence[OutcomeInput]) -> int:
    """Many first-time outcomes in one transaction (the demo and benchmark loaders).

    Same cost and charging rules as ``outcome_report``:
    1. Rows are COPied into a temporary table, then inserted with ON CONFLICT DO NOTHING
       (an outcome already reported is kept as it is).
    2. Only the rows actually inserted are charged, once per (budget, period) with their
       sum, in (budget, period) order so concurrent loaders cannot deadlock.
    """
    if not items:
        return 0
    pricebook = pricebook_current()
    budgets = list(
        Budget.objects.filter(is_active=True).select_related("team", "application", "task_class")
    )
    costs: dict[Any, tuple[DecisionRecord, Decimal]] = {}
    columns = ", ".join(_OUTCOME_COLUMNS)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS outcome_load "
            "(LIKE telemetry_outcome INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cursor.cursor.copy(f"COPY outcome_load ({columns}) FROM STDIN") as copy:
            for item in items:
                priced, total = _attempts_priced(item, pricebook)
                fields = _outcome_fields(item, priced, total, priced[-1])
                fields["charged_attempts"] = len(priced)
                fields["decision_id"] = item.decision.id
                fields["decision_created_at"] = item.decision.created_at
                copy.write_row(
                    tuple(
                        orjson.dumps(fields[c]).decode() if c in _OUTCOME_JSON else fields[c]
                        for c in _OUTCOME_COLUMNS
                    )
                )
                costs[item.decision.id] = (item.decision, total)
        cursor.execute(
            f"INSERT INTO telemetry_outcome ({columns}) "  # noqa: S608 (constant names)
            f"SELECT {columns} FROM outcome_load ON CONFLICT DO NOTHING RETURNING decision_id"
        )
        inserted = [row[0] for row in cursor.fetchall()]
        charges: dict[tuple[int, datetime], Decimal] = {}
        for decision_id in inserted:
            decision, total = costs[decision_id]
            if total <= 0:
                continue
            for budget in budgets:
                if _budget_applies(budget, decision):
                    slot = (budget.pk, budget.period_start(decision.created_at))
                    charges[slot] = charges.get(slot, Decimal(0)) + total
        by_id = {b.pk: b for b in budgets}
        for (budget_id, period_start), amount in sorted(charges.items()):
            budget_charge(budget=by_id[budget_id], when=period_start, amount=amount)
    return len(inserted)
