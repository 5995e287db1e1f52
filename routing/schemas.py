"""Decision API input, decoded and type-checked by msgspec (fast enough for the hot path).

The DRF serializers in ``routing.serializers`` describe the same shapes for the OpenAPI
schema; the schemathesis test keeps the two honest.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

DataClassification = Literal["public", "internal", "confidential", "personal"]
Slug = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
NonNegative = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
MetadataValue = str | int | float | bool | None


class PromptTemplate(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    version: Annotated[str, msgspec.Meta(max_length=64)] = ""


class Retrieval(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(max_length=10_000)] = ""
    document_ids: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=500)
    ] = []


class DecisionInput(msgspec.Struct, forbid_unknown_fields=True):
    task_class: Slug
    prompt: str | None = None
    input_tokens: NonNegative | None = None
    context_tokens: NonNegative | None = None
    latency_budget_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] | None = None
    max_cost_usd: Annotated[float, msgspec.Meta(ge=0)] | None = None
    data_classification: DataClassification | None = None
    team: Slug | None = None
    end_user: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    prompt_template: PromptTemplate | None = None
    retrieval: Retrieval | None = None
    metadata: dict[str, MetadataValue] | None = None
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None


decision_input_decoder = msgspec.json.Decoder(DecisionInput)
