"""Every enumeration the router, the registry and the APIs share, defined once.

Plain Python (no Django): the engine checks snapshots against these values, the models
take their ``choices`` from :func:`choices`, and the msgspec request schemas (and so the
OpenAPI schema) use the enums as field types. Members are ``str``/``int`` subclasses, so
they compare equal to the stored values.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum
from typing import Final, overload


class Tier(IntEnum):
    SMALL = 1
    MID = 2
    FRONTIER = 3


class Locality(StrEnum):
    LOCAL = "local"
    CLOUD = "cloud"


class ModelStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    DEPRECATED = "deprecated"


class Risk(StrEnum):
    NORMAL = "normal"
    HIGH = "high"


class DataPolicy(StrEnum):
    ANY = "any"
    LOCAL_ONLY = "local_only"


class LatencyClass(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class BudgetScope(StrEnum):
    GLOBAL = "global"
    TEAM = "team"
    APPLICATION = "application"
    TASK_CLASS = "task_class"


class BudgetPeriod(StrEnum):
    DAY = "day"
    MONTH = "month"


class HardAction(StrEnum):
    BLOCK = "block"
    LOCAL_ONLY = "local_only"


class DataClassification(StrEnum):
    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    PERSONAL = "personal"


# Labels that allow a cloud model; any other label (personal, confidential, or one we do
# not know) keeps the request local (engine policy gate, answer cache, fail closed).
OPEN_CLASSIFICATIONS: frozenset[str] = frozenset(
    {DataClassification.PUBLIC, DataClassification.INTERNAL}
)


class RouteStrategy(StrEnum):
    """How a route decides among its models (``Route.strategy``): its rule (primary, then
    fallbacks), the class's learned router, its semantic routes, or its LLM router. A
    strategy without its router (none active, none enabled) decides by the rule."""

    RULE = "rule"
    LEARNED = "learned"
    SEMANTIC = "semantic"
    LLM = "llm"


class DecisionStrategy(StrEnum):
    """How one decision's model was chosen (``Decision.strategy``, stored and answered):
    a route strategy that applied, or the rule displaced by a policy, a budget or an
    ineligible primary."""

    RULE = "rule"
    POLICY = "policy"
    BUDGET = "budget"
    FALLBACK = "fallback"
    LEARNED = "learned"
    SEMANTIC = "semantic"
    LLM = "llm"


class AttemptStatus(StrEnum):
    """How one attempt (and so the whole request: its final status) ended."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    INVALID_OUTPUT = "invalid_output"
    LOW_CONFIDENCE = "low_confidence"


# Labels shown in forms and the admin; a member without one shows its value, "_" as " ".
LABELS: Final[Mapping[StrEnum | IntEnum, str]] = {
    Tier.SMALL: "1 · small / local",
    Tier.MID: "2 · mid-tier",
    Tier.FRONTIER: "3 · frontier",
    Locality.LOCAL: "local (data stays inside the boundary)",
    Risk.HIGH: "high (human handoff)",
    DataPolicy.ANY: "any model",
    DataPolicy.LOCAL_ONLY: "local models only",
    HardAction.BLOCK: "block (429)",
    HardAction.LOCAL_ONLY: "local models only",
    RouteStrategy.RULE: "rule (primary, then fallbacks)",
    RouteStrategy.LEARNED: "learned router",
    RouteStrategy.SEMANTIC: "semantic routes",
    RouteStrategy.LLM: "LLM router (a local model picks)",
}


def label(member: StrEnum | IntEnum) -> str:
    return LABELS.get(member) or str(member.value).replace("_", " ")


def choices(enum: type[StrEnum] | type[IntEnum]) -> list[tuple[str | int, str]]:
    """Django ``choices`` for a model field: (stored value, label) in declaration order."""
    return [(member.value, label(member)) for member in enum]


@overload
def values(enum: type[IntEnum]) -> frozenset[int]: ...
@overload
def values(enum: type[StrEnum]) -> frozenset[str]: ...
def values(enum: type[StrEnum] | type[IntEnum]) -> frozenset[str] | frozenset[int]:
    """The plain stored values (for the engine's checks and database constraints)."""
    return frozenset(member.value for member in enum)  # type: ignore[return-value]
