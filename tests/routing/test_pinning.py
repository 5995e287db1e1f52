"""A caller-pinned model replaces the engine's choice only where the policy allows it."""

from __future__ import annotations

import pytest

from routing.engine import DecisionRequest, Snapshot, decide
from routing.pinning import PinRefused, decision_pinned
from tests.routing.test_engine import MODELS, ROUTES, TASKS, mk_model

SNAPSHOT = Snapshot.build(
    version=3,
    models={**MODELS, "retired": mk_model("retired", 2, "cloud", status="disabled")},
    task_classes=TASKS,
    routes=ROUTES,
)


def pinned(slug: str, **request: object) -> tuple[object, object]:
    fields: dict[str, object] = {"task_class": "triage", "input_tokens": 100}
    fields.update(request)
    engine_request = DecisionRequest(**fields)  # type: ignore[arg-type]
    decision = decide(engine_request, SNAPSHOT)
    return decision, decision_pinned(decision, slug, engine_request, SNAPSHOT)


def test_a_pinned_model_replaces_the_choice_without_fallbacks() -> None:
    decision, result = pinned("frontier")
    assert decision.model.slug == "llama-8b" and decision.fallbacks  # type: ignore[attr-defined]
    assert result.model.slug == "frontier"  # type: ignore[attr-defined]
    assert result.fallbacks == ()  # type: ignore[attr-defined]
    assert result.max_output_tokens == 256  # type: ignore[attr-defined]  # the class's cap
    assert "pinned: frontier named by the caller" in result.policy_actions  # type: ignore[attr-defined]
    assert result.reason.startswith("Pinned by the caller to frontier")  # type: ignore[attr-defined]
    assert result.routing_table_version == 3  # type: ignore[attr-defined]


def test_the_route_choice_pinned_is_the_decision_itself_without_fallbacks() -> None:
    decision, result = pinned("llama-8b")
    assert result.model == decision.model and result.fallbacks == ()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("slug", "request_fields", "status", "code"),
    [
        ("gpt-5", {}, 404, "model_not_found"),
        ("frontier", {"pii_found": ("email",)}, 403, "policy_refused"),
        ("frontier", {"pii_detection_failed": True}, 403, "policy_refused"),
        ("mini", {"data_classification": "personal"}, 403, "policy_refused"),
        ("frontier", {"task_class": "hr"}, 403, "policy_refused"),
        ("retired", {}, 422, "model_unavailable"),
        ("llama-8b", {"input_tokens": 8_000}, 422, "context_too_long"),
        # the engine's cheap local choice fits $0.0001 (≈ $0.00006); the pinned one does not
        ("frontier", {"max_cost_usd": 0.0001}, 422, "too_expensive"),
    ],
)
def test_refusals(slug: str, request_fields: dict[str, object], status: int, code: str) -> None:
    fields: dict[str, object] = {"task_class": "triage", "input_tokens": 100}
    fields.update(request_fields)
    engine_request = DecisionRequest(**fields)  # type: ignore[arg-type]
    decision = decide(engine_request, SNAPSHOT)
    with pytest.raises(PinRefused) as refused:
        decision_pinned(decision, slug, engine_request, SNAPSHOT)
    assert (refused.value.status, refused.value.code) == (status, code)


def test_a_local_model_may_be_pinned_for_personal_data() -> None:
    _, result = pinned("qwen-14b", pii_found=("email",))
    assert result.model.slug == "qwen-14b"  # type: ignore[attr-defined]
