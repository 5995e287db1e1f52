"""Proposals API: list and read proposals; Reviewers approve or reject them."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.authentication import ApiPrincipal
from controlplane.errors import ApiError, ErrorSerializer
from controlplane.permissions import scope_required
from controlplane.roles import REVIEWER, user_has_role
from evaluation import selectors, services
from evaluation.models import Proposal, ProposalStatus


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
