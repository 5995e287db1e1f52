"""The decision pipeline shared by the WSGI fast path and the DRF view.

``decision_create`` takes the raw Authorization header and body and returns the status and
body to send. Its steps, in order:

1. Authenticate the key from the in-process cache (scope ``decide``).
2. Decode and type-check the body (msgspec), enforce size limits.
3. A repeated ``request_id`` returns the stored decision (409 if the body differs).
4. Scan the prompt for personal data (fail closed: a failing scan counts as personal).
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

import msgspec
import orjson
from django.conf import settings
from django.db import DataError, InterfaceError, OperationalError, connection
from django.utils import timezone

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
from routing.pii import pii_types
from routing.recording import decision_response, decision_row_build
from routing.schemas import DecisionInput, decision_input_decoder
from routing.snapshot import KeyInfo, registry_cache
from telemetry.ids import uuid7, uuid7_time
from telemetry.models import DecisionIdempotency, DecisionRecord
from telemetry.recorder import (
    RecordingBusy,
    RecordingFailed,
    RecordingInvalid,
    idempotency_window,
    recorder,
)

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


def _field_from_msgspec(message: str) -> str:
    # msgspec says e.g. "Expected `int`, got `str` - at `$.input_tokens`"
    if "- at `$." in message:
        return message.rsplit("- at `$.", 1)[1].rstrip("`").split("[")[0]
    if "missing required field" in message:
        return message.rsplit("`", 2)[-2]
    if "unknown field" in message:
        return message.rsplit("`", 2)[-2]
    return "body"


def _decode(body: bytes) -> DecisionInput:
    try:
        return decision_input_decoder.decode(body)
    except msgspec.ValidationError as exc:
        field = _field_from_msgspec(str(exc))
        raise ApiError(400, "invalid", f"{field}: {exc}", {field: [str(exc)]}) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}") from exc


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


_canonical_encoder = msgspec.json.Encoder(order="sorted")


def _request_sha256(data: DecisionInput) -> str:
    """sha256 of the canonical body: the decoded request re-encoded with sorted keys, so
    whitespace and key order do not matter but every value does."""
    return hashlib.sha256(_canonical_encoder.encode(data)).hexdigest()


def _stored_decision(application_id: int, request_id: str) -> tuple[str, dict[str, Any]] | None:
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
        # The fast path skips Django's per-request connection checks: a thread's connection
        # may have died with a database restart since its last use. Reopen it once.
        if connection.in_atomic_block:
            raise
        connection.close()
        return _stored_decision_read(application_id, request_id)


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


def _replay(stored: tuple[str, dict[str, Any]], request_sha256: str) -> tuple[int, dict[str, Any]]:
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
    data = _decode(body)
    _check_sizes(data)
    request_sha256 = _request_sha256(data) if data.request_id else ""
    if data.request_id:
        stored = _stored_decision(key.application_id, data.request_id)
        if stored is not None:
            return _replay(stored, request_sha256)

    snapshot = registry_cache.snapshot()
    prompt = data.prompt or ""
    detection_failed = False
    found: tuple[str, ...] = ()
    if prompt:
        try:
            found = pii_types(prompt)
        except Exception:  # fail closed: treat the request as personal
            logger.exception("PII detection failed")
            detection_failed = True
    input_tokens = data.input_tokens if data.input_tokens is not None else _estimate_tokens(prompt)
    context_tokens = data.context_tokens if data.context_tokens is not None else input_tokens
    engine_request = DecisionRequest(
        task_class=data.task_class,
        input_tokens=input_tokens,
        context_tokens=context_tokens,
        latency_budget_ms=data.latency_budget_ms,
        max_cost_usd=data.max_cost_usd,
        data_classification=data.data_classification,
        pii_found=found,
        pii_detection_failed=detection_failed,
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
    keep_prompt = bool(prompt) and extras is not None and extras.prompt_retention_days > 0
    template = data.prompt_template
    retrieval = data.retrieval
    row = decision_row_build(
        decision_id=decision_id,
        created_at=created_at,
        request=engine_request,
        decision=decision,
        application_id=key.application_id,
        application=key.application,
        team=engine_request.team or "",
        request_id=data.request_id or "",
        prompt=prompt if keep_prompt else None,
        prompt_expires_at=(
            created_at + timedelta(days=extras.prompt_retention_days)
            if keep_prompt and extras is not None
            else None
        ),
        prompt_template_id=template.id if template else "",
        prompt_template_version=template.version if template else "",
        retrieval_query=retrieval.query if retrieval else "",
        retrieval_document_ids=retrieval.document_ids if retrieval else (),
        metadata=data.metadata,
        end_user=_end_user_hash(data.end_user) if data.end_user else "",
        decision_us=decision_us,
        response=response,
        request_sha256=request_sha256,
    )
    try:
        outcome = recorder.record(row, timeout_s=settings.SWITCHYARD_RECORD_TIMEOUT_S)
    except RecordingInvalid as exc:
        metrics.RECORDING_FAILURES.inc()
        if exc.field is not None:
            message = f"{exc.field}: {exc.message}"
            raise ApiError(400, "invalid", message, {exc.field: [exc.message]}) from exc
        raise ApiError(
            500, "server_error", "The decision record was rejected; it has been logged."
        ) from exc
    except RecordingBusy as exc:
        metrics.RECORDING_FAILURES.inc()
        raise ApiError(
            503,
            "recording_unavailable",
            "Too many decisions are waiting to be recorded; nothing was decided. Retry.",
        ) from exc
    except RecordingFailed as exc:
        metrics.RECORDING_FAILURES.inc()
        raise ApiError(
            503,
            "recording_unavailable",
            "The decision could not be recorded; nothing was decided. Retry.",
        ) from exc
    if outcome == "duplicate":
        # Another request with this request_id won (and has committed): answer with its
        # decision, or 409 if it carried another body.
        stored = _stored_decision(key.application_id, data.request_id or "")
        if stored is None:  # the winner was refused, or its key expired meanwhile
            raise ApiError(503, "recording_unavailable", "Retry.")
        return _replay(stored, request_sha256)
    model = decision.model
    metrics.DECISIONS.labels(data.task_class, str(model.tier), decision.strategy).inc()
    metrics.DECISION_SECONDS.observe((time.perf_counter_ns() - started) / 1e9)
    metrics.ACTIVE_VERSION.set(decision.routing_table_version)
    return 201, response
