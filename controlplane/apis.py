"""Registry API: read the registry; operators activate and roll back routing tables."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane import selectors, services
from controlplane.errors import error_responses
from controlplane.models import ModelEndpoint, Route, RoutingTableVersion, TaskClass
from controlplane.permissions import scope_required
from controlplane.roles import OPERATOR


class ModelEndpointOutput(serializers.ModelSerializer[ModelEndpoint]):
    class Meta:
        model = ModelEndpoint
        fields = [
            "slug",
            "provider",
            "base_url",
            "provider_model",
            "version",
            "tier",
            "locality",
            "context_window",
            "max_output_tokens",
            "status",
        ]


@extend_schema_field({"type": "object", "description": "JSON Schema of the output"})
class _JsonSchemaField(serializers.JSONField):
    pass


class TaskClassOutput(serializers.ModelSerializer[TaskClass]):
    output_schema = _JsonSchemaField(allow_null=True, read_only=True)

    class Meta:
        model = TaskClass
        fields = [
            "slug",
            "name",
            "description",
            "risk",
            "data_policy",
            "default_output_cap",
            "output_schema",
            "latency_class",
            "quality_target",
            "is_active",
        ]


class RouteOutput(serializers.ModelSerializer[Route]):
    task_class: serializers.SlugRelatedField[TaskClass] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    primary: serializers.SlugRelatedField[ModelEndpoint] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    escalation_triggers = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = Route
        fields = [
            "task_class",
            "primary",
            "fallbacks",
            "escalation_triggers",
            "max_context_tokens",
            "max_latency_budget_ms",
            "data_classifications",
            "teams",
            "output_cap",
            "strategy",
        ]


class RoutingVersionOutput(serializers.ModelSerializer[RoutingTableVersion]):
    routes = serializers.SerializerMethodField()

    class Meta:
        model = RoutingTableVersion
        fields = ["number", "status", "note", "created_at", "activated_at", "routes"]

    def get_routes(self, obj: RoutingTableVersion) -> list[dict[str, Any]]:
        return RouteOutput(selectors.routing_version_routes(obj), many=True).data  # type: ignore[return-value]


class ModelListApi(APIView):
    permission_classes = [scope_required("read")]

    @extend_schema(
        responses={200: ModelEndpointOutput(many=True), **error_responses()}, tags=["registry"]
    )
    def get(self, request: Request) -> Response:
        return Response(ModelEndpointOutput(selectors.model_endpoint_list(), many=True).data)


class TaskClassListApi(APIView):
    permission_classes = [scope_required("read")]

    @extend_schema(
        responses={200: TaskClassOutput(many=True), **error_responses()}, tags=["registry"]
    )
    def get(self, request: Request) -> Response:
        return Response(TaskClassOutput(selectors.task_class_list(), many=True).data)


class RoutingVersionListApi(APIView):
    permission_classes = [scope_required("read")]

    @extend_schema(
        responses={200: RoutingVersionOutput(many=True), **error_responses()},
        tags=["registry"],
    )
    def get(self, request: Request) -> Response:
        versions = selectors.routing_version_list()[:50]
        return Response(RoutingVersionOutput(versions, many=True).data)


class RoutingVersionActivateApi(APIView):
    permission_classes = [scope_required("admin", role=OPERATOR)]

    class InputSerializer(serializers.Serializer[Any]):
        comment = serializers.CharField(required=False, allow_blank=True, max_length=2000)

    @extend_schema(
        request=InputSerializer,
        responses={200: RoutingVersionOutput, **error_responses(400, 404)},
        tags=["registry"],
    )
    def post(self, request: Request, number: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = get_object_or_404(RoutingTableVersion, number=number)
        user = request.user if getattr(request.user, "pk", None) else None
        version = services.routing_version_activate(
            version=version, user=user, comment=data.validated_data.get("comment", "")
        )
        return Response(RoutingVersionOutput(version).data)


class RoutingVersionRollbackApi(APIView):
    permission_classes = [scope_required("admin", role=OPERATOR)]

    @extend_schema(
        request=None,
        responses={200: RoutingVersionOutput, **error_responses(400)},
        tags=["registry"],
    )
    def post(self, request: Request) -> Response:
        user = request.user if getattr(request.user, "pk", None) else None
        version = services.routing_version_rollback(user=user)
        return Response(RoutingVersionOutput(version).data)
