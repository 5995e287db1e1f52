"""Proposals: create from evidence, review, apply as a new routing-table version, roll back.

States: proposed → approved | rejected; approved → applied → rolled_back. A proposal made on
an older routing-table version is stale and must be re-evaluated (superseded) instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane import services as registry
from controlplane.audit import audit_actor, audit_event
from controlplane.models import ModelEndpoint, Route, RoutingTableVersion, TaskClass, VersionStatus
from controlplane.roles import REVIEWER, user_has_role
from evaluation.models import (
    OPEN_PROPOSAL_STATUSES,
    LearnedRouter,
    LearnedRouterStatus,
    Proposal,
    ProposalChange,
    ProposalStatus,
    SweepRun,
)
from evaluation.selectors import active_version_number
from routing.enums import RouteStrategy


def proposal_fallbacks(route: Route, to_model: ModelEndpoint, change: str) -> list[str]:
    """The new fallback chain.

    A downgrade keeps the old primary as the first fallback (escalation goes back up);
    an upgrade drops models weaker than the new primary from the chain.
    """
    chain = [s for s in route.fallbacks if s != to_model.slug]
    if change == ProposalChange.DOWNGRADE:
        return [route.primary.slug, *[s for s in chain if s != route.primary.slug]]
    if change == ProposalChange.UPGRADE:
        tiers = dict(ModelEndpoint.objects.filter(slug__in=chain).values_list("slug", "tier"))
        return [s for s in chain if tiers.get(s, 0) >= to_model.tier]
    return [route.primary.slug, *[s for s in chain if s != route.primary.slug]]


def proposal_create(
    *,
    task_class: TaskClass,
    route: Route,
    to_model: ModelEndpoint,
    change: str,
    based_on_version: int,
    title: str,
    evidence: dict[str, Any],
    sweep_run: SweepRun | None = None,
    user: Any = None,
    fallbacks: Sequence[str] | None = None,
) -> Proposal | None:
    """Create a proposal unless an equivalent one is open; returns None when it was not made.

    1. An open proposal for the class based on the current version wins: nothing new is made.
    2. An open but stale one (made on an older version) is superseded by the new evidence.
    3. The unique constraints (one per run and class, one open per class) settle races
       between workers: the loser's insert fails and it returns None.
    """
    with transaction.atomic():
        current = (
            Proposal.objects.select_for_update()
            .filter(task_class=task_class, status__in=OPEN_PROPOSAL_STATUSES)
            .first()
        )
        if current is not None:
            if current.based_on_version == based_on_version:
                return None
            current.status = ProposalStatus.SUPERSEDED
            current.review_comment = (
                current.review_comment + "\nSuperseded by newer evidence."
            ).strip()
            current.save(update_fields=["status", "review_comment"])
        proposal = Proposal(
            change=change,
            task_class=task_class,
            from_model=route.primary,
            to_model=to_model,
            new_fallbacks=list(
                fallbacks if fallbacks is not None else proposal_fallbacks(route, to_model, change)
            ),
            based_on_version=based_on_version,
            sweep_run=sweep_run,
            title=title[:200],
            evidence=evidence,
            created_by=user if getattr(user, "pk", None) else None,
        )
        try:
            with transaction.atomic():
                proposal.save()
        except IntegrityError:
            return None
    return proposal


def proposal_create_manual(
    *, task_class: TaskClass, to_model: ModelEndpoint, user: Any, rationale: str
) -> Proposal:
    """A person's own proposal (another Reviewer must approve it).

    The change is checked against the active route now (data policy, output cap, model
    status) so that an impossible proposal is refused here rather than at apply time.
    """
    if not rationale.strip():
        raise ValidationError({"rationale": "Explain why the route should change."})
    active = RoutingTableVersion.objects.filter(status=VersionStatus.ACTIVE).first()
    if active is None:
        raise ValidationError({"routing": "There is no active routing table."})
    route = (
        Route.objects.select_related("primary", "task_class")
        .filter(version=active, task_class=task_class)
        .first()
    )
    if route is None:
        raise ValidationError(
            {"task_class": f"{task_class.slug} has no route in v{active.number}."}
        )
    if route.primary_id == to_model.pk:
        raise ValidationError({"to_model": f"{to_model.slug} is already the primary."})
    change = ProposalChange.SWITCH
    if to_model.tier < route.primary.tier:
        change = ProposalChange.DOWNGRADE
    elif to_model.tier > route.primary.tier:
        change = ProposalChange.UPGRADE
    fallbacks = proposal_fallbacks(route, to_model, change)
    candidate = Route(
        version=active,
        task_class=task_class,
        primary=to_model,
        fallbacks=fallbacks,
        output_cap=route.output_cap,
    )
    registry.route_validate(candidate)
    if Proposal.objects.filter(task_class=task_class, status__in=OPEN_PROPOSAL_STATUSES).exists():
        raise ValidationError({"task_class": "An open proposal for this class awaits review."})
    proposal = proposal_create(
        task_class=task_class,
        route=route,
        to_model=to_model,
        change=change,
        based_on_version=active.number,
        title=f"{task_class.slug}: {route.primary.slug} → {to_model.slug} (manual)",
        evidence={
            "kind": "manual",
            "rationale": rationale.strip()[:2000],
            "from_model": route.primary.slug,
            "to_model": to_model.slug,
            "example_sample_ids": [],
        },
        user=user,
        fallbacks=fallbacks,
    )
    if proposal is None:
        raise ValidationError({"task_class": "An open proposal for this class awaits review."})
    return proposal


def _locked(proposal: Proposal) -> Proposal:
    return (
        Proposal.objects.select_for_update()
        .select_related("task_class", "to_model")
        .get(pk=proposal.pk)
    )


def _check_reviewer(proposal: Proposal, user: Any) -> None:
    if not user_has_role(user, REVIEWER):
        raise ValidationError({"user": "Only a Reviewer (or Admin) can review proposals."})
    if proposal.created_by_id is not None and proposal.created_by_id == getattr(user, "pk", None):
        raise ValidationError({"user": "You cannot review your own proposal."})


def _check_fresh(proposal: Proposal) -> None:
    active = active_version_number()
    if proposal.based_on_version != active:
        raise ValidationError(
            {
                "proposal": f"Stale: made on v{proposal.based_on_version}, the active table is "
                f"v{active}. Re-evaluate it."
            }
        )


def proposal_approve(
    *, proposal: Proposal, user: Any, comment: str = "", apply: bool = True
) -> Proposal:
    """Approve (and by default apply) a proposal, in one transaction."""
    with transaction.atomic():
        proposal = _locked(proposal)
        if proposal.status != ProposalStatus.PROPOSED:
            raise ValidationError({"status": f"The proposal is {proposal.status}, not proposed."})
        _check_reviewer(proposal, user)
        _check_fresh(proposal)
        proposal.status = ProposalStatus.APPROVED
        proposal.reviewed_by = user
        proposal.reviewed_at = timezone.now()
        proposal.review_comment = comment
        proposal.save(update_fields=["status", "reviewed_by", "reviewed_at", "review_comment"])
        with audit_actor(user):
            audit_event(proposal, "approve", comment)
        if apply:
            proposal = proposal_apply(proposal=proposal, user=user, comment=comment)
    return proposal


def proposal_reject(*, proposal: Proposal, user: Any, comment: str) -> Proposal:
    if not comment.strip():
        raise ValidationError({"comment": "Say why the proposal is rejected."})
    with transaction.atomic():
        proposal = _locked(proposal)
        if proposal.status not in OPEN_PROPOSAL_STATUSES:
            raise ValidationError({"status": f"The proposal is {proposal.status}; it is closed."})
        _check_reviewer(proposal, user)
        proposal.status = ProposalStatus.REJECTED
        proposal.reviewed_by = user
        proposal.reviewed_at = timezone.now()
        proposal.review_comment = comment
        proposal.save(update_fields=["status", "reviewed_by", "reviewed_at", "review_comment"])
        with audit_actor(user):
            audit_event(proposal, "reject", comment)
    return proposal


def proposal_apply(*, proposal: Proposal, user: Any, comment: str = "") -> Proposal:
    """Turn an approved proposal into a new active routing-table version, atomically.

    1. Lock the proposal; it must be approved and based on the active version.
    2. Draft a copy of the active version and set the class's route (other route options —
       escalation triggers, conditions, cap — are kept).
    3. Activate the draft (validated and audited by the registry service); the decision API
       sees the new version on its next registry-generation check.
    """
    with transaction.atomic():
        proposal = _locked(proposal)
        if proposal.status != ProposalStatus.APPROVED:
            raise ValidationError({"status": f"The proposal is {proposal.status}, not approved."})
        if not user_has_role(user, REVIEWER):
            raise ValidationError({"user": "Only a Reviewer (or Admin) can apply proposals."})
        _check_fresh(proposal)
        note = f"Proposal {proposal.public_id}: {proposal.title}"
        with audit_actor(user, comment=comment or note):
            active = RoutingTableVersion.objects.get(status=VersionStatus.ACTIVE)
            draft = registry.routing_version_draft_create(based_on=active, note=note, user=user)
            options: dict[str, Any] = {}
            router = None
            if proposal.change == ProposalChange.LEARNED:
                # Route by the learned router; the new version also makes every decider
                # reload (and so pick up the router) within a second.
                router = _learned_router_of(proposal)
                options["strategy"] = RouteStrategy.LEARNED.value
            registry.route_set(
                version=draft,
                task_class=proposal.task_class,
                primary=proposal.to_model,
                fallbacks=proposal.new_fallbacks,
                **options,
            )
            if router is not None:
                from evaluation.services.learned import learned_router_activate

                learned_router_activate(router)
            registry.routing_version_activate(version=draft, user=user, comment=comment or note)
        proposal.status = ProposalStatus.APPLIED
        proposal.applied_version = draft
        proposal.applied_at = timezone.now()
        proposal.applied_by = user
        proposal.save(update_fields=["status", "applied_version", "applied_at", "applied_by"])
    return proposal


def _learned_router_of(proposal: Proposal) -> LearnedRouter:
    router_id = (proposal.evidence or {}).get("learned_router_id")
    if not isinstance(router_id, int):
        raise ValidationError({"proposal": "It names no learned router."})
    router = (
        LearnedRouter.objects.select_for_update()
        .filter(pk=router_id, task_class=proposal.task_class)
        .first()
    )
    if router is None or router.status == LearnedRouterStatus.RETIRED:
        raise ValidationError({"proposal": "Its learned router is gone or retired."})
    return router


def proposal_rollback(*, proposal: Proposal, user: Any, comment: str = "") -> Proposal:
    """Re-activate the version the applied proposal replaced."""
    with transaction.atomic():
        proposal = _locked(proposal)
        if proposal.status != ProposalStatus.APPLIED or proposal.applied_version_id is None:
            raise ValidationError({"status": f"The proposal is {proposal.status}, not applied."})
        if not user_has_role(user, REVIEWER):
            raise ValidationError({"user": "Only a Reviewer (or Admin) can roll back."})
        applied = RoutingTableVersion.objects.select_for_update().get(
            pk=proposal.applied_version_id
        )
        if applied.status != VersionStatus.ACTIVE:
            message = f"v{applied.number} is no longer active; roll back from Routing tables."
            raise ValidationError({"proposal": message})
        previous = applied.based_on
        if previous is None:
            raise ValidationError({"proposal": "There is no earlier version to return to."})
        registry.routing_version_activate(
            version=previous, user=user, comment=comment or f"roll back proposal {proposal.pk}"
        )
        proposal.status = ProposalStatus.ROLLED_BACK
        proposal.rolled_back_at = timezone.now()
        proposal.rolled_back_by = user
        proposal.save(update_fields=["status", "rolled_back_at", "rolled_back_by"])
        with audit_actor(user):
            audit_event(proposal, "rollback", comment)
    return proposal


def proposal_supersede(*, proposal: Proposal, comment: str = "") -> Proposal:
    """Close an open proposal so that a re-evaluation can propose afresh."""
    with transaction.atomic():
        proposal = _locked(proposal)
        if proposal.status not in OPEN_PROPOSAL_STATUSES:
            raise ValidationError({"status": f"The proposal is {proposal.status}; it is closed."})
        proposal.status = ProposalStatus.SUPERSEDED
        proposal.review_comment = (proposal.review_comment + "\n" + comment).strip()
        proposal.save(update_fields=["status", "review_comment"])
    return proposal
