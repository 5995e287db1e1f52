"""The decision API's request bodies, defined once: decoded and checked by msgspec on the
hot path, and published as the OpenAPI request schemas (``routing.serializers`` hands these
definitions to drf-spectacular unchanged).

Every string in a body is :data:`Text`: control characters (U+0000–U+001F other than tab,
line feed and carriage return) are refused at the edge with a 400 naming the field. A NUL
would otherwise reach PostgreSQL (which refuses it in ``text`` and ``jsonb``) and fail the
whole group-commit batch, other callers' decisions included.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, NoReturn

import msgspec

from routing.enums import AttemptStatus, DataClassification

NO_CONTROL_CHARACTERS = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"
Text = Annotated[str, msgspec.Meta(pattern=NO_CONTROL_CHARACTERS)]
Slug = Annotated[Text, msgspec.Meta(min_length=1, max_length=64)]
NonNegative = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
DocumentIds = Annotated[
    list[Annotated[Text, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=500)
]
# Stored as jsonb and encoded with orjson: integers must fit in 64 bits.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Scalar = Text | Int64 | float | bool | None
MetadataValue = Scalar


class PromptTemplate(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[Text, msgspec.Meta(min_length=1, max_length=128)]
    version: Annotated[Text, msgspec.Meta(max_length=64)] = ""


class Retrieval(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[Text, msgspec.Meta(max_length=10_000)] = ""
    document_ids: DocumentIds = []


class DecisionInput(msgspec.Struct, forbid_unknown_fields=True):
    """POST /api/v1/decisions"""

    task_class: Slug
    prompt: Text | None = None
    input_tokens: NonNegative | None = None
    context_tokens: NonNegative | None = None
    latency_budget_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] | None = None
    max_cost_usd: Annotated[float, msgspec.Meta(ge=0)] | None = None
    data_classification: DataClassification | None = None
    team: Slug | None = None
    end_user: Annotated[Text, msgspec.Meta(max_length=256)] | None = None
    prompt_template: PromptTemplate | None = None
    retrieval: Retrieval | None = None
    metadata: dict[Text, MetadataValue] | None = None
    request_id: Annotated[Text, msgspec.Meta(min_length=1, max_length=128)] | None = None


class AttemptReport(msgspec.Struct, forbid_unknown_fields=True):
    model: Slug
    status: AttemptStatus
    latency_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)]
    input_tokens: NonNegative
    output_tokens: NonNegative
    escalation_reason: Annotated[Text, msgspec.Meta(max_length=200)] = ""


class OutcomeReport(msgspec.Struct, forbid_unknown_fields=True):
    """POST /api/v1/decisions/{id}/outcome"""

    attempts: Annotated[list[AttemptReport], msgspec.Meta(min_length=1, max_length=20)]
    final_status: AttemptStatus
    quality_score: (
        Annotated[
            float,
            msgspec.Meta(
                ge=0,
                le=1,
                description="Grade of the answer; at least 0.5 counts the routed model's "
                "attempt as a success in the confidence estimate (see decision.confidence)",
            ),
        ]
        | None
    ) = None
    user_feedback: Annotated[Text, msgspec.Meta(max_length=32)] = ""
    # Grader or schema-check results: values are scalars, or one level of lists/objects.
    # A boolean ``valid`` or ``schema_valid`` grades the outcome (routing/confidence.py).
    validation: Annotated[
        dict[Text, Scalar | list[Scalar] | dict[Text, Scalar]],
        msgspec.Meta(
            description="Grader or schema-check results; a boolean `valid` or `schema_valid` "
            "grades the routed model's attempt for the confidence estimate"
        ),
    ] = {}
    retrieval_document_ids: DocumentIds = []


class CascadeInput(msgspec.Struct, forbid_unknown_fields=True):
    """POST /api/v1/decisions/{id}/cascade — the cheap attempt to accept or escalate."""

    output: Annotated[Text, msgspec.Meta(max_length=100_000)]
    # The model that made the attempt; the decision's model when absent.
    model: Slug | None = None
    self_confidence: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    logprobs: Annotated[
        list[Annotated[float, msgspec.Meta(ge=-1000, le=0)]], msgspec.Meta(max_length=10_000)
    ] = []
    schema_valid: bool | None = None
    finish_reason: Annotated[Text, msgspec.Meta(max_length=32)] | None = None


# Text a person reads and approves: besides control characters, no invisible characters that
# could hide or reorder what the reviewer sees (zero-width space, bidi embeddings/overrides/
# isolates, word joiners, BOM, soft hyphen). ZWJ/ZWNJ stay: scripts and emoji need them.
NO_HIDDEN_CHARACTERS = (
    r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\u00ad\u200b\u200e\u200f\u202a-\u202e"
    r"\u2060-\u2064\u2066-\u2069\ufeff]*$"
)
MAX_DRAFT_CHARS = 50_000
ReviewText = Annotated[str, msgspec.Meta(pattern=NO_HIDDEN_CHARACTERS)]
Draft = Annotated[ReviewText, msgspec.Meta(min_length=1, max_length=MAX_DRAFT_CHARS)]


class HandoffInput(msgspec.Struct, forbid_unknown_fields=True):
    """POST /api/v1/handoffs — a draft a person must approve before it is used."""

    decision_id: Annotated[Text, msgspec.Meta(min_length=1, max_length=64)]
    draft: Draft
    # What the reviewer needs beside the draft (the customer's message, the order, …).
    context: dict[
        Annotated[ReviewText, msgspec.Meta(max_length=64)],
        Annotated[ReviewText, msgspec.Meta(max_length=10_000)] | Int64 | float | bool | None,
    ] = {}
    sla_minutes: Annotated[int, msgspec.Meta(ge=1, le=10_080)] | None = None
    # Idempotency: the same key (or, without one, the same decision) answers the stored handoff.
    idempotency_key: Annotated[Text, msgspec.Meta(min_length=1, max_length=128)] | None = None


class OutputCheckInput(msgspec.Struct, forbid_unknown_fields=True):
    """POST /api/v1/decisions/{id}/checks — a model's output, checked locally."""

    output: Annotated[Text, msgspec.Meta(max_length=MAX_DRAFT_CHARS)]
    # The text the model saw; personal data in the output that is not in it is a leak.
    # Without it the decision's stored prompt is used (when the retention kept it).
    input: Annotated[Text, msgspec.Meta(max_length=200_000)] | None = None
    model: Slug | None = None


decision_input_decoder = msgspec.json.Decoder(DecisionInput)
outcome_report_decoder = msgspec.json.Decoder(OutcomeReport)
cascade_input_decoder = msgspec.json.Decoder(CascadeInput)
handoff_input_decoder = msgspec.json.Decoder(HandoffInput)
output_check_input_decoder = msgspec.json.Decoder(OutputCheckInput)
REQUEST_BODIES: tuple[type[msgspec.Struct], ...] = (
    DecisionInput,
    OutcomeReport,
    HandoffInput,
    OutputCheckInput,
    CascadeInput,
)


def _field(message: str) -> str:
    """The field a msgspec error names, without list indexes or dict keys:
    "… - at `$.attempts[0].model`" → attempts.model; "… - at `key` in `$.metadata`" → metadata.
    """
    path = ""
    if "`$." in message:
        message, path = message.rsplit("`$.", 1)
        path = re.sub(r"\[[^\]]*\]", "", path.rstrip("`"))
    if "missing required field" in message or "unknown field" in message:
        name = message.split("`")[1]
        return f"{path}.{name}" if path else name
    return path or "body"


def _whole_numbers(value: Any) -> Any:
    """JSON has one number type: 34060.0 is the integer 34060 (JSON Schema agrees)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    return value


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        if "got `float`" not in str(exc):
            refused: msgspec.DecodeError = exc
        else:  # rare: written as 12.0; decode again with whole floats as integers
            try:
                loose = _whole_numbers(msgspec.json.decode(body))
                return msgspec.convert(loose, decoder.type, strict=True)
            except msgspec.ValidationError as again:
                refused = again
    except msgspec.DecodeError as exc:
        refused = exc
    _refuse(refused)


def _refuse(exc: msgspec.DecodeError) -> NoReturn:
    """ApiError 400: malformed JSON, or the first invalid field named (ValidationError)."""
    # Imported here so that these definitions load without Django (benchmarks).
    from controlplane.errors import ApiError

    if not isinstance(exc, msgspec.ValidationError):
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}") from exc
    message = str(exc)
    field = _field(message)
    if "matching regex" in message and "u200b" in message:
        message = (
            "control and invisible characters (U+0000–U+001F other than tab, line feed and "
            "carriage return; zero-width, bidi and BOM characters) are not allowed"
        )
    elif "matching regex" in message:  # Text's pattern
        message = (
            "control characters (U+0000–U+001F other than tab, line feed and carriage "
            "return) are not allowed"
        )
    raise ApiError(400, "invalid", f"{field}: {message}", {field: [message]}) from exc


def decision_input_decode(body: bytes) -> DecisionInput:
    """The decision request, or ApiError 400 naming the first invalid field."""
    result: DecisionInput = _decode(decision_input_decoder, body)
    return result


def handoff_input_decode(body: bytes) -> HandoffInput:
    """The handoff request, or ApiError 400 naming the first invalid field."""
    result: HandoffInput = _decode(handoff_input_decoder, body)
    return result


def output_check_input_decode(body: bytes) -> OutputCheckInput:
    """The output-check request, or ApiError 400 naming the first invalid field."""
    result: OutputCheckInput = _decode(output_check_input_decoder, body)
    return result


def outcome_report_decode(body: bytes) -> OutcomeReport:
    """The outcome report, or ApiError 400 naming the first invalid field."""
    result: OutcomeReport = _decode(outcome_report_decoder, body)
    return result


def cascade_input_decode(body: bytes) -> CascadeInput:
    """The cascade attempt, or ApiError 400 naming the first invalid field."""
    result: CascadeInput = _decode(cascade_input_decoder, body)
    return result
