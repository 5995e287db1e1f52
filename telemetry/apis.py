"""The decision record's APIs: read a decision's whole path, report its outcome.

POST /api/v1/decisions (deciding) is routing's; what is stored is read and completed here
(telemetry.record owns the record; telemetry.services charges outcomes)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.errors import ApiError, ErrorSerializer, error_responses
from controlplane.permissions import scope_required
from routing.schemas import OutcomeReport, outcome_report_decode
from routing.serializers import DecisionDetailOutput, OutcomeOutputSerializer, request_body
from telemetry.models import DecisionOutcome
from telemetry.record import decision_for_caller
from telemetry.services import (
    SERVER_VALIDATION_KEYS,
    AttemptInput,
    OutcomeConflict,
    OutcomeInput,
    attempt_models_unknown,
    outcome_report,
)


class DecisionDetailApi(APIView):
    """GET /api/v1/decisions/{id} — the whole stored path and the outcome."""

    permission_classes = [scope_required("read")]

    @extend_schema(
        responses={200: DecisionDetailOutput, **error_responses(404)},
        tags=["decisions"],
    )
    def get(self, request: Request, decision_id: str) -> Response:
        record = decision_for_caller(request.user, decision_id)
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
            **error_responses(400, 404),
            409: OpenApiResponse(
                ErrorSerializer, description="Changes an attempt that was already charged"
            ),
        },
        tags=["decisions"],
    )
    def post(self, request: Request, decision_id: str) -> Response:
        report = outcome_report_decode(request._request.body)  # the one schema, as decided
        server_keys = sorted(SERVER_VALIDATION_KEYS.intersection(report.validation))
        if server_keys:
            message = "written by the gateway only (it is what the dashboards count as saved)"
            fields = {f"validation.{k}": [message] for k in server_keys}
            raise ApiError(400, "invalid", f"validation.{server_keys[0]}: {message}", fields)
        record = decision_for_caller(request.user, decision_id)
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
