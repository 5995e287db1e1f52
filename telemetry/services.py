"""Outcome reporting: cost per attempt from the price in force at decision time, budgets charged.

Charging is atomic, idempotent, and a charged attempt is immutable:
1. The outcome row of the decision is created if missing and locked (SELECT … FOR UPDATE),
   so concurrent reports of one decision take turns.
2. Attempts are identified by their position in the report. The attempts already charged
   (``charged_attempts``) must be reported again exactly as they were, or the report is a
   ``OutcomeConflict`` (409); they keep their stored cost. Only attempts beyond them are
   priced and charged, so a repeated report charges nothing twice, and the stored cost
   always equals what the budgets were charged (dashboards and budgets agree).
3. The first report settles the decision's budget holds (they leave ``reserved_usd``), and
   each budget that applies (global, the team, the application, the task class) is charged,
   in one statement (telemetry.budgets.budget_holds_settle): concurrent charges never lose
   an update.
Attempt models must be in the registry (the API answers 400 otherwise; see
``attempt_models_unknown``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NotRequired, TypedDict

import orjson
from django.db import connection, transaction
from django.db.backends.postgresql.base import ServerBindingCursor
from django.db.models.base import ModelState
from django.utils import timezone

from controlplane.models import Budget, ModelEndpoint, ModelPrice
from routing.enums import AttemptStatus
from routing.pricing import price_cost_usd, price_in_force, price_schedule
from telemetry.budgets import Hold, Slot, budget_holds_settle, holds_of
from telemetry.models import DecisionOutcome, DecisionRecord
from telemetry.recorder import document_insert_sql

ATTEMPT_STATUSES = tuple(AttemptStatus)
# What only the server writes on an outcome's ``validation``: the gateway's account of how it
# answered (routing.gateway._validation: plain/stream, cache hit or miss and the spend a hit
# saved, the context it condensed and what that saved). The dashboards' savings are read
# from these keys, so the outcome API refuses them from clients (400) and a later report
# keeps the stored ones: a client cannot forge or erase a saving.
SERVER_VALIDATION_KEYS = frozenset({"gateway", "cache", "saved_usd", "condensed"})
# What identifies a reported attempt; a charged attempt must be reported again identically.
_ATTEMPT_KEYS = ("model", "status", "latency_ms", "input_tokens", "output_tokens")


class OutcomeConflict(Exception):
    """A report that changes attempts already charged (the API answers 409)."""


class AttemptInput(TypedDict):
    model: str
    status: str
    latency_ms: int
    input_tokens: int
    output_tokens: int
    escalation_reason: NotRequired[str]
    # Time to the first token of a streamed answer (the gateway), stored with the attempt.
    ttft_ms: NotRequired[int]
    # Not an answer but a call made for it: "condense" (the gateway's local condensing
    # call). Priced and charged like any attempt; not counted as an attempt at answering
    # (attempt_count, escalated, tokens).
    purpose: NotRequired[str]


class PriceBook:
    """All dated prices in memory; ``cost`` uses the price in force at a given time
    (routing.pricing.price_in_force)."""

    def __init__(self, prices: Iterable[ModelPrice], tiers: dict[str, int]) -> None:
        by_model: dict[str, list[ModelPrice]] = {}
        for price in prices:
            by_model.setdefault(price.model.slug, []).append(price)
        self._schedules = {slug: price_schedule(p) for slug, p in by_model.items()}
        self.tiers = tiers

    @classmethod
    def load(cls) -> PriceBook:
        prices = ModelPrice.objects.select_related("model")
        tiers = dict(ModelEndpoint.objects.values_list("slug", "tier"))
        return cls(prices, tiers)

    def price_at(self, model: str, when: datetime) -> ModelPrice | None:
        return price_in_force(self._schedules.get(model, []), when)

    def cost(self, model: str, when: datetime, input_tokens: int, output_tokens: int) -> Decimal:
        return price_cost_usd(self.price_at(model, when), input_tokens, output_tokens)


_pricebook_lock = threading.Lock()
# (generation, price book, active budgets): what charging reads, reloaded together when the
# registry generation changes (Budget and what its scope names are registry models).
_pricebook: tuple[int, PriceBook, tuple[Budget, ...]] | None = None


def charging_registry(generation: int | None = None) -> tuple[PriceBook, tuple[Budget, ...]]:
    """The price book and the active budgets of the registry ``generation`` (by default the
    current one: one query)."""
    global _pricebook
    from controlplane.generation import generation_current

    if generation is None:
        generation = generation_current()
    with _pricebook_lock:
        if _pricebook is None or _pricebook[0] != generation:
            budgets = tuple(
                Budget.objects.filter(is_active=True).select_related(
                    "team", "application", "task_class"
                )
            )
            _pricebook = (generation, PriceBook.load(), budgets)
        return _pricebook[1], _pricebook[2]


def pricebook_current() -> PriceBook:
    """The price book, reloaded when the registry generation changes."""
    return charging_registry()[0]


def budgets_active() -> tuple[Budget, ...]:
    """Active budgets (with what their scope key needs), reloaded when the registry
    generation changes."""
    return charging_registry()[1]


def budgets_applicable(decision: DecisionRecord) -> list[Budget]:
    """Active budgets that a decision's spend counts against."""
    return [b for b in budgets_active() if _budget_applies(b, decision)]


def attempt_models_unknown(attempts: Sequence[AttemptInput]) -> dict[str, list[str]]:
    """{field: [message]} for every attempt naming a model that is not in the registry."""
    known = pricebook_current().tiers
    return {
        f"attempts[{i}].model": [f"unknown model {a['model']!r}: not in the model registry"]
        for i, a in enumerate(attempts)
        if a["model"] not in known
    }


def _charges(
    budgets: Iterable[Budget], decision: DecisionRecord, amount: Decimal
) -> dict[Slot, Decimal]:
    if amount <= 0:
        return {}
    return {
        (b.pk, b.period_start(decision.created_at)): amount
        for b in budgets
        if _budget_applies(b, decision)
    }


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
        entry = {
            "model": attempt["model"],
            "tier": pricebook.tiers.get(attempt["model"], 0),
            "status": attempt["status"],
            "latency_ms": attempt["latency_ms"],
            "input_tokens": attempt["input_tokens"],
            "output_tokens": attempt["output_tokens"],
            "escalation_reason": attempt.get("escalation_reason", ""),
            "cost_usd": str(cost),
        }
        if "ttft_ms" in attempt:
            entry["ttft_ms"] = attempt["ttft_ms"]
        if attempt.get("purpose"):
            entry["purpose"] = attempt["purpose"]
        priced.append(entry)
    return priced, total


def _same_attempt(stored: dict[str, Any], reported: dict[str, Any]) -> bool:
    return all(stored.get(k) == reported.get(k) for k in _ATTEMPT_KEYS) and all(
        stored.get(k, "") == reported.get(k, "") for k in ("escalation_reason", "purpose")
    )


def outcome_report(item: OutcomeInput, *, pricebook: PriceBook | None = None) -> DecisionOutcome:
    """Store (or extend) a decision's outcome and charge its budgets; see the module doc.

    Raises ``OutcomeConflict`` when the report changes or drops an attempt already charged."""
    pricebook = pricebook or pricebook_current()
    decision = item.decision
    priced, total_cost = _attempts_priced(item, pricebook)
    with transaction.atomic():
        outcome, first_report = DecisionOutcome.objects.get_or_create(
            decision_id=decision.id,
            decision_created_at=decision.created_at,
            defaults=_outcome_fields(item, priced, total_cost, priced[-1]),
        )
        outcome = DecisionOutcome.objects.select_for_update().get(
            decision_id=decision.id, decision_created_at=decision.created_at
        )
        charged = list(outcome.attempts[: outcome.charged_attempts])
        if len(priced) < len(charged) or not all(
            _same_attempt(s, r) for s, r in zip(charged, priced, strict=False)
        ):
            raise OutcomeConflict(
                f"This decision's outcome was already reported and charged with "
                f"{len(charged)} attempt(s); a charged attempt cannot be changed or dropped. "
                "Report the same attempts again (optionally followed by new ones)."
            )
        new_attempts = priced[len(charged) :]
        if charged and not new_attempts:
            reported_at = outcome.reported_at  # the same report again changes nothing
        else:
            reported_at = item.reported_at or timezone.now()
        # Charged attempts keep the cost they were charged at.
        priced = charged + new_attempts
        new_cost = sum((Decimal(a["cost_usd"]) for a in new_attempts), Decimal(0))
        total_cost = sum((Decimal(a["cost_usd"]) for a in priced), Decimal(0))
        fields = _outcome_fields(item, priced, total_cost, priced[-1])
        fields["reported_at"] = reported_at
        if not first_report:  # the server's keys stay as the first report wrote them
            given = fields["validation"]
            stored = outcome.validation or {}
            fields["validation"] = {
                **{k: v for k, v in given.items() if k not in SERVER_VALIDATION_KEYS},
                **{k: v for k, v in stored.items() if k in SERVER_VALIDATION_KEYS},
            }
        for field_name, value in fields.items():
            setattr(outcome, field_name, value)
        outcome.charged_attempts = len(priced)
        # The table's key includes the partition column, so update with both key parts.
        DecisionOutcome.objects.filter(
            decision_id=decision.id, decision_created_at=decision.created_at
        ).update(**{f: getattr(outcome, f) for f in _UPDATED_FIELDS})
        with connection.cursor() as cursor:
            budget_holds_settle(
                cursor,
                holds=holds_of(decision.budget_holds) if first_report else [],
                charges=_charges(budgets_active(), decision, new_cost),
            )
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
    # Calls made for the answer (condensing) cost and take time, but are no attempt at it.
    answering = [a for a in priced if not a.get("purpose")] or priced
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
        "attempt_count": len(answering),
        "escalated": len(answering) > 1,
        "input_tokens": sum(a["input_tokens"] for a in answering),
        "output_tokens": sum(a["output_tokens"] for a in answering),
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
# An outcome already reported is kept as it is; the inserted rows' ids come back.
_OUTCOMES_INSERT_SQL = (
    document_insert_sql("telemetry_outcome", _OUTCOME_COLUMNS)
    + " ON CONFLICT DO NOTHING RETURNING decision_id"
)


def _budget_applies(budget: Budget, decision: DecisionRecord) -> bool:
    key = budget.scope_key
    return (
        budget.scope == "global"
        or (budget.scope == "team" and key == decision.team)
        or (budget.scope == "application" and key == decision.application)
        or (budget.scope == "task_class" and key == decision.task_class)
    )


def decision_record_unsaved(**fields: Any) -> DecisionRecord:
    """A decision as outcome charging reads it (``routing.services.RECORD_FOR_OUTCOME``),
    from columns already in hand — never saved.

    Built without ``Model.__init__`` (field defaults and init signals): the demo's
    simulation and the gateway's outcome writer build one per call."""
    record = DecisionRecord.__new__(DecisionRecord)
    record._state = ModelState()
    record.__dict__.update(fields)
    return record


def _server_bound_cursor() -> Any:
    """A cursor on the default connection that binds its parameters on the server
    (psycopg's own ``Cursor``; Django's backend quotes them into the SQL in Python, which
    for a batch's JSON document and arrays cost a fifth of the gateway's outcome writer).
    Wrapped as ``connection.cursor()`` is: errors as Django's, statements in the query
    log."""
    connection.ensure_connection()
    with connection.wrap_database_errors:
        # django-stubs type it as taking no arguments (psycopg: the connection).
        raw: Any = ServerBindingCursor(connection.connection)  # type: ignore[call-arg]
    if connection.queries_logged:
        return connection.make_debug_cursor(raw)
    return connection.make_cursor(raw)


def outcome_report_batch(
    items: Sequence[OutcomeInput],
    *,
    flush: bool = True,
    registry: tuple[PriceBook, Sequence[Budget]] | None = None,
) -> int:
    """Many first-time outcomes in one transaction (the gateway, the demo and benchmark
    loaders). ``flush=False``: the COMMIT does not wait for its own WAL flush
    (``synchronous_commit = off``) — for outcomes nobody was promised durable yet (the
    gateway's, written after the answer was sent): the next synchronous COMMIT on the server
    (the next decision's) flushes them, and only a crash of PostgreSQL itself within
    ``wal_writer_delay`` could lose them, as killing the process before the COMMIT could.

    Same cost and charging rules as ``outcome_report``:
    1. Rows are sent as one JSON array and inserted from it (``jsonb_populate_recordset``)
       with ON CONFLICT DO NOTHING in one statement (an outcome already reported is kept as
       it is).
    2. Only the rows actually inserted are charged (and their holds settled), once
       per (budget, period) with their sum, in (budget, period) order so concurrent loaders
       cannot deadlock.
    """
    if not items:
        return 0
    pricebook, budgets = registry or charging_registry()
    costs: dict[Any, tuple[DecisionRecord, Decimal]] = {}
    rows = []
    for item in items:
        priced, total = _attempts_priced(item, pricebook)
        fields = _outcome_fields(item, priced, total, priced[-1])
        fields["charged_attempts"] = len(priced)
        fields["decision_id"] = item.decision.id
        fields["decision_created_at"] = item.decision.created_at
        rows.append(fields)
        costs[item.decision.id] = (item.decision, total)
    # Decimals as JSON strings: PostgreSQL reads them back into the numeric columns exactly.
    payload = orjson.dumps(rows, default=_decimal_str).decode()
    with transaction.atomic(), _server_bound_cursor() as cursor:
        if not flush:
            cursor.execute("SET LOCAL synchronous_commit = off")
        cursor.execute(_OUTCOMES_INSERT_SQL, [payload])
        inserted = [row[0] for row in cursor.fetchall()]
        charges: dict[Slot, Decimal] = {}
        holds: list[Hold] = []
        for decision_id in inserted:
            decision, total = costs[decision_id]
            holds.extend(holds_of(decision.budget_holds))
            for slot, amount in _charges(budgets, decision, total).items():
                charges[slot] = charges.get(slot, Decimal(0)) + amount
        budget_holds_settle(cursor, holds=holds, charges=charges)
    return len(inserted)


def _decimal_str(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
