"""The decision record, in one place: what is stored for a decision and how it is read back.

The telemetry app owns the decision record end to end:
- this module turns an engine decision into the response it answers (and replays) and the
  row it stores (``decision_response``, ``decision_row_build``), finds the decision stored
  under an idempotency key (``stored_decision``, ``replay``) and reads a decision for a
  caller (``decision_for_caller``);
- telemetry.recorder writes rows durably (group commit, ack after COMMIT, budget holds);
- telemetry.retention expires free text, idempotency keys and partitions;
- telemetry.apis serves the read and outcome APIs; telemetry.services charges outcomes.
The routing app decides (routing.engine, routing.services) and hands the record here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import DataError, InterfaceError, OperationalError, connection
from django.utils import timezone

from controlplane.authentication import ApiPrincipal
from controlplane.db import pooled_connection_release
from controlplane.errors import ApiError
from controlplane.roles import ADMIN, user_has_role
from routing.engine import Decision, DecisionRequest
from telemetry.ids import is_uuid7, uuid7_time
from telemetry.models import DecisionIdempotency, DecisionRecord
from telemetry.recorder import DecisionRow, Reservation, idempotency_window

# -- building: response and row -------------------------------------------------------------


def decision_response(
    *, decision_id: uuid.UUID, decision: Decision, decision_us: int
) -> dict[str, Any]:
    model = decision.model
    return {
        "decision_id": str(decision_id),
        "model": {
            "slug": model.slug,
            "base_url": model.base_url,
            "provider_model": model.provider_model,
            "version": model.version,
            "tier": model.tier,
            "locality": model.locality,
        },
        "confidence": decision.confidence,
        "strategy": decision.strategy,
        "reason": decision.reason,
        "fallbacks": [
            {
                "model": f.model.slug,
                "base_url": f.model.base_url,
                "provider_model": f.model.provider_model,
                "tier": f.model.tier,
                "locality": f.model.locality,
                "triggers": list(f.triggers),
            }
            for f in decision.fallbacks
        ],
        "max_output_tokens": decision.max_output_tokens,
        "handoff_required": decision.handoff_required,
        "policy": {
            "pii_types_found": list(decision.pii_types_found),
            "actions": list(decision.policy_actions),
        },
        "budgets": [
            {
                "scope": b.scope,
                "name": b.name,
                "scope_key": b.scope_key,
                "spent_usd": round(b.spent_usd, 6),
                "reserved_usd": round(b.reserved_usd, 6),
                "limit_usd": round(b.limit_usd, 6),
                "remaining_usd": round(b.remaining_usd, 6),
                "action": b.action,
            }
            for b in decision.budgets
        ],
        "routing_table_version": decision.routing_table_version,
        "decision_us": decision_us,
    }


def decision_path(decision: Decision, response: dict[str, Any]) -> dict[str, Any]:
    """Everything in the response plus every candidate considered and why it was rejected
    (and the LLM router's call, when one was made)."""
    path = {
        "candidates": [
            {"model": c.model, "tier": c.tier, "accepted": c.accepted, "reason": c.reason}
            for c in decision.candidates
        ],
        "fallbacks": response["fallbacks"],
        "policy": response["policy"],
        "budgets": response["budgets"],
        "local_only": decision.local_only,
    }
    if decision.router_call is not None:
        path["llm_router"] = dict(decision.router_call)
    return path


def decision_row_build(
    *,
    decision_id: uuid.UUID,
    created_at: datetime,
    request: DecisionRequest,
    decision: Decision,
    application_id: int,
    application: str,
    team: str,
    request_id: str = "",
    prompt: str | None = None,
    prompt_expires_at: datetime | None = None,
    prompt_template_id: str = "",
    prompt_template_version: str = "",
    retrieval_query: str = "",
    retrieval_document_ids: Sequence[str] = (),
    metadata: dict[str, Any] | None = None,
    end_user: str = "",
    decision_us: int = 0,
    response: dict[str, Any] | None = None,
    reservations: Sequence[Reservation] = (),
    request_sha256: str = "",
) -> DecisionRow:
    if response is None:
        response = decision_response(
            decision_id=decision_id, decision=decision, decision_us=decision_us
        )
    model = decision.model
    return {
        "id": decision_id,
        "created_at": created_at,
        "request_id": request_id,
        "application_id": application_id,
        "application": application,
        "team": team,
        "task_class": request.task_class,
        "model": model.slug,
        "provider_model": model.provider_model,
        "tier": model.tier,
        "locality": model.locality,
        "strategy": decision.strategy,
        "confidence": decision.confidence,
        "reason": decision.reason,
        "routing_table_version": decision.routing_table_version,
        "handoff_required": decision.handoff_required,
        "data_classification": request.data_classification or "",
        "pii_types": list(decision.pii_types_found),
        "input_tokens": request.input_tokens,
        "context_tokens": request.context_tokens,
        "max_output_tokens": decision.max_output_tokens,
        "latency_budget_ms": request.latency_budget_ms,
        "max_cost_usd": request.max_cost_usd,
        "decision_us": decision_us,
        "end_user": end_user,
        "prompt": prompt,
        "prompt_expires_at": prompt_expires_at,  # the query and metadata expire with it too
        "prompt_template_id": prompt_template_id,
        "prompt_template_version": prompt_template_version,
        "retrieval_query": retrieval_query,
        "retrieval_document_ids": list(retrieval_document_ids),
        "metadata": metadata or {},
        "path": decision_path(decision, response),
        "response": response,
        "budget_holds": [],  # set by the recorder's admission hook (telemetry.budgets)
        "reservations": list(reservations),
        "request_sha256": request_sha256,
    }


# -- idempotency: the decision stored under a request_id ----------------------------------


def stored_decision(application_id: int, request_id: str) -> tuple[str, dict[str, Any]] | None:
    """(body hash, response) of the live decision under this idempotency key, if any.

    A key older than the idempotency window is ignored (the new decision takes it over)."""
    try:
        return _stored_decision_read(application_id, request_id)
    except DataError as exc:  # e.g. a NUL character, which PostgreSQL text cannot hold
        raise ApiError(
            400,
            "invalid",
            "request_id: contains a character that cannot be stored (e.g. NUL).",
            {"request_id": ["contains a character that cannot be stored"]},
        ) from exc
    except (OperationalError, InterfaceError):
        # A thread's persistent connection may have died with a database restart since its
        # last use. Reopen it once.
        if connection.in_atomic_block:
            raise
        connection.close()
        return _stored_decision_read(application_id, request_id)
    finally:
        pooled_connection_release()  # the decision may now wait for its commit


def _stored_decision_read(
    application_id: int, request_id: str
) -> tuple[str, dict[str, Any]] | None:
    cutoff = timezone.now() - idempotency_window()
    entry = DecisionIdempotency.objects.filter(
        application_id=application_id, request_id=request_id, created_at__gte=cutoff
    ).first()
    if entry is None:
        return None
    record = (
        DecisionRecord.objects.filter(id=entry.decision_id, created_at=entry.created_at)
        .only("response")
        .first()
    )
    return (entry.body_sha256, record.response) if record is not None else None


def replay(stored: tuple[str, dict[str, Any]], request_sha256: str) -> tuple[int, dict[str, Any]]:
    """The stored decision for a repeated request_id, if the body is the same one."""
    stored_sha256, response = stored
    if stored_sha256 and stored_sha256 != request_sha256:
        raise ApiError(
            409,
            "idempotency_conflict",
            "This request_id was already used with a different request body; use a new "
            "request_id for a new request.",
            {"request_id": ["already used with a different body"]},
        )
    return 200, response


# -- reading a decision for a caller --------------------------------------------------------


def decision_for_caller(user: Any, decision_id: str) -> DecisionRecord:
    """The decision if the caller may see it; 404 otherwise (never reveal other apps' ids)."""
    try:
        value = uuid.UUID(decision_id)
    except ValueError as exc:
        raise ApiError(404, "not_found", "No such decision.") from exc
    if not is_uuid7(value):
        raise ApiError(404, "not_found", "No such decision.")
    record = DecisionRecord.objects.filter(id=value, created_at=uuid7_time(value)).first()
    if record is None:
        raise ApiError(404, "not_found", "No such decision.")
    if isinstance(user, ApiPrincipal):
        if user.application.pk != record.application_id:
            raise ApiError(404, "not_found", "No such decision.")
    elif not (getattr(user, "is_staff", False) or user_has_role(user, ADMIN)):
        raise ApiError(404, "not_found", "No such decision.")
    return record
