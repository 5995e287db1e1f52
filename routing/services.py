"""The decision pipeline shared by the WSGI fast path and the DRF view.

``decision_create`` takes the raw Authorization header and body and returns the status and
body to send. Its steps, in order:

1. Authenticate the key from the in-process cache (scope ``decide``).
2. Decode and type-check the body (msgspec), enforce size limits.
3. A repeated ``request_id`` returns the stored decision.
4. Scan every free-text field for personal data (fail closed: a failing scan counts as
   personal) - ``routing.pii.request_scan``.
5. Decide with the plain-Python engine on the in-memory snapshot.
6. Record the decision durably (group commit) and only then answer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from datetime import timedelta
from typing import Any

import orjson
from django.conf import settings

from controlplane.authentication import bearer_secret
from controlplane.errors import ApiError
from routing import metrics
from routing.engine import (
    BudgetExceeded,
    DecisionRequest,
    NoEligibleModel,
    UnknownTaskClass,
    decide,
)
from routing.pii import request_free_text_stored, request_scan
from routing.recording import decision_response, decision_row_build
from routing.schemas import DecisionInput, decision_input_decode
from routing.snapshot import KeyInfo, registry_cache
from telemetry.ids import uuid7, uuid7_time
from telemetry.models import DecisionIdempotency, DecisionRecord
from telemetry.recorder import RecordingFailed, recorder

logger = logging.getLogger(__name__)


def _estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _end_user_hash(value: str) -> str:
    # Hash again with a server secret: stored ids cannot be matched against other systems.
    key = settings.SECRET_KEY.encode()
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


def _authenticate(header: str, scope: str) -> KeyInfo:
    secret = bearer_secret(header) if header else None
    if secret is None:
        raise ApiError(401, "unauthenticated", "Send 'Authorization: Bearer <api key>'.")
    key = registry_cache.key_for_secret(secret)
    if key is None:
        raise ApiError(401, "unauthenticated", "Invalid, revoked or expired API key.")
    if scope not in key.scopes and "admin" not in key.scopes:
        raise ApiError(403, "forbidden", f"This API key lacks the {scope!r} scope.")
    return key


def _check_sizes(data: DecisionInput) -> None:
    if data.prompt is not None and len(data.prompt) > settings.SWITCHYARD_MAX_PROMPT_CHARS:
        raise ApiError(
            413,
            "too_large",
            f"prompt is {len(data.prompt)} characters; the limit is "
            f"{settings.SWITCHYARD_MAX_PROMPT_CHARS}.",
            {"prompt": ["too long"]},
        )
    if data.metadata is not None:
        size = len(orjson.dumps(data.metadata))
        if size > settings.SWITCHYARD_MAX_METADATA_BYTES:
            raise ApiError(
                413,
                "too_large",
                f"metadata is {size} bytes; the limit is {settings.SWITCHYARD_MAX_METADATA_BYTES}.",
                {"metadata": ["too large"]},
            )


def _stored_response(application_id: int, request_id: str) -> dict[str, Any] | None:
    entry = DecisionIdempotency.objects.filter(
        application_id=application_id, request_id=request_id
    ).first()
    if entry is None:
        return None
    record = (
        DecisionRecord.objects.filter(id=entry.decision_id, created_at=entry.created_at)
        .only("response")
        .first()
    )
    return record.response if record is not None else None


def decision_create(*, authorization: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """Run the pipeline; ApiError carries any refusal (status, code, message)."""
    started = time.perf_counter_ns()
    try:
        return _decision_create(authorization, body, started)
    except ApiError as exc:
        metrics.DECISION_ERRORS.labels(exc.error_code).inc()
        raise


def _decision_create(authorization: str, body: bytes, started: int) -> tuple[int, dict[str, Any]]:
    key = _authenticate(authorization, "decide")
    if len(body) > settings.SWITCHYARD_MAX_BODY_BYTES:
        raise ApiError(413, "too_large", "The request body is too large.")
    data = decision_input_decode(body)
    _check_sizes(data)
    if data.request_id:
        stored = _stored_response(key.application_id, data.request_id)
        if stored is not None:
            return 200, stored

    snapshot = registry_cache.snapshot()
    prompt = data.prompt or ""
    scan = request_scan(data)  # every free-text field; fail closed
    input_tokens = data.input_tokens if data.input_tokens is not None else _estimate_tokens(prompt)
    context_tokens = data.context_tokens if data.context_tokens is not None else input_tokens
    engine_request = DecisionRequest(
        task_class=data.task_class,
        input_tokens=input_tokens,
        context_tokens=context_tokens,
        latency_budget_ms=data.latency_budget_ms,
        max_cost_usd=data.max_cost_usd,
        data_classification=data.data_classification,
        pii_found=scan.types,
        pii_detection_failed=scan.failed,
        team=data.team or key.team,
        application=key.application,
    )
    try:
        decision = decide(engine_request, snapshot)
    except UnknownTaskClass as exc:
        raise ApiError(
            400,
            "unknown_task_class",
            f"Unknown task class {data.task_class!r}; valid: {', '.join(exc.valid)}.",
            {"task_class": [f"valid task classes: {', '.join(exc.valid)}"]},
            valid_task_classes=list(exc.valid),
        ) from exc
    except BudgetExceeded as exc:
        b = exc.budget
        raise ApiError(
            429,
            "budget_exceeded",
            f"Budget {b.name!r} ({b.scope}) has reached its hard limit of ${b.limit_usd:.2f}.",
            budget={
                "name": b.name,
                "scope": b.scope,
                "scope_key": b.scope_key,
                "spent_usd": round(b.spent_usd, 6),
                "limit_usd": b.limit_usd,
            },
        ) from exc
    except NoEligibleModel as exc:
        raise ApiError(
            422,
            "no_eligible_model",
            "No model in the route or registry can take this request.",
            candidates=[{"model": c.model, "reason": c.reason} for c in exc.candidates],
        ) from exc

    decision_id = uuid7()
    created_at = uuid7_time(decision_id)
    decision_us = (time.perf_counter_ns() - started) // 1000
    response = decision_response(
        decision_id=decision_id, decision=decision, decision_us=decision_us
    )
    extras = registry_cache.extras(data.task_class)
    keep_days = extras.prompt_retention_days if extras is not None else 0
    kept = request_free_text_stored(data, scan, keep_days=keep_days)  # retention, every field
    row = decision_row_build(
        decision_id=decision_id,
        created_at=created_at,
        request=engine_request,
        decision=decision,
        application_id=key.application_id,
        application=key.application,
        team=engine_request.team or "",
        request_id=data.request_id or "",
        prompt=prompt if prompt and keep_days > 0 else None,
        prompt_expires_at=created_at + timedelta(days=keep_days) if kept.expires else None,
        prompt_template_id=kept.prompt_template_id,
        prompt_template_version=kept.prompt_template_version,
        retrieval_query=kept.retrieval_query,
        retrieval_document_ids=kept.retrieval_document_ids,
        metadata=kept.metadata,
        end_user=_end_user_hash(data.end_user) if data.end_user else "",
        decision_us=decision_us,
        response=response,
    )
    try:
        outcome = recorder.record(row, timeout_s=settings.SWITCHYARD_RECORD_TIMEOUT_S)
    except RecordingFailed as exc:
        metrics.RECORDING_FAILURES.inc()
        raise ApiError(
            503,
            "recording_unavailable",
            "The decision could not be recorded; nothing was decided. Retry.",
        ) from exc
    if outcome == "duplicate":
        stored = _stored_response(key.application_id, data.request_id or "")
        if stored is None:  # pragma: no cover - the winner committed before we looked
            raise ApiError(503, "recording_unavailable", "Retry.")
        return 200, stored
    model = decision.model
    metrics.DECISIONS.labels(data.task_class, str(model.tier), decision.strategy).inc()
    metrics.DECISION_SECONDS.observe((time.perf_counter_ns() - started) / 1e9)
    metrics.ACTIVE_VERSION.set(decision.routing_table_version)
    return 201, response
