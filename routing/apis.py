"""Decision API: decide (hot path), report outcomes, read a decision's whole path."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.authentication import ApiPrincipal
from controlplane.errors import ApiError
from controlplane.permissions import scope_required
from controlplane.roles import ADMIN, user_has_role
from routing import metrics
from routing.schemas import (
    CascadeInput,
    DecisionInput,
    OutcomeReport,
    cascade_input_decode,
    outcome_report_decode,
)
from routing.serializers import (
    CascadeOutputSerializer,
    DecisionDetailOutput,
    DecisionOutputSerializer,
    ErrorSerializer,
    OutcomeOutputSerializer,
    request_body,
)
from routing.services import decision_create
from telemetry.ids import is_uuid7, uuid7_time
from telemetry.models import DecisionOutcome, DecisionRecord
from telemetry.services import (
    AttemptInput,
    OutcomeConflict,
    OutcomeInput,
    attempt_models_unknown,
    outcome_report,
)

_ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid input; names the field"),
    401: OpenApiResponse(ErrorSerializer, description="Missing, invalid, revoked or expired key"),
    403: OpenApiResponse(
        ErrorSerializer,
        description="The key lacks the scope, or the body names a team its application may "
        "not act for (Application.acts_for_teams)",
    ),
    503: OpenApiResponse(ErrorSerializer, description="Database unreachable; retry"),
}


def _json(body: Any, status: int) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), status=status, content_type="application/json")


class DecisionCreateApi(APIView):
    """POST /api/v1/decisions — which model should handle this request?

    In production the WSGI fast path (routing.fastpath) answers this URL before Django's
    middleware; this view runs the same pipeline and documents it in the OpenAPI schema.
    """

    authentication_classes: list[Any] = []  # the pipeline authenticates from its own cache
    permission_classes: list[Any] = []

    @extend_schema(
        request=request_body(DecisionInput),
        responses={
            201: DecisionOutputSerializer,
            200: OpenApiResponse(DecisionOutputSerializer, description="Repeated request_id"),
            409: OpenApiResponse(
                ErrorSerializer, description="request_id already used with another body"
            ),
            413: OpenApiResponse(ErrorSerializer, description="Prompt or metadata too large"),
            422: OpenApiResponse(ErrorSerializer, description="No model can take the request"),
            429: OpenApiResponse(ErrorSerializer, description="Hard budget limit reached"),
            **_ERRORS,
        },
        tags=["decisions"],
        operation_id="decisions_create",
        auth=[{"ApiKey": []}],  # type: ignore[list-item]
    )
    def post(self, request: Request) -> HttpResponse:
        status, body = decision_create(
            authorization=request.META.get("HTTP_AUTHORIZATION", ""),
            body=request._request.body,  # raw bytes: decoded by msgspec, not DRF parsers
        )
        return HttpResponse(orjson.dumps(body), status=status, content_type="application/json")


def _decision_for(request: Request, decision_id: str) -> DecisionRecord:
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
    user = request.user
    if isinstance(user, ApiPrincipal):
        if user.application.pk != record.application_id:
            raise ApiError(404, "not_found", "No such decision.")
    elif not (getattr(user, "is_staff", False) or user_has_role(user, ADMIN)):
        raise ApiError(404, "not_found", "No such decision.")
    return record


class DecisionDetailApi(APIView):
    """GET /api/v1/decisions/{id} — the whole stored path and the outcome."""

    permission_classes = [scope_required("read")]

    @extend_schema(
        responses={200: DecisionDetailOutput, 404: ErrorSerializer, **_ERRORS},
        tags=["decisions"],
    )
    def get(self, request: Request, decision_id: str) -> Response:
        record = _decision_for(request, decision_id)
        outcome = DecisionOutcome.objects.filter(
            decision_id=record.id, decision_created_at=record.created_at
        ).first()
        return Response(DecisionDetailOutput.from_record(record, outcome))


class DecisionOutcomeApi(APIView):
    """POST /api/v1/decisions/{id}/outcome — what happened: attempts, tokens, latency."""

    permission_classes = [scope_required("report")]

    @extend_schema(
        request=request_body(OutcomeReport),
        responses={
            200: OutcomeOutputSerializer,
            404: ErrorSerializer,
            409: OpenApiResponse(
                ErrorSerializer, description="Changes an attempt that was already charged"
            ),
            **_ERRORS,
        },
        tags=["decisions"],
    )
    def post(self, request: Request, decision_id: str) -> Response:
        report = outcome_report_decode(request._request.body)  # the one schema, as decided
        record = _decision_for(request, decision_id)
        attempts: list[AttemptInput] = [
            {
                "model": a.model,
                "status": a.status.value,
                "latency_ms": a.latency_ms,
                "input_tokens": a.input_tokens,
                "output_tokens": a.output_tokens,
                "escalation_reason": a.escalation_reason,
            }
            for a in report.attempts
        ]
        unknown = attempt_models_unknown(attempts)
        if unknown:
            field, messages = next(iter(unknown.items()))
            raise ApiError(400, "invalid", f"{field}: {messages[0]}", unknown)
        try:
            outcome = outcome_report(
                OutcomeInput(
                    decision=record,
                    attempts=attempts,
                    final_status=report.final_status.value,
                    quality_score=report.quality_score,
                    user_feedback=report.user_feedback,
                    validation=report.validation,
                    retrieval_document_ids=report.retrieval_document_ids,
                )
            )
        except OutcomeConflict as exc:
            raise ApiError(409, "conflict", str(exc), {"attempts": [str(exc)]}) from exc
        return Response(OutcomeOutputSerializer.from_outcome(outcome))


class DecisionCascadeApi(APIView):
    """POST /api/v1/decisions/{id}/cascade — accept the cheap attempt or escalate?"""

    permission_classes = [scope_required("decide")]

    @extend_schema(
        request=request_body(CascadeInput),
        responses={
            200: CascadeOutputSerializer,
            404: ErrorSerializer,
            409: OpenApiResponse(ErrorSerializer, description="Too many cascade checks"),
            **_ERRORS,
        },
        tags=["decisions"],
    )
    def post(self, request: Request, decision_id: str) -> Response:
        from evaluation.services.cascade import cascade_check

        attempt = cascade_input_decode(request._request.body)
        record = _decision_for(request, decision_id)
        return Response(cascade_check(record=record, attempt=attempt))


class MetricsView(APIView):
    """GET /metrics — Prometheus text format (read-scope key or a signed-in Viewer)."""

    permission_classes = [scope_required("read")]

    @extend_schema(exclude=True)
    def get(self, request: Request) -> HttpResponse:
        payload, content_type = metrics.metrics_payload()
        return HttpResponse(payload, content_type=content_type)
