"""Proposals API (list, read; Reviewers approve or reject), human handoffs, output checks."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.conf import settings
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.authentication import ApiPrincipal
from controlplane.errors import ApiError, ErrorSerializer, error_responses
from controlplane.permissions import scope_required
from controlplane.roles import REVIEWER, user_has_role
from evaluation import selectors, services
from evaluation.models import Handoff, OutputCheck, Proposal, ProposalStatus
from evaluation.services import handoffs
from evaluation.services.checks import output_check_run
from evaluation.services.handoffs import HandoffSubmission
from routing.schemas import (
    HandoffInput,
    OutputCheckInput,
    handoff_input_decode,
    output_check_input_decode,
)
from routing.serializers import request_body
from telemetry.record import decision_for_caller


class ReviewerPerson(BasePermission):
    """Reviews are a person's decision: a signed-in Reviewer, never an API key."""

    message = "Reviewing proposals needs a signed-in person with the Reviewer role."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return not isinstance(user, ApiPrincipal) and user_has_role(user, REVIEWER)


class ProposalOutput(serializers.ModelSerializer[Proposal]):
    id = serializers.UUIDField(source="public_id", read_only=True)
    task_class = serializers.CharField(source="task_class.slug", read_only=True)
    from_model = serializers.CharField(source="from_model.slug", read_only=True)
    to_model = serializers.CharField(source="to_model.slug", read_only=True)
    reviewed_by = serializers.SerializerMethodField()
    applied_version = serializers.SerializerMethodField()
    is_stale = serializers.SerializerMethodField()

    class Meta:
        model = Proposal
        fields = [
            "id",
            "title",
            "change",
            "status",
            "task_class",
            "from_model",
            "to_model",
            "new_fallbacks",
            "based_on_version",
            "is_stale",
            "evidence",
            "created_at",
            "reviewed_by",
            "reviewed_at",
            "review_comment",
            "applied_version",
            "applied_at",
        ]

    def get_reviewed_by(self, obj: Proposal) -> str | None:
        return obj.reviewed_by.get_username() if obj.reviewed_by else None

    def get_applied_version(self, obj: Proposal) -> int | None:
        return obj.applied_version.number if obj.applied_version else None

    def get_is_stale(self, obj: Proposal) -> bool:
        return selectors.proposal_is_stale(obj, self.context.get("active_number"))


def _get(public_id: UUID) -> Proposal:
    try:
        return selectors.proposal_get(public_id)
    except Proposal.DoesNotExist:
        raise Http404 from None


# "open" is proposed or approved; the rest are the stored statuses.
STATUS_FILTERS = ["open", *ProposalStatus.values]
_READ_ERRORS = {
    401: OpenApiResponse(ErrorSerializer, description="Missing, invalid or revoked key"),
    403: OpenApiResponse(ErrorSerializer, description="The key lacks the read scope"),
}
_REVIEW_ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Invalid input; names the field"),
    401: OpenApiResponse(ErrorSerializer, description="Not signed in"),
    403: OpenApiResponse(ErrorSerializer, description="Needs a signed-in Reviewer (no API key)"),
    404: OpenApiResponse(ErrorSerializer, description="No such proposal"),
    409: OpenApiResponse(ErrorSerializer, description="The proposal is no longer open"),
}


class ProposalListApi(APIView):
    permission_classes = [scope_required("read")]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "status",
                str,
                enum=STATUS_FILTERS,
                required=False,
                description="open = proposed or approved",
            )
        ],
        responses={
            200: ProposalOutput(many=True),
            400: OpenApiResponse(ErrorSerializer, description="Unknown status filter"),
            **_READ_ERRORS,
        },
        tags=["proposals"],
    )
    def get(self, request: Request) -> Response:
        # Checked by hand: a form-style serializer would take "?status=" as "not given".
        status = request.query_params.get("status")
        if status is not None and status not in STATUS_FILTERS:
            message = f"status must be one of {', '.join(STATUS_FILTERS)}."
            raise ApiError(400, "invalid", message, {"status": [message]})
        rows = selectors.proposal_list(status=status, limit=200)
        context = {"active_number": selectors.active_version_number()}
        return Response(ProposalOutput([r.proposal for r in rows], many=True, context=context).data)


class ProposalDetailApi(APIView):
    permission_classes = [scope_required("read")]

    @extend_schema(
        responses={
            200: ProposalOutput,
            404: OpenApiResponse(ErrorSerializer, description="No such proposal"),
            **_READ_ERRORS,
        },
        tags=["proposals"],
    )
    def get(self, request: Request, public_id: UUID) -> Response:
        context = {"active_number": selectors.active_version_number()}
        return Response(ProposalOutput(_get(public_id), context=context).data)


class ReviewInput(serializers.Serializer[Any]):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000)


class ProposalApproveApi(APIView):
    permission_classes = [ReviewerPerson]

    @extend_schema(
        request=ReviewInput,
        responses={200: ProposalOutput, **_REVIEW_ERRORS},
        tags=["proposals"],
    )
    def post(self, request: Request, public_id: UUID) -> Response:
        data = ReviewInput(data=request.data)
        data.is_valid(raise_exception=True)
        proposal = _get(public_id)
        if proposal.status != "proposed":
            raise ApiError(409, "conflict", f"The proposal is {proposal.status}, not proposed.")
        proposal = services.proposal_approve(
            proposal=proposal, user=request.user, comment=data.validated_data.get("comment", "")
        )
        context = {"active_number": selectors.active_version_number()}
        return Response(
            ProposalOutput(selectors.proposal_get(proposal.public_id), context=context).data
        )


class ProposalRejectApi(APIView):
    permission_classes = [ReviewerPerson]

    @extend_schema(
        request=ReviewInput,
        responses={200: ProposalOutput, **_REVIEW_ERRORS},
        tags=["proposals"],
    )
    def post(self, request: Request, public_id: UUID) -> Response:
        data = ReviewInput(data=request.data)
        data.is_valid(raise_exception=True)
        proposal = _get(public_id)
        if not proposal.is_open:
            raise ApiError(409, "conflict", f"The proposal is {proposal.status}; it is closed.")
        proposal = services.proposal_reject(
            proposal=proposal, user=request.user, comment=data.validated_data.get("comment", "")
        )
        context = {"active_number": selectors.active_version_number()}
        return Response(
            ProposalOutput(selectors.proposal_get(proposal.public_id), context=context).data
        )


# --- human handoffs and output checks ---------------------------------------------------------

_HANDOFF_ERRORS = error_responses(400, 404, 409, 413)


class HandoffOutput(serializers.ModelSerializer[Handoff]):
    id = serializers.UUIDField(source="public_id", read_only=True)

    class Meta:
        model = Handoff
        fields = [
            "id",
            "decision_id",
            "status",
            "source",
            "task_class",
            "team",
            "draft",
            "context",
            "sla_minutes",
            "due_at",
            "created_at",
            "final_text",
            "diff",
            "reject_reason",
            "reviewed_at",
        ]


def _raw_body(request: Request) -> bytes:
    body: bytes = request._request.body
    if len(body) > settings.SWITCHYARD_MAX_BODY_BYTES:  # the decision API's limit
        raise ApiError(413, "too_large", "The request body is too large.")
    return body


class HandoffCreateApi(APIView):
    """POST /api/v1/handoffs — hold a decision's draft for a person."""

    permission_classes = [scope_required("report")]

    @extend_schema(
        request=request_body(HandoffInput),
        responses={
            201: HandoffOutput,
            200: OpenApiResponse(HandoffOutput, description="Repeated submission: the stored one"),
            **_HANDOFF_ERRORS,
        },
        tags=["handoffs"],
    )
    def post(self, request: Request) -> Response:
        data = handoff_input_decode(_raw_body(request))
        record = decision_for_caller(request.user, data.decision_id)
        submission = HandoffSubmission(
            draft=data.draft,
            context=dict(data.context),
            sla_minutes=data.sla_minutes,
            idempotency_key=data.idempotency_key or "",
        )
        try:
            handoff, created = handoffs.handoff_submit(record=record, submission=submission)
        except handoffs.HandoffConflict as exc:
            field = "idempotency_key" if data.idempotency_key else "decision_id"
            raise ApiError(409, "idempotency_conflict", str(exc), {field: [str(exc)]}) from exc
        return Response(HandoffOutput(handoff).data, status=201 if created else 200)


class HandoffDetailApi(APIView):
    """GET /api/v1/handoffs/{id} — poll for the reviewer's answer."""

    permission_classes = [scope_required("read")]

    @extend_schema(responses={200: HandoffOutput, **error_responses(404)}, tags=["handoffs"])
    def get(self, request: Request, public_id: UUID) -> Response:
        handoff = Handoff.objects.filter(public_id=public_id).first()
        user = request.user
        if handoff is None:
            raise ApiError(404, "not_found", "No such handoff.")
        if isinstance(user, ApiPrincipal):
            if user.application.pk != handoff.application_id:
                raise ApiError(404, "not_found", "No such handoff.")
        elif not user_has_role(user, REVIEWER):
            raise ApiError(404, "not_found", "No such handoff.")
        return Response(HandoffOutput(handoff).data)


class OutputCheckOutput(serializers.ModelSerializer[OutputCheck]):
    id = serializers.UUIDField(source="public_id", read_only=True)
    handoff_id = serializers.SerializerMethodField()

    class Meta:
        model = OutputCheck
        fields = [
            "id",
            "decision_id",
            "model",
            "passed",
            "findings",
            "rules",
            "action",
            "next_model",
            "handoff_id",
            "created_at",
        ]

    def get_handoff_id(self, obj: OutputCheck) -> str | None:
        return str(obj.handoff.public_id) if obj.handoff is not None else None


class OutputCheckCreateApi(APIView):
    """POST /api/v1/decisions/{id}/checks — check an output locally (never a cloud call)."""

    permission_classes = [scope_required("report")]

    @extend_schema(
        request=request_body(OutputCheckInput),
        responses={201: OutputCheckOutput, **error_responses(400, 404, 413)},
        tags=["decisions"],
    )
    def post(self, request: Request, decision_id: str) -> Response:
        data = output_check_input_decode(_raw_body(request))
        record = decision_for_caller(request.user, decision_id)
        check = output_check_run(
            record=record, output=data.output, input_text=data.input, model=data.model or ""
        )
        return Response(OutputCheckOutput(check).data, status=201)
