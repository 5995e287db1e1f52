"""Turn an engine decision into the API response and the stored decision row."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from routing.engine import Decision, DecisionRequest
from telemetry.recorder import DecisionRow, Reservation


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
    """Everything in the response plus every candidate considered and why it was rejected."""
    return {
        "candidates": [
            {"model": c.model, "tier": c.tier, "accepted": c.accepted, "reason": c.reason}
            for c in decision.candidates
        ],
        "fallbacks": response["fallbacks"],
        "policy": response["policy"],
        "budgets": response["budgets"],
        "local_only": decision.local_only,
    }


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
