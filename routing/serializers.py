"""The OpenAPI description of the decision API's shapes.

Request bodies are the msgspec structs of ``routing.schemas`` (the hot path decodes with
them): :func:`request_body` wraps one for ``extend_schema`` and :class:`MsgspecBodyExtension`
publishes msgspec's own JSON Schema for it, so there is no second copy to drift. Responses
are described by the DRF serializers below.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import serializers

from controlplane.errors import ErrorSerializer  # noqa: F401  (re-exported for the views)
from routing.enums import DecisionStrategy
from telemetry.models import DecisionOutcome, DecisionRecord

# Request-side names, apart from the response serializers' (e.g. PromptTemplate).
_REF = "#/components/schemas/{name}Request"


class MsgspecBody(serializers.Serializer[Any]):
    """Stands for a msgspec request struct in ``extend_schema(request=...)``."""

    struct: ClassVar[type[msgspec.Struct]]


def request_body(struct: type[msgspec.Struct]) -> type[MsgspecBody]:
    return type(f"{struct.__name__}Body", (MsgspecBody,), {"struct": struct})


class MsgspecBodyExtension(OpenApiSerializerExtension):
    """msgspec's JSON Schema of the struct as it is (OpenAPI 3.1 schemas are JSON Schema)."""

    target_class = MsgspecBody
    match_subclasses = True

    def _struct(self) -> type[msgspec.Struct]:
        target = self.target if isinstance(self.target, type) else type(self.target)
        return target.struct  # type: ignore[attr-defined]

    def get_name(self, auto_schema: Any, direction: Any) -> str:
        return self._struct().__name__

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        struct = self._struct()
        _, components = msgspec.json.schema_components([struct], ref_template=_REF)
        for name, schema in components.items():
            if name != struct.__name__:  # nested structs and enums, by reference
                auto_schema.registry.register_on_missing(
                    ResolvedComponent(
                        name=f"{name}Request",
                        type=ResolvedComponent.SCHEMA,
                        object=f"msgspec:{name}",
                        schema=schema,
                    )
                )
        own: dict[str, Any] = components[struct.__name__]
        return own


class PromptTemplateSerializer(serializers.Serializer[Any]):
    id = serializers.CharField(max_length=128)
    version = serializers.CharField(max_length=64, required=False)


class RetrievalSerializer(serializers.Serializer[Any]):
    query = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    document_ids = serializers.ListField(
        child=serializers.CharField(max_length=256), required=False, max_length=500
    )


class ModelRefSerializer(serializers.Serializer[Any]):
    slug = serializers.CharField()
    base_url = serializers.CharField()
    provider_model = serializers.CharField()
    version = serializers.CharField()
    tier = serializers.IntegerField()
    locality = serializers.CharField()


class FallbackSerializer(serializers.Serializer[Any]):
    model = serializers.CharField()
    base_url = serializers.CharField()
    provider_model = serializers.CharField()
    tier = serializers.IntegerField()
    locality = serializers.CharField()
    triggers = serializers.ListField(child=serializers.CharField())


class PolicySerializer(serializers.Serializer[Any]):
    pii_types_found = serializers.ListField(child=serializers.CharField())
    actions = serializers.ListField(child=serializers.CharField())


class BudgetStateSerializer(serializers.Serializer[Any]):
    scope = serializers.CharField()
    name = serializers.CharField()
    scope_key = serializers.CharField(allow_null=True)
    spent_usd = serializers.FloatField(help_text="Charged by reported outcomes this period")
    reserved_usd = serializers.FloatField(
        help_text="Held by decisions whose outcome has not been reported yet (worst case)"
    )
    limit_usd = serializers.FloatField()
    remaining_usd = serializers.FloatField(help_text="limit - spent - reserved, at least 0")
    action = serializers.CharField()


CONFIDENCE_HELP = (
    "The calibrated probability (0–1) that the chosen model succeeds on this request. "
    "Estimated from the model's graded outcomes on this task class over the last "
    "SWITCHYARD_CONFIDENCE_WINDOW_DAYS days (outcomes reported with a quality_score or a "
    "boolean validation.valid / validation.schema_valid, and graded sweep samples), shrunk "
    "towards the class's rate on the model's tier (tier prior 0.7 / 0.8 / 0.9) when there is "
    "little data. An outcome counts as a success when the routed model's first attempt "
    "ended ok, its quality_score is at least 0.5 and no validation verdict is false. "
    "Calibration (reliability curve, Brier score) is measured on the calibration page. "
    "On a learned route it is the learned router's predicted success of the chosen model."
)
STRATEGY_HELP = (
    "How the model was chosen: rule (the route's primary), fallback (the primary was not "
    "eligible), policy / budget (a data policy or a budget restricted the choice), learned "
    "(the class's learned router), semantic (the semantic route whose examples are most "
    "similar to the prompt), llm (the class's LLM router picked among the eligible models). "
    "learned, semantic and llm apply only where the route's strategy (Route.strategy) says so "
    "and the class has that router; otherwise the route's rule decides."
)


class DecisionOutputSerializer(serializers.Serializer[Any]):
    decision_id = serializers.UUIDField()
    model = ModelRefSerializer()
    confidence = serializers.FloatField(
        min_value=0.0,
        max_value=1.0,
        help_text=CONFIDENCE_HELP,
    )
    strategy = serializers.ChoiceField(
        choices=[s.value for s in DecisionStrategy], help_text=STRATEGY_HELP
    )
    reason = serializers.CharField()
    fallbacks = FallbackSerializer(many=True)
    max_output_tokens = serializers.IntegerField()
    handoff_required = serializers.BooleanField()
    policy = PolicySerializer()
    budgets = BudgetStateSerializer(many=True)
    routing_table_version = serializers.IntegerField()
    decision_us = serializers.IntegerField()


class AttemptOutputSerializer(serializers.Serializer[Any]):
    model = serializers.CharField()
    tier = serializers.IntegerField()
    status = serializers.CharField()
    latency_ms = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    escalation_reason = serializers.CharField()
    cost_usd = serializers.CharField()
    purpose = serializers.CharField(
        required=False,
        help_text="Set on a call made for the answer rather than an attempt at it: "
        "'condense' (the gateway's local condensing call; charged, not counted as an attempt)",
    )


class OutcomeOutputSerializer(serializers.Serializer[Any]):
    decision_id = serializers.UUIDField()
    final_status = serializers.CharField()
    final_model = serializers.CharField()
    escalated = serializers.BooleanField()
    attempts = AttemptOutputSerializer(many=True)
    cost_usd = serializers.CharField()
    latency_ms = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    quality_score = serializers.FloatField(allow_null=True)
    reported_at = serializers.DateTimeField()

    @staticmethod
    def from_outcome(outcome: DecisionOutcome) -> dict[str, Any]:
        return {
            "decision_id": str(outcome.decision_id),
            "final_status": outcome.final_status,
            "final_model": outcome.final_model,
            "escalated": outcome.escalated,
            "attempts": outcome.attempts,
            "cost_usd": str(outcome.cost_usd),
            "latency_ms": outcome.latency_ms,
            "input_tokens": outcome.input_tokens,
            "output_tokens": outcome.output_tokens,
            "quality_score": outcome.quality_score,
            "reported_at": outcome.reported_at.isoformat(),
        }


class CandidateSerializer(serializers.Serializer[Any]):
    model = serializers.CharField()
    tier = serializers.IntegerField()
    accepted = serializers.BooleanField()
    reason = serializers.CharField()


class DecisionDetailOutput(serializers.Serializer[Any]):
    decision = DecisionOutputSerializer()
    created_at = serializers.DateTimeField()
    application = serializers.CharField()
    team = serializers.CharField()
    task_class = serializers.CharField()
    request_id = serializers.CharField()
    data_classification = serializers.CharField()
    input_tokens = serializers.IntegerField()
    context_tokens = serializers.IntegerField()
    candidates = CandidateSerializer(many=True)
    local_only = serializers.BooleanField()
    cascade = serializers.ListField(
        child=serializers.DictField(),
        help_text="Cascade checks of attempts (POST …/cascade), oldest first",
    )
    prompt_stored = serializers.BooleanField()
    prompt_template = PromptTemplateSerializer()
    retrieval = RetrievalSerializer()
    metadata = serializers.DictField()
    outcome = OutcomeOutputSerializer(allow_null=True)

    @staticmethod
    def from_record(record: DecisionRecord, outcome: DecisionOutcome | None) -> dict[str, Any]:
        path = record.path or {}
        return {
            "decision": record.response,
            "created_at": record.created_at.isoformat(),
            "application": record.application,
            "team": record.team,
            "task_class": record.task_class,
            "request_id": record.request_id,
            "data_classification": record.data_classification,
            "input_tokens": record.input_tokens,
            "context_tokens": record.context_tokens,
            "candidates": path.get("candidates", []),
            "local_only": bool(path.get("local_only")),
            "cascade": path.get("cascade", []),
            "prompt_stored": record.prompt is not None,
            "prompt_template": {
                "id": record.prompt_template_id,
                "version": record.prompt_template_version,
            },
            "retrieval": {
                "query": record.retrieval_query,
                "document_ids": record.retrieval_document_ids,
            },
            "metadata": record.metadata,
            "outcome": OutcomeOutputSerializer.from_outcome(outcome) if outcome else None,
        }


class CascadeOutputSerializer(serializers.Serializer[Any]):
    decision_id = serializers.UUIDField()
    model = serializers.CharField(help_text="The model whose attempt was judged")
    action = serializers.ChoiceField(choices=["accept", "escalate"])
    p_success = serializers.FloatField(
        min_value=0.0,
        max_value=1.0,
        help_text="Probability that the attempt is a success: the decision's confidence moved "
        "by the answer's evidence (routing/cascade.py)",
    )
    threshold = serializers.FloatField(
        help_text="Escalate below this (the route's confidence_below trigger, else 0.5)"
    )
    escalate_to = serializers.CharField(
        allow_null=True, help_text="The next model of the decision's fallbacks"
    )
    reasons = serializers.ListField(child=serializers.CharField())
    features = serializers.DictField(child=serializers.FloatField())
