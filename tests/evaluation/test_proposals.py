"""Proposal review: approve applies a new active routing-table version; rules and rollback."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from controlplane import services as registry
from controlplane.models import AuditLog, Route, RoutingTableVersion, VersionStatus
from evaluation import selectors, services
from evaluation.models import Proposal, ProposalStatus
from tests import factories


def make_proposal(reg: dict[str, Any], user: Any = None, **extra: Any) -> Proposal:
    route = Route.objects.select_related("primary", "task_class").get(
        version=reg["version"], task_class=reg["practice"]
    )
    proposal = services.proposal_create(
        task_class=reg["practice"],
        route=route,
        to_model=reg["mistral"],
        change="downgrade",
        based_on_version=extra.pop("based_on_version", reg["version"].number),
        title="math-practice: gpt-4o → mistral-small-hosted",
        evidence={"success_rate": 0.82},
        user=user,
        **extra,
    )
    assert proposal is not None
    return proposal


def active_route(task_class: Any) -> Route:
    version = RoutingTableVersion.objects.get(status=VersionStatus.ACTIVE)
    return Route.objects.select_related("primary").get(version=version, task_class=task_class)


def test_approving_applies_a_new_active_version(eval_registry: dict[str, Any]) -> None:
    reg = eval_registry
    proposal = make_proposal(reg)
    reviewer = factories.user_create("Reviewer")

    proposal = services.proposal_approve(proposal=proposal, user=reviewer, comment="evidence ok")

    assert proposal.status == ProposalStatus.APPLIED
    assert proposal.reviewed_by == reviewer and proposal.applied_by == reviewer
    version = RoutingTableVersion.objects.get(status=VersionStatus.ACTIVE)
    assert version == proposal.applied_version
    assert version.number == reg["version"].number + 1
    assert version.based_on_id == reg["version"].pk
    route = active_route(reg["practice"])
    assert route.primary == reg["mistral"] and route.fallbacks == ["gpt-4o"]
    assert active_route(reg["strict"]).primary == reg["mistral"]  # other routes copied
    entry = AuditLog.objects.filter(action="activate").first()
    assert entry is not None and entry.actor == reviewer
    review = AuditLog.objects.get(action="approve", object_type="proposal")
    assert review.actor == reviewer and review.comment == "evidence ok"
    assert selectors.active_version_number() == version.number


def test_rollback_reactivates_the_previous_version(eval_registry: dict[str, Any]) -> None:
    reg = eval_registry
    reviewer = factories.user_create("Reviewer")
    proposal = services.proposal_approve(proposal=make_proposal(reg), user=reviewer)
    proposal = services.proposal_rollback(proposal=proposal, user=reviewer)
    assert proposal.status == ProposalStatus.ROLLED_BACK
    assert RoutingTableVersion.objects.get(status=VersionStatus.ACTIVE) == reg["version"]
    assert active_route(reg["practice"]).primary == reg["gpt4o"]
    with pytest.raises(ValidationError):
        services.proposal_rollback(proposal=proposal, user=reviewer)


def test_nobody_approves_their_own_manual_proposal(eval_registry: dict[str, Any]) -> None:
    author = factories.user_create("Reviewer")
    proposal = make_proposal(eval_registry, user=author)
    assert proposal.is_manual
    with pytest.raises(ValidationError, match="your own"):
        services.proposal_approve(proposal=proposal, user=author)
    other = factories.user_create("Admin")
    assert services.proposal_approve(proposal=proposal, user=other).status == "applied"


def test_only_reviewers_review(eval_registry: dict[str, Any]) -> None:
    proposal = make_proposal(eval_registry)
    for role in ("Viewer", "Operator"):
        with pytest.raises(ValidationError, match="Reviewer"):
            services.proposal_approve(proposal=proposal, user=factories.user_create(role))
    proposal.refresh_from_db()
    assert proposal.status == ProposalStatus.PROPOSED


def test_reject_needs_a_comment_and_closes(eval_registry: dict[str, Any]) -> None:
    proposal = make_proposal(eval_registry)
    reviewer = factories.user_create("Reviewer")
    with pytest.raises(ValidationError, match="why"):
        services.proposal_reject(proposal=proposal, user=reviewer, comment=" ")
    proposal = services.proposal_reject(proposal=proposal, user=reviewer, comment="too risky")
    assert proposal.status == ProposalStatus.REJECTED
    with pytest.raises(ValidationError):
        services.proposal_approve(proposal=proposal, user=reviewer)
    assert RoutingTableVersion.objects.get(status=VersionStatus.ACTIVE) == eval_registry["version"]


def test_a_proposal_made_on_an_older_table_is_stale(eval_registry: dict[str, Any]) -> None:
    reg = eval_registry
    proposal = make_proposal(reg)
    newer = registry.routing_version_draft_create(note="someone else's change")
    registry.routing_version_activate(version=newer)

    rows = selectors.proposal_list(status="open")
    assert [r.is_stale for r in rows] == [True]
    with pytest.raises(ValidationError, match="Stale"):
        services.proposal_approve(proposal=proposal, user=factories.user_create("Reviewer"))
    assert RoutingTableVersion.objects.get(status=VersionStatus.ACTIVE) == newer

    # New evidence on the current table supersedes it; an equivalent fresh one is not repeated.
    fresh = make_proposal(reg, based_on_version=newer.number)
    proposal.refresh_from_db()
    assert proposal.status == ProposalStatus.SUPERSEDED
    route = Route.objects.select_related("primary", "task_class").get(
        version=reg["version"], task_class=reg["practice"]
    )
    repeat = services.proposal_create(
        task_class=reg["practice"],
        route=route,
        to_model=reg["mistral"],
        change="downgrade",
        based_on_version=newer.number,
        title="again",
        evidence={},
    )
    assert repeat is None
    assert Proposal.objects.filter(status="proposed").get() == fresh
