"""Tests of the pure routing core (no Django, no database)."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.engine import (
    BudgetExceeded,
    BudgetState,
    Candidate,
    Decision,
    DecisionRequest,
    EscalationTriggers,
    ModelInfo,
    NoEligibleModel,
    RouteConditions,
    RouteInfo,
    RoutingError,
    Snapshot,
    TaskClassInfo,
    UnknownTaskClass,
    decide,
    snapshot_build,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ESCALATION = EscalationTriggers(confidence_below=0.7, on_invalid_output=True, on_error=True)
TRIGGERS = ("confidence_below:0.7", "invalid_output", "error_timeout")


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def mk_model(
    slug: str,
    tier: int,
    locality: str,
    *,
    window: int = 32_000,
    max_out: int = 4_096,
    status: str = "active",
    price_in: float = 0.1,
    price_out: float = 0.2,
    p95: float | None = None,
) -> ModelInfo:
    return ModelInfo(
        slug=slug,
        provider="vllm" if locality == "local" else "cloudco",
        base_url=f"https://{slug}.example/v1",
        provider_model=slug,
        version="1",
        tier=tier,
        locality=locality,
        context_window=window,
        max_output_tokens=max_out,
        status=status,
        input_usd_per_mtok=price_in,
        output_usd_per_mtok=price_out,
        p95_latency_ms=p95,
    )


MODELS = {
    "llama-8b": mk_model("llama-8b", 1, "local", window=8_192, max_out=2_048, p95=300.0),
    "qwen-14b": mk_model("qwen-14b", 1, "local", price_in=0.05, price_out=0.05, p95=500.0),
    "llama-70b": mk_model("llama-70b", 2, "local", price_in=0.6, price_out=0.8, p95=1_400.0),
    "mini": mk_model("mini", 2, "cloud", window=128_000, price_in=0.15, price_out=0.6, p95=900.0),
    "frontier": mk_model(
        "frontier", 3, "cloud", window=200_000, max_out=8_192, price_in=3, price_out=15, p95=2_500
    ),
    "frontier-b": mk_model(
        "frontier-b", 3, "cloud", window=128_000, max_out=16_384, price_in=2.5, price_out=10
    ),
}

TASKS = {
    "triage": TaskClassInfo("triage", default_output_cap=256),
    "summarize": TaskClassInfo("summarize", default_output_cap=1_024),
    "review": TaskClassInfo("review", default_output_cap=4_096),
    "hr": TaskClassInfo("hr", risk="high", data_policy="local_only", default_output_cap=2_048),
    "cloudonly": TaskClassInfo("cloudonly", default_output_cap=512),
    "legal": TaskClassInfo("legal", risk="high", default_output_cap=2_048),
    "no-route": TaskClassInfo("no-route"),
}


def route(task: str, primary: str, *fallbacks: str, **conditions: Any) -> RouteInfo:
    return RouteInfo(
        task_class=task,
        primary=primary,
        fallbacks=fallbacks,
        escalation=ESCALATION,
        conditions=RouteConditions(**conditions),
    )


ROUTES = {
    "triage": route("triage", "llama-8b", "mini"),
    "summarize": route("summarize", "mini", "llama-70b"),
    "review": route("review", "frontier", "frontier-b", "mini"),
    "hr": route("hr", "llama-70b", "qwen-14b"),
    "cloudonly": route("cloudonly", "frontier", "mini"),
    "legal": route("legal", "frontier"),
}


def mk_snapshot(
    *,
    models: dict[str, ModelInfo] | None = None,
    routes: dict[str, RouteInfo] | None = None,
    budgets: tuple[BudgetState, ...] = (),
    quality: dict[tuple[str, str], float] | None = None,
    version: int = 4,
) -> Snapshot:
    return snapshot_build(
        version=version,
        models=MODELS if models is None else models,
        task_classes=TASKS,
        routes=ROUTES if routes is None else routes,
        budgets=budgets,
        quality=quality,
    )


def with_model(**changes: ModelInfo) -> dict[str, ModelInfo]:
    return {**MODELS, **changes}


def req(task: str = "triage", input_tokens: int = 500, **kw: Any) -> DecisionRequest:
    return DecisionRequest(task_class=task, input_tokens=input_tokens, **kw)


def budget(
    bid: int,
    scope: str,
    key: str | None,
    spent: float,
    *,
    limit: float = 100.0,
    hard: str = "block",
    soft: float = 80.0,
) -> BudgetState:
    return BudgetState(
        id=bid,
        name=f"{scope}-{key or 'all'}",
        scope=scope,
        scope_key=key,
        period="month",
        limit_usd=limit,
        spent_usd=spent,
        soft_limit_pct=soft,
        hard_action=hard,
    )


def cand(d: Decision | NoEligibleModel, slug: str) -> Candidate:
    matches = [c for c in d.candidates if c.model == slug]
    assert len(matches) == 1, d.candidates
    return matches[0]


def order(d: Decision | NoEligibleModel) -> list[str]:
    return [c.model for c in d.candidates]


SNAP = mk_snapshot()


# --------------------------------------------------------------------------------------------
# Step 1: task class and route
# --------------------------------------------------------------------------------------------


def test_rule_routes_to_primary() -> None:
    d = decide(req("triage"), SNAP)
    assert d.model.slug == "llama-8b"
    assert d.strategy == "rule"
    assert d.reason == "Routed triage to llama-8b by routing table v4 rule."
    assert d.confidence == pytest.approx(0.7)
    assert d.max_output_tokens == 256
    assert d.routing_table_version == 4
    assert not d.local_only and not d.handoff_required
    assert d.policy_actions == () and d.budgets == () and d.pii_types_found == ()
    assert [f.model.slug for f in d.fallbacks] == ["mini"]
    assert d.fallbacks[0].triggers == TRIGGERS
    assert d.candidates == (
        Candidate("llama-8b", 1, True, "selected"),
        Candidate("mini", 2, True, "eligible fallback"),
    )


def test_unknown_task_class_lists_valid_slugs_sorted() -> None:
    with pytest.raises(UnknownTaskClass) as exc:
        decide(req("nope"), SNAP)
    assert exc.value.valid == ("cloudonly", "hr", "legal", "review", "summarize", "triage")
    assert exc.value.task_class == "nope"
    assert "nope" in str(exc.value)


def test_task_class_without_route_is_unknown() -> None:
    with pytest.raises(UnknownTaskClass) as exc:
        decide(req("no-route"), SNAP)
    assert "no-route" not in exc.value.valid


def test_route_without_task_class_is_unknown() -> None:
    snap = mk_snapshot(routes={**ROUTES, "ghost-task": route("ghost-task", "mini")})
    with pytest.raises(UnknownTaskClass):
        decide(req("ghost-task"), snap)


# --------------------------------------------------------------------------------------------
# Step 2: policy gate
# --------------------------------------------------------------------------------------------


def test_pii_found_forces_local_model() -> None:
    d = decide(req("summarize", pii_found=("email", "phone")), SNAP)
    assert d.model.slug == "llama-70b"
    assert d.model.locality == "local"
    assert d.strategy == "policy"
    assert d.local_only
    assert d.pii_types_found == ("email", "phone")
    assert "local_only: pii detected (email, phone)" in d.policy_actions
    assert cand(d, "mini") == Candidate("mini", 2, False, "personal data: cloud model not allowed")
    assert d.reason == (
        "Personal data detected (email, phone): routed to local model llama-70b instead of mini."
    )


def test_pii_types_deduplicated_in_order() -> None:
    d = decide(req("triage", pii_found=("phone", "email", "phone")), SNAP)
    assert d.pii_types_found == ("phone", "email")
    assert "local_only: pii detected (phone, email)" in d.policy_actions


def test_local_primary_kept_under_pii() -> None:
    d = decide(req("triage", pii_found=("email",)), SNAP)
    assert d.model.slug == "llama-8b"
    assert d.strategy == "policy"
    assert d.reason == "Personal data detected (email): kept on local model llama-8b."
    # the cloud fallback is not a usable fallback for personal data
    assert d.fallbacks == ()
    assert not cand(d, "mini").accepted


def test_detection_failure_fails_closed() -> None:
    d = decide(req("summarize", pii_detection_failed=True), SNAP)
    assert d.model.locality == "local"
    assert d.local_only
    assert "local_only: detection failed, treated as personal" in d.policy_actions
    assert cand(d, "mini").reason == "personal data: cloud model not allowed"
    assert d.strategy == "policy"


@pytest.mark.parametrize("classification", ["personal", "confidential"])
def test_sensitive_classification_forces_local(classification: str) -> None:
    d = decide(req("summarize", data_classification=classification), SNAP)
    assert d.model.slug == "llama-70b"
    assert d.local_only
    assert f"local_only: data classified {classification}" in d.policy_actions
    assert cand(d, "mini").reason == f"{classification} data: cloud model not allowed"


def test_unknown_classification_fails_closed() -> None:
    d = decide(req("summarize", data_classification="PERSONAL"), SNAP)
    assert d.model.locality == "local"
    assert "local_only: unknown data classification 'PERSONAL', treated as personal" in (
        d.policy_actions
    )


@pytest.mark.parametrize("classification", [None, "public", "internal"])
def test_non_sensitive_classification_allows_cloud(classification: str | None) -> None:
    d = decide(req("summarize", data_classification=classification), SNAP)
    assert d.model.slug == "mini"
    assert d.strategy == "rule"
    assert not d.local_only


def test_task_class_data_policy_local_only() -> None:
    snap = mk_snapshot(routes={**ROUTES, "hr": route("hr", "mini", "qwen-14b")})
    d = decide(req("hr"), snap)
    assert d.model.slug == "qwen-14b"
    assert d.local_only
    assert "local_only: task class data policy local_only" in d.policy_actions
    assert cand(d, "mini").reason == "task class data policy: cloud model not allowed"
    assert d.strategy == "policy"


def test_high_risk_requires_handoff() -> None:
    d = decide(req("legal"), SNAP)
    assert d.handoff_required
    assert "handoff: high-risk task class" in d.policy_actions
    assert d.strategy == "rule"  # a handoff does not change the model choice


def test_local_only_appends_registry_local_models() -> None:
    d = decide(req("cloudonly", pii_found=("iban",)), SNAP)
    # chain first, then registry local models: highest tier first, then cheapest
    assert order(d) == ["frontier", "mini", "llama-70b", "qwen-14b", "llama-8b"]
    assert d.model.slug == "llama-70b"
    assert d.strategy == "policy"
    assert [f.model.slug for f in d.fallbacks] == ["qwen-14b", "llama-8b"]
    assert all(f.triggers == TRIGGERS for f in d.fallbacks)
    assert cand(d, "qwen-14b").reason == "eligible fallback"
    assert "instead of frontier" in d.reason


def test_local_only_does_not_append_when_chain_has_local_model() -> None:
    d = decide(req("summarize", pii_found=("email",)), SNAP)
    assert order(d) == ["mini", "llama-70b"]


def test_local_only_registry_skips_inactive_models() -> None:
    models = with_model(**{"llama-70b": mk_model("llama-70b", 2, "local", status="disabled")})
    d = decide(req("cloudonly", pii_found=("iban",)), mk_snapshot(models=models))
    assert "llama-70b" not in order(d)
    assert d.model.slug == "qwen-14b"


# --------------------------------------------------------------------------------------------
# Step 3: budgets
# --------------------------------------------------------------------------------------------


def test_soft_limit_downgrades_one_tier() -> None:
    b = budget(7, "team", "acme", 85.0)
    snap = mk_snapshot(budgets=(b,))
    d = decide(req("review", team="acme"), snap)
    assert d.model.slug == "mini"
    assert d.strategy == "budget"
    assert d.reason == (
        "Team budget 'team-acme' above its 80% soft limit: downgraded from tier 3 to tier 2 (mini)."
    )
    # chain models within the max tier are tried first
    assert order(d) == ["mini", "frontier", "frontier-b"]
    assert cand(d, "frontier").reason == "tier 3 above max tier 2 under budget downgrade"
    (view,) = d.budgets
    assert (view.budget_id, view.action, view.remaining_usd) == (7, "downgrade", 15.0)
    assert view.scope == "team" and view.scope_key == "acme"
    assert any(a.startswith("downgrade: budget 'team-acme'") for a in d.policy_actions)
    assert d.confidence == pytest.approx(0.8)


def test_soft_limit_without_chain_model_in_tier_adds_registry_models() -> None:
    snap = mk_snapshot(
        routes={**ROUTES, "review": route("review", "frontier", "frontier-b")},
        budgets=(budget(1, "global", None, 90.0),),
    )
    d = decide(req("review"), snap)
    # registry tier-2 models are added, cheapest first (mini 0.75 < llama-70b 1.4 per Mtok)
    assert order(d)[:2] == ["frontier", "frontier-b"]
    assert order(d)[2:4] == ["mini", "llama-70b"]
    assert d.model.slug == "mini"
    assert d.strategy == "budget"
    assert "soft limit" in d.reason


def test_soft_limit_on_tier_one_primary_keeps_primary_and_caps_fallbacks() -> None:
    snap = mk_snapshot(budgets=(budget(1, "global", None, 90.0),))
    d = decide(req("triage"), snap)
    assert d.model.slug == "llama-8b"
    assert d.strategy == "rule"
    assert d.budgets[0].action == "downgrade"
    assert not cand(d, "mini").accepted  # tier 2 fallback is above the max tier (1)
    # a prompt too large for the tier-1 primary cannot escalate to the tier-2 fallback
    d = decide(req("triage", input_tokens=20_000), snap)
    assert d.model.tier == 1
    assert d.model.slug == "qwen-14b"  # appended from the registry (tier <= 1)
    assert d.strategy == "budget"
    assert "downgraded from tier 2 to tier 1" in d.reason


def test_below_soft_limit_has_no_effect() -> None:
    snap = mk_snapshot(budgets=(budget(1, "global", None, 79.99),))
    d = decide(req("review"), snap)
    assert d.model.slug == "frontier"
    assert d.strategy == "rule"
    assert d.budgets[0].action == "none"


def test_hard_block_raises_budget_exceeded() -> None:
    snap = mk_snapshot(
        budgets=(
            budget(1, "global", None, 10.0),
            budget(2, "application", "crm", 100.0, hard="local_only"),
            budget(3, "team", "acme", 120.0, hard="block"),
            budget(4, "task_class", "review", 500.0, hard="block"),
        )
    )
    with pytest.raises(BudgetExceeded) as exc:
        decide(req("review", team="acme", application="crm"), snap)
    assert exc.value.budget.budget_id == 3  # the first exhausted "block" budget, in order
    assert exc.value.budget.action == "block"
    assert exc.value.budget.remaining_usd == 0.0
    assert isinstance(exc.value, RoutingError)


def test_reserved_spend_counts_against_the_limits() -> None:
    reserved = dataclasses.replace(budget(1, "team", "acme", 60.0), reserved_usd=40.0)
    with pytest.raises(BudgetExceeded) as exc:
        decide(req("summarize", team="acme"), mk_snapshot(budgets=(reserved,)))
    assert exc.value.budget.reserved_usd == 40.0 and exc.value.budget.remaining_usd == 0.0
    soft = dataclasses.replace(budget(1, "team", "acme", 50.0), reserved_usd=35.0)
    d = decide(req("summarize", team="acme"), mk_snapshot(budgets=(soft,)))
    assert d.budgets[0].action == "downgrade" and d.budgets[0].remaining_usd == 15.0


def test_a_budget_named_exhausted_acts_at_its_hard_limit() -> None:
    snap = mk_snapshot(budgets=(budget(1, "team", "acme", 0.0, hard="local_only"),))
    assert decide(req("summarize", team="acme"), snap).model.locality == "cloud"
    d = decide(req("summarize", team="acme", exhausted_budgets=frozenset({1})), snap)
    assert d.model.locality == "local" and d.strategy == "budget"
    assert d.budgets[0].action == "local_only"
    blocking = mk_snapshot(budgets=(budget(1, "team", "acme", 0.0),))
    with pytest.raises(BudgetExceeded):
        decide(req("summarize", team="acme", exhausted_budgets=frozenset({1})), blocking)


def test_hard_block_of_another_team_does_not_apply() -> None:
    snap = mk_snapshot(budgets=(budget(1, "team", "acme", 150.0),))
    d = decide(req("summarize", team="globex"), snap)
    assert d.model.slug == "mini"
    assert d.budgets == ()
    with pytest.raises(BudgetExceeded):
        decide(req("summarize", team="acme"), snap)


def test_hard_local_only_budget_forces_local() -> None:
    snap = mk_snapshot(budgets=(budget(5, "application", "crm", 100.0, hard="local_only"),))
    d = decide(req("summarize", application="crm"), snap)
    assert d.model.slug == "llama-70b"
    assert d.local_only
    assert d.strategy == "budget"
    assert d.budgets[0].action == "local_only"
    assert cand(d, "mini").reason == "budget 'application-crm' local-only: cloud model not allowed"
    assert d.reason.startswith("Application budget 'application-crm' exhausted")
    assert "local_only: budget 'application-crm' hard limit reached" in d.policy_actions
    # a local primary is kept, still under the budget strategy
    d = decide(req("triage", application="crm"), snap)
    assert (d.model.slug, d.strategy) == ("llama-8b", "budget")


def test_data_policy_wins_over_budget_local_only_for_strategy() -> None:
    snap = mk_snapshot(budgets=(budget(5, "global", None, 100.0, hard="local_only"),))
    d = decide(req("summarize", pii_found=("email",)), snap)
    assert d.strategy == "policy"
    assert cand(d, "mini").reason == "personal data: cloud model not allowed"


def test_applicable_budgets_by_scope_in_snapshot_order() -> None:
    budgets = (
        budget(1, "team", "acme", 1.0),
        budget(2, "global", None, 1.0),
        budget(3, "application", "crm", 1.0),
        budget(4, "task_class", "summarize", 1.0),
        budget(5, "task_class", "review", 1.0),
        budget(6, "team", "globex", 1.0),
        budget(7, "application", "bot", 1.0),
    )
    snap = mk_snapshot(budgets=budgets)
    d = decide(req("summarize", team="acme", application="crm"), snap)
    assert [v.budget_id for v in d.budgets] == [1, 2, 3, 4]
    assert all(v.action == "none" for v in d.budgets)
    d = decide(req("summarize"), snap)
    assert [v.budget_id for v in d.budgets] == [2, 4]


def test_budget_at_exact_limit_is_hard() -> None:
    snap = mk_snapshot(budgets=(budget(1, "global", None, 100.0),))
    with pytest.raises(BudgetExceeded):
        decide(req("triage"), snap)


def test_budget_checked_before_candidates() -> None:
    # even a request that no model could serve reports the exhausted budget
    snap = mk_snapshot(budgets=(budget(1, "global", None, 100.0),))
    with pytest.raises(BudgetExceeded):
        decide(req("triage", input_tokens=10_000_000), snap)


# --------------------------------------------------------------------------------------------
# Steps 4-5: rejection reasons and fallbacks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["disabled", "deprecated"])
def test_inactive_primary_falls_back_to_next_in_chain(status: str) -> None:
    snap = mk_snapshot(models=with_model(frontier=mk_model("frontier", 3, "cloud", status=status)))
    d = decide(req("review"), snap)
    assert d.model.slug == "frontier-b"
    assert d.strategy == "fallback"
    assert cand(d, "frontier") == Candidate("frontier", 3, False, f"model {status}")
    assert d.reason == f"Primary frontier rejected (model {status}): fell back to frontier-b."
    assert d.confidence == pytest.approx(0.9)  # the chosen model's own probability
    assert [f.model.slug for f in d.fallbacks] == ["mini"]


def test_context_window_rejection() -> None:
    # llama-8b: 8192 window; 8000 prompt + 256 cap does not fit
    d = decide(req("triage", input_tokens=100, context_tokens=8_000), SNAP)
    assert d.model.slug == "mini"
    assert d.strategy == "fallback"
    assert cand(d, "llama-8b").reason.startswith("context 8256 tokens")
    assert "window 8192" in cand(d, "llama-8b").reason
    # exactly fitting is fine
    d = decide(req("triage", input_tokens=8_192 - 256), SNAP)
    assert d.model.slug == "llama-8b"


def test_output_cap_is_min_of_task_default_and_model_max() -> None:
    d = decide(req("review"), SNAP)
    assert d.max_output_tokens == 4_096
    small = with_model(frontier=mk_model("frontier", 3, "cloud", max_out=1_000))
    d = decide(req("review"), mk_snapshot(models=small))
    assert d.max_output_tokens == 1_000


def test_latency_rejection() -> None:
    d = decide(req("review", latency_budget_ms=2_000), SNAP)
    # frontier p95 2500 > 2000; frontier-b has no observed latency -> not rejected
    assert cand(d, "frontier").reason == "p95 latency 2500ms exceeds budget 2000ms"
    assert d.model.slug == "frontier-b"
    assert d.strategy == "fallback"


def test_cost_rejection() -> None:
    # frontier: (10_000 * 3 + 4096 * 15) / 1e6 = 0.09144
    d = decide(req("review", input_tokens=10_000, max_cost_usd=0.05), SNAP)
    assert cand(d, "frontier").reason.startswith("estimated cost $0.091440 exceeds max")
    assert d.model.slug == "mini"  # frontier-b: 0.06596 also too expensive
    assert not cand(d, "frontier-b").accepted


@pytest.mark.parametrize(
    ("conditions", "request_kw", "fragment"),
    [
        ({"max_context_tokens": 1_000}, {"input_tokens": 1_001}, "context 1001 tokens above 1000"),
        ({"max_latency_budget_ms": 1_000}, {"latency_budget_ms": 5_000}, "latency budget 5000ms"),
        ({"data_classifications": ("public",)}, {"data_classification": "internal"}, "internal"),
        ({"data_classifications": ("public",)}, {}, "data classification unset"),
        ({"teams": ("acme",)}, {"team": "globex"}, "team globex not in (acme)"),
    ],
)
def test_route_condition_skips_primary(
    conditions: dict[str, Any], request_kw: dict[str, Any], fragment: str
) -> None:
    routes = {**ROUTES, "review": route("review", "frontier", "frontier-b", **conditions)}
    snap = mk_snapshot(routes=routes)
    kw = {"input_tokens": 500, **request_kw}
    d = decide(DecisionRequest(task_class="review", **kw), snap)
    reason = cand(d, "frontier").reason
    assert reason.startswith("route condition: ")
    assert fragment in reason
    # conditions apply to the primary only
    assert d.model.slug == "frontier-b"
    assert d.strategy == "fallback"


@pytest.mark.parametrize(
    ("conditions", "request_kw"),
    [
        ({"max_context_tokens": 1_000}, {"input_tokens": 1_000}),
        ({"max_latency_budget_ms": 3_000}, {"latency_budget_ms": 3_000}),
        ({"max_latency_budget_ms": 1_000}, {}),  # no latency budget given: condition not checked
        ({"data_classifications": ("public", "internal")}, {"data_classification": "internal"}),
        ({"teams": ("acme", "globex")}, {"team": "globex"}),
    ],
)
def test_route_condition_satisfied_keeps_primary(
    conditions: dict[str, Any], request_kw: dict[str, Any]
) -> None:
    routes = {**ROUTES, "review": route("review", "frontier", "frontier-b", **conditions)}
    kw = {"input_tokens": 500, **request_kw}
    d = decide(DecisionRequest(task_class="review", **kw), mk_snapshot(routes=routes))
    assert d.model.slug == "frontier"
    assert d.strategy == "rule"


def test_model_missing_from_registry_is_rejected() -> None:
    snap = mk_snapshot(routes={**ROUTES, "triage": route("triage", "ghost", "llama-8b")})
    d = decide(req("triage"), snap)
    assert cand(d, "ghost") == Candidate("ghost", 0, False, "model not in registry")
    assert d.model.slug == "llama-8b"
    assert d.strategy == "fallback"


def test_duplicate_chain_entries_considered_once() -> None:
    snap = mk_snapshot(routes={**ROUTES, "triage": route("triage", "llama-8b", "mini", "llama-8b")})
    d = decide(req("triage"), snap)
    assert order(d) == ["llama-8b", "mini"]


def test_no_eligible_model() -> None:
    with pytest.raises(NoEligibleModel) as exc:
        decide(req("legal", input_tokens=500_000), SNAP)
    assert [c.model for c in exc.value.candidates] == ["frontier"]
    assert not exc.value.candidates[0].accepted
    assert "context" in exc.value.candidates[0].reason
    assert isinstance(exc.value, RoutingError)


def test_no_eligible_local_model() -> None:
    models = {k: v for k, v in MODELS.items() if v.locality == "cloud"}
    with pytest.raises(NoEligibleModel) as exc:
        decide(req("summarize", data_classification="personal"), mk_snapshot(models=models))
    assert all(not c.accepted for c in exc.value.candidates)


# --------------------------------------------------------------------------------------------
# Step 6: confidence, reasons; snapshot and types
# --------------------------------------------------------------------------------------------


def test_confidence_uses_observed_quality() -> None:
    snap = mk_snapshot(quality={("llama-8b", "triage"): 0.93, ("mini", "summarize"): 0.5})
    assert decide(req("triage"), snap).confidence == pytest.approx(0.93)
    assert decide(req("summarize"), snap).confidence == pytest.approx(0.5)
    assert decide(req("review"), snap).confidence == pytest.approx(0.9)  # tier default


def test_confidence_tier_defaults() -> None:
    assert decide(req("triage"), SNAP).confidence == pytest.approx(0.7)
    assert decide(req("summarize"), SNAP).confidence == pytest.approx(0.8)
    assert decide(req("review"), SNAP).confidence == pytest.approx(0.9)


def test_escalation_triggers_as_list() -> None:
    assert ESCALATION.as_list() == list(TRIGGERS)
    assert EscalationTriggers(confidence_below=0.75).as_list() == ["confidence_below:0.75"]
    assert EscalationTriggers(None, False, False).as_list() == []


def test_unindexed_snapshot_still_works() -> None:
    snap = Snapshot(version=9, models=MODELS, task_classes=TASKS, routes=ROUTES)
    assert snap.index is None
    d = decide(req("triage"), snap)
    assert d.model.slug == "llama-8b"
    assert d.routing_table_version == 9


def test_snapshot_build_accepts_iterables_and_classmethod() -> None:
    snap = Snapshot.build(
        version=2,
        models=list(MODELS.values()),
        task_classes=list(TASKS.values()),
        routes=list(ROUTES.values()),
    )
    assert snap.models == MODELS
    assert decide(req("review"), snap).model.slug == "frontier"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"models": {"x": MODELS["mini"]}},
        {"models": [MODELS["mini"], MODELS["mini"]]},
        {"models": [dataclasses.replace(MODELS["mini"], tier=4)]},
        {"models": [dataclasses.replace(MODELS["mini"], locality="edge")]},
        {"models": [dataclasses.replace(MODELS["mini"], status="paused")]},
        {"budgets": [budget(1, "team", None, 1.0)]},
        {"budgets": [budget(1, "global", None, 1.0, hard="warn")]},
    ],
)
def test_snapshot_build_rejects_malformed_input(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"version": 1, "models": MODELS, "task_classes": TASKS, "routes": ROUTES}
    with pytest.raises(ValueError):
        snapshot_build(**(args | kwargs))


def test_decision_is_immutable_and_deterministic() -> None:
    r = req("cloudonly", pii_found=("email",), team="acme")
    d1, d2 = decide(r, SNAP), decide(r, SNAP)
    assert d1 == d2
    with pytest.raises(dataclasses.FrozenInstanceError):
        d1.strategy = "rule"  # type: ignore[misc]


def test_errors_pickle_round_trip() -> None:
    blocked = mk_snapshot(budgets=(budget(1, "global", None, 200.0),))
    cases = [(req("nope"), SNAP), (req("legal", input_tokens=10**7), SNAP), (req(), blocked)]
    errors: list[RoutingError] = []
    for request, snapshot in cases:
        with pytest.raises(RoutingError) as exc:
            decide(request, snapshot)
        errors.append(exc.value)
    assert [type(e) for e in errors] == [UnknownTaskClass, NoEligibleModel, BudgetExceeded]
    for err in errors:
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is type(err)
        assert str(clone) == str(err)


def test_engine_imports_no_django() -> None:
    code = (
        "import sys, routing.engine; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


# --------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------

TEAMS = ("acme", "globex")
APPS = ("crm", "bot")
TASK_SLUGS = ("t0", "t1", "t2")


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    n_models = draw(st.integers(1, 7))
    models = [
        ModelInfo(
            slug=f"m{i}",
            provider="p",
            base_url="http://x",
            provider_model=f"m{i}",
            version="1",
            tier=draw(st.integers(1, 3)),
            locality=draw(st.sampled_from(("local", "cloud"))),
            context_window=draw(st.integers(256, 200_000)),
            max_output_tokens=draw(st.integers(1, 16_384)),
            status=draw(st.sampled_from(("active", "active", "active", "disabled", "deprecated"))),
            input_usd_per_mtok=draw(st.floats(0, 30, allow_nan=False)),
            output_usd_per_mtok=draw(st.floats(0, 60, allow_nan=False)),
            p95_latency_ms=draw(st.none() | st.floats(10, 10_000, allow_nan=False)),
        )
        for i in range(n_models)
    ]
    slugs = [m.slug for m in models] + ["ghost"]
    tasks = [
        TaskClassInfo(
            slug=slug,
            risk=draw(st.sampled_from(("normal", "high"))),
            data_policy=draw(st.sampled_from(("any", "any", "local_only"))),
            default_output_cap=draw(st.integers(1, 8_192)),
            latency_class=draw(st.sampled_from(("interactive", "batch"))),
            quality_target=0.8,
        )
        for slug in TASK_SLUGS
    ]
    routes = []
    for slug in TASK_SLUGS[: draw(st.integers(1, len(TASK_SLUGS)))]:
        routes.append(
            RouteInfo(
                task_class=slug,
                primary=draw(st.sampled_from(slugs)),
                fallbacks=tuple(draw(st.lists(st.sampled_from(slugs), max_size=4))),
                escalation=EscalationTriggers(
                    confidence_below=draw(st.none() | st.floats(0, 1)),
                    on_invalid_output=draw(st.booleans()),
                    on_error=draw(st.booleans()),
                ),
                conditions=RouteConditions(
                    max_context_tokens=draw(st.none() | st.integers(0, 100_000)),
                    max_latency_budget_ms=draw(st.none() | st.integers(0, 10_000)),
                    data_classifications=tuple(
                        draw(st.lists(st.sampled_from(("public", "internal")), max_size=2))
                    ),
                    teams=tuple(draw(st.lists(st.sampled_from(TEAMS), max_size=1))),
                ),
            )
        )
    budgets = []
    for i in range(draw(st.integers(0, 4))):
        scope = draw(st.sampled_from(("global", "team", "application", "task_class")))
        key = {
            "global": None,
            "team": draw(st.sampled_from(TEAMS)),
            "application": draw(st.sampled_from(APPS)),
            "task_class": draw(st.sampled_from(TASK_SLUGS)),
        }[scope]
        limit = draw(st.floats(0, 1_000, allow_nan=False))
        budgets.append(
            BudgetState(
                id=i,
                name=f"b{i}",
                scope=scope,
                scope_key=key,
                period="month",
                limit_usd=limit,
                spent_usd=limit * draw(st.sampled_from((0.0, 0.5, 0.85, 1.0, 1.5))),
                soft_limit_pct=draw(st.sampled_from((50.0, 80.0, 95.0))),
                hard_action=draw(st.sampled_from(("block", "local_only"))),
            )
        )
    quality = draw(
        st.dictionaries(
            st.tuples(st.sampled_from(slugs), st.sampled_from(TASK_SLUGS)),
            st.floats(0, 1),
            max_size=4,
        )
    )
    return snapshot_build(
        version=draw(st.integers(1, 100)),
        models=models,
        task_classes=tasks,
        routes=routes,
        budgets=budgets,
        quality=quality,
    )


requests = st.builds(
    DecisionRequest,
    task_class=st.sampled_from((*TASK_SLUGS, "unknown")),
    input_tokens=st.integers(0, 150_000),
    context_tokens=st.integers(0, 150_000),
    latency_budget_ms=st.none() | st.integers(0, 10_000),
    max_cost_usd=st.none() | st.floats(0, 2, allow_nan=False),
    data_classification=st.sampled_from(
        (None, "public", "internal", "confidential", "personal", "Secret")
    ),
    pii_found=st.lists(st.sampled_from(("email", "phone", "iban")), max_size=2).map(tuple),
    pii_detection_failed=st.booleans(),
    team=st.sampled_from((None, *TEAMS)),
    application=st.sampled_from((None, *APPS)),
)

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def applicable(snapshot: Snapshot, r: DecisionRequest) -> list[BudgetState]:
    keys = {"team": r.team, "application": r.application, "task_class": r.task_class}
    return [b for b in snapshot.budgets if b.scope == "global" or keys.get(b.scope) == b.scope_key]


def must_be_local(snapshot: Snapshot, r: DecisionRequest) -> bool:
    return (
        snapshot.task_classes[r.task_class].data_policy == "local_only"
        or r.data_classification not in (None, "public", "internal")
        or bool(r.pii_found)
        or r.pii_detection_failed
        or any(
            b.spent_usd >= b.limit_usd and b.hard_action == "local_only"
            for b in applicable(snapshot, r)
        )
    )


def outcome(r: DecisionRequest, snapshot: Snapshot) -> Decision | RoutingError:
    try:
        return decide(r, snapshot)
    except RoutingError as exc:  # anything else propagates and fails the test
        return exc


@PROPERTY_SETTINGS
@given(snapshot=snapshots(), r=requests)
def test_property_decide_returns_or_raises_routing_error(
    snapshot: Snapshot, r: DecisionRequest
) -> None:
    result = outcome(r, snapshot)
    assert isinstance(result, (Decision, UnknownTaskClass, BudgetExceeded, NoEligibleModel))
    if r.task_class not in snapshot.routes or r.task_class not in snapshot.task_classes:
        assert isinstance(result, UnknownTaskClass)
        assert list(result.valid) == sorted(result.valid)


@PROPERTY_SETTINGS
@given(snapshot=snapshots(), r=requests)
def test_property_exhausted_block_budget_always_raises(
    snapshot: Snapshot, r: DecisionRequest
) -> None:
    result = outcome(r, snapshot)
    if isinstance(result, UnknownTaskClass):
        return
    blocking = [
        b
        for b in applicable(snapshot, r)
        if b.spent_usd >= b.limit_usd and b.hard_action == "block"
    ]
    if blocking:
        assert isinstance(result, BudgetExceeded)
        assert result.budget.budget_id == blocking[0].id
    else:
        assert not isinstance(result, BudgetExceeded)


@PROPERTY_SETTINGS
@given(snapshot=snapshots(), r=requests)
def test_property_decision_invariants(snapshot: Snapshot, r: DecisionRequest) -> None:
    d = outcome(r, snapshot)
    if not isinstance(d, Decision):
        if isinstance(d, NoEligibleModel):
            assert not any(c.accepted for c in d.candidates)
        return
    prompt = max(r.input_tokens, r.context_tokens)
    local = must_be_local(snapshot, r)
    route_ = snapshot.routes[r.task_class]
    primary = snapshot.models.get(route_.primary)
    downgrade = any(
        b.soft_limit_pct / 100 * b.limit_usd <= b.spent_usd < b.limit_usd
        for b in applicable(snapshot, r)
    )
    max_tier = max(1, (primary.tier if primary else 3) - 1) if downgrade else 3
    assert d.local_only == local
    assert d.routing_table_version == snapshot.version
    assert d.handoff_required == (snapshot.task_classes[r.task_class].risk == "high")
    assert 0.0 <= d.confidence <= 1.0
    assert [v.budget_id for v in d.budgets] == [b.id for b in applicable(snapshot, r)]

    selected = [c for c in d.candidates if c.accepted and c.reason == "selected"]
    assert len(selected) == 1 and selected[0].model == d.model.slug
    accepted = [c.model for c in d.candidates if c.accepted]
    assert accepted == [d.model.slug] + [f.model.slug for f in d.fallbacks]
    assert d.candidates[[c.model for c in d.candidates].index(d.model.slug)].accepted
    if d.strategy == "rule":
        assert d.model.slug == route_.primary

    cap_of_selected = min(
        snapshot.task_classes[r.task_class].default_output_cap, d.model.max_output_tokens
    )
    assert d.max_output_tokens == cap_of_selected
    for m in [d.model] + [f.model for f in d.fallbacks]:
        cap = min(snapshot.task_classes[r.task_class].default_output_cap, m.max_output_tokens)
        assert m.status == "active"
        assert snapshot.models[m.slug] is m
        if local:
            assert m.locality == "local"
        assert m.tier <= max_tier
        assert prompt + cap <= m.context_window
        if r.latency_budget_ms is not None and m.p95_latency_ms is not None:
            assert m.p95_latency_ms <= r.latency_budget_ms
        if r.max_cost_usd is not None:
            cost = (r.input_tokens * m.input_usd_per_mtok + cap * m.output_usd_per_mtok) / 1e6
            assert cost <= r.max_cost_usd
    assert prompt + d.max_output_tokens <= d.model.context_window
    for f in d.fallbacks:
        assert f.triggers == tuple(route_.escalation.as_list())


@PROPERTY_SETTINGS
@given(snapshot=snapshots(), r=requests)
def test_property_sensitive_requests_never_go_to_cloud(
    snapshot: Snapshot, r: DecisionRequest
) -> None:
    sensitive = dataclasses.replace(r, pii_detection_failed=True)
    for variant in (
        sensitive,
        dataclasses.replace(r, data_classification="personal"),
        dataclasses.replace(r, data_classification="confidential"),
        dataclasses.replace(r, pii_found=("email",)),
    ):
        d = outcome(variant, snapshot)
        if isinstance(d, Decision):
            assert d.model.locality == "local"
            assert d.local_only
            assert all(f.model.locality == "local" for f in d.fallbacks)
            assert all(
                snapshot.models[c.model].locality == "local" for c in d.candidates if c.accepted
            )
