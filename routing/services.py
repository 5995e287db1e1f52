"""The decision pipeline shared by the WSGI fast path and the DRF view.

``decision_create`` takes the raw Authorization header and body and returns the status and
body to send. Its steps, in order:

1. Authenticate the key from the in-process cache (scope ``decide``).
2. Decode and type-check the body (msgspec), enforce size limits. The effective team is
   the key's application's team; a body ``team`` naming another team is allowed only if
   the application may act for it (``Application.acts_for_teams``), else 403.
3. A repeated ``request_id`` returns the stored decision (409 if the body differs).
4. Scan every free-text field for personal data (fail closed: a failing scan counts as
   personal) - ``routing.pii.request_scan``.
5. Decide with the plain-Python engine on the in-memory snapshot; for a class whose route's
   strategy is ``llm`` and that has an enabled LLM router, ask it to pick among the
   eligible candidates (``routing.llm_router``; bounded by its timeout, else the rule's
   decision stands).
6. Record the decision durably (group commit) with its worst-case cost held against
   every budget that applies (telemetry/budgets.py; for the gateway, a call whose context a
   local model may condense first holds that call's worst case too), and only then answer.
   A budget the hold does not fit refuses it: 429 for a ``block`` budget; for a
   ``local_only`` budget, decide again with that budget exhausted (the request stays
   local).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import msgspec
import orjson
from django.conf import settings

from controlplane.authentication import bearer_secret
from controlplane.errors import ApiError
from routing import metrics
from routing.condense import condenser_for, condensing_worst_tokens, estimate_tokens
from routing.engine import (
    BudgetExceeded,
    BudgetView,
    Decision,
    DecisionRequest,
    ModelInfo,
    NoEligibleModel,
    Snapshot,
    UnknownTaskClass,
    decide,
    estimated_cost_usd,
)
from routing.learned import learned_template
from routing.llm_router import decision_llm_routed, router_answer_parse, router_messages
from routing.pii import request_free_text_stored, request_scan, request_sensitive
from routing.pinning import PinRefused, decision_pinned
from routing.schemas import DecisionInput, decision_input_decode
from routing.snapshot import KeyInfo, registry_cache
from telemetry.budgets import BudgetLeases
from telemetry.ids import uuid7, uuid7_time
from telemetry.record import decision_response, decision_row_build, replay, stored_decision
from telemetry.recorder import (
    Committing,
    DecisionRow,
    RecordingBusy,
    RecordingFailed,
    RecordingInvalid,
    RecordingRefused,
    Reservation,
    recorder,
)

logger = logging.getLogger(__name__)

# Worst cases are held against budgets out of this process's budget leases, per batch, by
# the recorder's writer (telemetry/budgets.py).
recorder.admission = BudgetLeases()


def _decisions_counted(stored: list[tuple[DecisionRow, float]]) -> None:
    """The decision metrics, kept by the recorder's writer thread for each batch it commits
    (``recorder.on_stored``): one update per label set instead of one per request thread."""
    counts: dict[tuple[str, str, str], int] = {}
    version = 0
    for row, seconds in stored:
        labels = (row["task_class"], str(row["tier"]), row["strategy"])
        counts[labels] = counts.get(labels, 0) + 1
        version = max(version, row["routing_table_version"])
        metrics.DECISION_SECONDS.observe(seconds)
    for labels, count in counts.items():
        metrics.DECISIONS.labels(*labels).inc(count)
    metrics.ACTIVE_VERSION.set(version)


recorder.on_stored = _decisions_counted


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


def _effective_team(key: KeyInfo, team: str | None) -> str:
    """The team whose budgets and route conditions apply, and which is charged."""
    if not team or team == key.team:
        return key.team
    if team in key.acts_for:
        return team
    message = (
        f"This API key's application ({key.application}) belongs to team {key.team!r} and "
        f"may not act for team {team!r}; omit 'team' or ask an Operator to allow it "
        "(Application → acts for teams)."
    )
    raise ApiError(403, "forbidden", f"team: {message}", {"team": [message]})


def _budget_body(view: BudgetView | None, budget_id: int, **numbers: float) -> dict[str, Any]:
    """The ``budget`` of a 429 ``budget_exceeded`` answer (engine pre-check or admission)."""
    body: dict[str, Any] = {
        "name": view.name if view else "",
        "scope": view.scope if view else "",
        "scope_key": view.scope_key if view else None,
        "spent_usd": round(view.spent_usd, 6) if view else 0.0,
        "reserved_usd": round(view.reserved_usd, 6) if view else 0.0,
        "limit_usd": view.limit_usd if view else 0.0,
    }
    body.update({k: round(v, 6) for k, v in numbers.items()})
    body["budget_id"] = budget_id
    return body


def _budget_exceeded(body: dict[str, Any]) -> ApiError:
    return ApiError(
        429,
        "budget_exceeded",
        f"Budget {body['name']!r} ({body['scope']}) has reached its hard limit of "
        f"${body['limit_usd']:.2f} (spent ${body['spent_usd']:.2f}, reserved by requests "
        f"in flight ${body['reserved_usd']:.2f}).",
        budget=body,
    )


def _reservations(
    decision: Decision, input_tokens: int, condenser: ModelInfo | None, condense_above: int
) -> list[Reservation]:
    """The decision's worst case (input + output cap at the chosen model's price in force
    now) — plus, when the call's context may be condensed first, the condensing call's
    worst case at the local model's price (``routing.condense.condensing_worst_tokens``) —
    against every budget that applies. Settling the outcome releases it all and charges
    what was spent, so spent + reserved never undercounts a call in flight."""
    worst = estimated_cost_usd(decision.model, input_tokens, decision.max_output_tokens)
    if condenser is not None:
        worst += estimated_cost_usd(
            condenser,
            *condensing_worst_tokens(input_tokens, condenser.max_output_tokens, condense_above),
        )
    if worst <= 0:
        return []
    return [{"budget_id": b.budget_id, "amount_usd": worst} for b in decision.budgets]


def _decide(engine_request: DecisionRequest, snapshot: Snapshot) -> Decision:
    """The engine's decision, or the API error its refusal maps to."""
    try:
        return decide(engine_request, snapshot)
    except UnknownTaskClass as exc:
        raise ApiError(
            400,
            "unknown_task_class",
            f"Unknown task class {engine_request.task_class!r}; valid: {', '.join(exc.valid)}.",
            {"task_class": [f"valid task classes: {', '.join(exc.valid)}"]},
            valid_task_classes=list(exc.valid),
        ) from exc
    except BudgetExceeded as exc:
        b = exc.budget
        raise _budget_exceeded(_budget_body(b, b.budget_id)) from exc
    except NoEligibleModel as exc:
        raise ApiError(
            422,
            "no_eligible_model",
            "No model in the route or registry can take this request.",
            candidates=[{"model": c.model, "reason": c.reason} for c in exc.candidates],
        ) from exc


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
    made = decision_make(key, data, started=started)
    if isinstance(made, Decided):
        return 201, made.response
    return made  # a repeated request_id: the stored decision


def api_key_authenticate(header: str, scope: str) -> KeyInfo:
    """The key of an ``Authorization: Bearer …`` header with ``scope`` (ApiError 401/403)."""
    return _authenticate(header, scope)


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision made and durably recorded, its budget holds taken (the gateway calls it)."""

    decision: Decision
    decision_id: uuid.UUID
    created_at: datetime
    input_tokens: int
    response: dict[str, Any]
    team: str = ""  # the team the call is charged to
    sensitive: bool = False  # personal/confidential data: detected, declared or undecidable
    # The stored row's columns that charging an outcome reads (``RECORD_FOR_OUTCOME``), its
    # budget holds included: the gateway charges without reading the row back.
    stored: dict[str, Any] | None = None
    # ``decision_make(wait_commit=False)``: the row is handed to the recorder, its holds
    # taken, its COMMIT still running — nothing may be acknowledged before this resolves
    # to "stored". None: committed already.
    committing: Committing | None = None
    # ``decision_make(condense=True)`` (the gateway): the local model that condenses the
    # call's long context (``routing.condense``), its worst case held with the decision's.
    condenser: ModelInfo | None = None


# What telemetry.services needs of a decision to charge its outcome.
RECORD_FOR_OUTCOME = (
    "id", "created_at", "application_id", "application", "team", "task_class", "model", "tier",
    "budget_holds",
)  # fmt: skip


def decision_make(
    key: KeyInfo,
    data: DecisionInput,
    *,
    started: int,
    pinned_model: str | None = None,
    wait_commit: bool = True,
    condense: bool = False,
) -> Decided | tuple[int, dict[str, Any]]:
    """Steps 2-6 of the pipeline for an authenticated key and a decoded request: the
    recorded decision, or (status, body) of the stored decision a repeated ``request_id``
    names. ``pinned_model``: the caller named a concrete model (the OpenAI-compatible
    gateway); it replaces the engine's choice only if the policy gate and the request's
    limits allow it (``routing.pinning``), and is budgeted and recorded the same way.

    ``wait_commit=False`` (the gateway): when the budget holds are taken at once
    (``recorder.submit``), return before the row's COMMIT with ``Decided.committing``; the
    caller may call the model meanwhile but acknowledges nothing before it resolves.
    Otherwise (a lease to take, a refusal possible) it waits as usual.

    ``condense=True`` (the gateway, which condenses long contexts for classes that enable
    it): ``Decided.condenser`` names the local model that would condense this call, and
    the budget holds include that call's worst case."""
    _check_sizes(data)
    team = _effective_team(key, data.team)
    request_sha256 = _request_sha256(data) if data.request_id else ""
    if data.request_id:
        stored = stored_decision(key.application_id, data.request_id)
        if stored is not None:
            return replay(stored, request_sha256)

    snapshot = registry_cache.snapshot()
    prompt = data.prompt or ""
    scan = request_scan(data)  # every free-text field; fail closed
    input_tokens = data.input_tokens if data.input_tokens is not None else estimate_tokens(prompt)
    context_tokens = data.context_tokens if data.context_tokens is not None else input_tokens
    extras = registry_cache.extras(data.task_class)
    keep_days = extras.prompt_retention_days if extras is not None else 0
    kept = request_free_text_stored(data, scan, keep_days=keep_days)  # retention, every field
    exhausted: frozenset[int] = frozenset()
    while True:
        engine_request = DecisionRequest(
            task_class=data.task_class,
            input_tokens=input_tokens,
            context_tokens=context_tokens,
            latency_budget_ms=data.latency_budget_ms,
            max_cost_usd=data.max_cost_usd,
            data_classification=data.data_classification,
            pii_found=scan.types,
            pii_detection_failed=scan.failed,
            team=team,
            application=key.application,
            exhausted_budgets=exhausted,
            prompt=prompt,
            prompt_template=learned_template(data.prompt_template),
            metadata=data.metadata,
        )
        decision = _decide(engine_request, snapshot)
        if pinned_model is not None:
            decision = _pinned(decision, pinned_model, engine_request, snapshot)
        else:
            decision = _llm_routed(decision, engine_request, snapshot)
        threshold = extras.condense_above_tokens if extras is not None else 0
        condenser = (
            condenser_for(threshold, decision.model, snapshot.models.values()) if condense else None
        )
        decision_id = uuid7()
        created_at = uuid7_time(decision_id)
        decision_us = (time.perf_counter_ns() - started) // 1000
        response = decision_response(
            decision_id=decision_id, decision=decision, decision_us=decision_us
        )
        row = decision_row_build(
            decision_id=decision_id,
            created_at=created_at,
            request=engine_request,
            decision=decision,
            application_id=key.application_id,
            application=key.application,
            team=team,
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
            request_sha256=request_sha256,
            reservations=_reservations(decision, input_tokens, condenser, threshold),
        )
        committing = None
        try:
            if not wait_commit:
                committing = recorder.submit(row, timeout_s=settings.SWITCHYARD_RECORD_TIMEOUT_S)
            if committing is None:
                outcome = recorder.record(row, timeout_s=settings.SWITCHYARD_RECORD_TIMEOUT_S)
            else:
                outcome = "submitted"
        except RecordingRefused as exc:
            # A budget's worst case did not fit (telemetry/budgets.py). A local_only budget
            # refuses only cloud decisions: decide again with it exhausted (stays local).
            refusal = exc.detail
            budget_id = int(refusal["budget_id"])
            if refusal.get("hard_action") == "block" or budget_id in exhausted:
                view = next((b for b in decision.budgets if b.budget_id == budget_id), None)
                numbers = {k: float(refusal[k]) for k in ("spent_usd", "reserved_usd", "limit_usd")}
                raise _budget_exceeded(_budget_body(view, budget_id, **numbers)) from exc
            exhausted = exhausted | {budget_id}
            continue
        except RecordingFailed as exc:
            raise recording_error(exc) from exc
        break
    if outcome == "duplicate":
        # Another request with this request_id won (and has committed): answer with its
        # decision, or 409 if it carried another body.
        stored = stored_decision(key.application_id, data.request_id or "")
        if stored is None:  # the winner was refused, or its key expired meanwhile
            raise ApiError(503, "recording_unavailable", "Retry.")
        return replay(stored, request_sha256)
    is_sensitive = request_sensitive(scan.types, scan.failed, data.data_classification)
    columns = cast(dict[str, Any], row)  # budget_holds as the recorder's admission set them
    as_stored = {name: columns[name] for name in RECORD_FOR_OUTCOME}
    return Decided(
        decision,
        decision_id,
        created_at,
        input_tokens,
        response,
        team,
        is_sensitive,
        as_stored,
        committing,
        condenser,
    )


def recording_error(exc: RecordingFailed) -> ApiError:
    """What the client is told when its decision could not be recorded (counted)."""
    metrics.RECORDING_FAILURES.inc()
    if isinstance(exc, RecordingInvalid):
        if exc.field is not None:
            message = f"{exc.field}: {exc.message}"
            return ApiError(400, "invalid", message, {exc.field: [exc.message]})
        return ApiError(
            500, "server_error", "The decision record was rejected; it has been logged."
        )
    if isinstance(exc, RecordingBusy):
        return ApiError(
            503,
            "recording_unavailable",
            "Too many decisions are waiting to be recorded; nothing was decided. Retry.",
        )
    return ApiError(
        503,
        "recording_unavailable",
        "The decision could not be recorded; nothing was decided. Retry.",
    )


def _llm_routed(decision: Decision, request: DecisionRequest, snapshot: Snapshot) -> Decision:
    """The LLM router's pick among the decision's eligible models, for a class whose route's
    strategy is ``llm`` and that has an enabled router (``registry_cache.llm_router`` holds
    only those; ``routing.llm_router``): skipped under a policy or budget restriction, with a single
    eligible model or without a prompt. The router model is called through the project's
    model client with the router's timeout and no retries."""
    router = registry_cache.llm_router(request.task_class)
    if (
        router is None
        or decision.local_only
        or decision.strategy in ("policy", "budget")
        or not decision.fallbacks
        or not request.prompt
    ):
        return decision
    from evaluation.client import ModelTarget, chat_complete

    eligible = [decision.model, *[f.model for f in decision.fallbacks]]
    model = snapshot.models.get(router.router_model)
    if model is None or model.locality != "local" or model.status != "active":
        return decision_llm_routed(
            decision, snapshot, task_class=request.task_class, router_model=router.router_model,
            status="unavailable", latency_ms=0.0, answer="", choice=None,
        )  # fmt: skip
    ordered = sorted(eligible, key=lambda m: (estimated_cost_usd(m, 1000, 1000), m.tier))
    messages = router_messages(
        [(m.slug, router.descriptions.get(m.slug, "")) for m in ordered], request.prompt
    )
    target = ModelTarget(
        slug=model.slug,
        base_url=model.base_url,
        provider_model=model.provider_model,
        tier=model.tier,
        locality=model.locality,
        timeout_s=router.timeout_ms / 1000,
        max_output_tokens=32,
    )
    result = chat_complete(target, messages, max_tokens=32, temperature=0.0, retries=0)
    choice = (
        router_answer_parse(result.content, [m.slug for m in eligible])
        if result.status == "ok"
        else None
    )
    outcome = "unparsed" if result.status == "ok" and choice is None else result.status
    metrics.LLM_ROUTER_CALLS.labels(outcome).inc()
    metrics.LLM_ROUTER_SECONDS.observe(result.latency_ms / 1000)
    return decision_llm_routed(
        decision,
        snapshot,
        task_class=request.task_class,
        router_model=model.slug,
        status=result.status,
        latency_ms=result.latency_ms,
        answer=result.content,
        choice=choice,
    )


def _pinned(
    decision: Decision, slug: str, request: DecisionRequest, snapshot: Snapshot
) -> Decision:
    try:
        return decision_pinned(decision, slug, request, snapshot)
    except PinRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message, {"model": [exc.message]}) from exc
