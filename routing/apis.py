"""Decision API: decide (the hot path). Reading a decision and reporting its outcome are the
decision record's APIs (telemetry.apis)."""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.permissions import scope_required
from routing import metrics
from routing.schemas import CascadeInput, DecisionInput, cascade_input_decode
from routing.serializers import (
    CascadeOutputSerializer,
    DecisionOutputSerializer,
    ErrorSerializer,
    request_body,
)
from routing.services import decision_create
from telemetry.record import decision_for_caller

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
        record = decision_for_caller(request.user, decision_id)
        return Response(cascade_check(record=record, attempt=attempt))


class MetricsView(APIView):
    """GET /metrics — Prometheus text format (read-scope key or a signed-in Viewer)."""

    permission_classes = [scope_required("read")]

    @extend_schema(exclude=True)
    def get(self, request: Request) -> HttpResponse:
        payload, content_type = metrics.metrics_payload()
        return HttpResponse(payload, content_type=content_type)
