"""Reviewer pages: the proposal queue, a proposal's evidence, review actions, sweeps, and
the reviewers' desk (handoff queue, one handoff beside its decision path, webhook log).

Each page renders whole, or — for htmx requests — only the named partial it swaps.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from controlplane.decorators import role_required
from controlplane.models import ModelEndpoint, TaskClass
from controlplane.roles import OPERATOR, REVIEWER, VIEWER
from evaluation import charts, selectors, services
from evaluation.models import (
    DeliveryStatus,
    Proposal,
    ProposalChange,
    SweepKind,
    SweepRun,
    WebhookDelivery,
)
from evaluation.services import handoffs as handoff_services
from routing.schemas import MAX_DRAFT_CHARS

SLUG_RE = re.compile(r"[-a-zA-Z0-9_]+")
QUEUE_FILTERS = ["open", "applied", "rejected", "rolled_back", "superseded", "all"]


def _template(request: HttpRequest, page: str, partial: str) -> str:
    return f"{page}#{partial}" if getattr(request, "htmx", False) else page


@require_GET
@role_required(VIEWER)
def proposal_queue(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "open")
    if status not in QUEUE_FILTERS:
        status = "open"
    rows = selectors.proposal_list(status=None if status == "all" else status)
    context: dict[str, Any] = {"rows": rows, "status": status, "filters": QUEUE_FILTERS}
    if not getattr(request, "htmx", False):
        context["task_classes"] = TaskClass.objects.filter(is_active=True).order_by("slug")
        context["models"] = ModelEndpoint.objects.filter(status="active").order_by("tier", "slug")
    return render(request, _template(request, "evaluation/proposals.html", "queue"), context)


@require_POST
@role_required(REVIEWER)
def proposal_propose(request: HttpRequest) -> HttpResponse:
    """A Reviewer's own proposal; someone else approves it."""
    task_class = TaskClass.objects.filter(slug=request.POST.get("task_class", "")).first()
    to_model = ModelEndpoint.objects.filter(slug=request.POST.get("to_model", "")).first()
    if task_class is None or to_model is None:
        messages.error(request, "Choose a task class and a model.")
        return redirect("proposals")
    try:
        proposal = services.proposal_create_manual(
            task_class=task_class,
            to_model=to_model,
            user=request.user,
            rationale=request.POST.get("rationale", "")[:2000],
        )
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            messages.error(request, f"{field}: {'; '.join(errors)}")
        return redirect("proposals")
    messages.success(request, "Proposed; another Reviewer must approve it.")
    return redirect("proposal-detail", public_id=proposal.public_id)


def _proposal(public_id: UUID) -> Proposal:
    try:
        return selectors.proposal_get(public_id)
    except Proposal.DoesNotExist:
        raise Http404("No such proposal.") from None


def _detail_context(proposal: Proposal) -> dict[str, Any]:
    active = selectors.active_version_number()
    evidence = proposal.evidence or {}
    return {
        "proposal": proposal,
        "evidence": evidence,
        "active_number": active,
        "is_stale": selectors.proposal_is_stale(proposal, active),
        "samples": selectors.proposal_samples(proposal),
        "route_diff": selectors.proposal_route_diffs([proposal]).get(proposal.pk, ()),
        "success_chart": charts.success_rate_chart(evidence),
        "latency_chart": charts.latency_chart(selectors.proposal_latencies(proposal), evidence),
        "escalation_chart": charts.escalation_chart(evidence),
    }


@require_GET
@role_required(VIEWER)
def proposal_detail(request: HttpRequest, public_id: UUID) -> HttpResponse:
    proposal = _proposal(public_id)
    return render(
        request,
        _template(request, "evaluation/proposal.html", "review"),
        _detail_context(proposal),
    )


@require_POST
@role_required(REVIEWER)
def proposal_review(request: HttpRequest, public_id: UUID) -> HttpResponse:
    """approve | reject | apply | rollback | reevaluate, then show the review panel again."""
    proposal = _proposal(public_id)
    action = request.POST.get("action", "")
    comment = request.POST.get("comment", "").strip()[:2000]
    try:
        if action == "approve":
            proposal = services.proposal_approve(
                proposal=proposal, user=request.user, comment=comment
            )
            number = proposal.applied_version.number if proposal.applied_version else "?"
            messages.success(request, f"Approved and applied: routing table v{number} is active.")
        elif action == "reject":
            services.proposal_reject(proposal=proposal, user=request.user, comment=comment)
            messages.success(request, "Rejected.")
        elif action == "apply":
            services.proposal_apply(proposal=proposal, user=request.user, comment=comment)
            messages.success(request, "Applied.")
        elif action == "rollback":
            services.proposal_rollback(proposal=proposal, user=request.user, comment=comment)
            messages.success(request, "Rolled back to the previous routing table.")
        elif action == "reevaluate":
            _reevaluate(request, proposal, comment)
        else:
            messages.error(request, "Unknown action.")
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            messages.error(request, f"{field}: {'; '.join(errors)}")
    if getattr(request, "htmx", False):
        proposal = _proposal(public_id)
        return render(request, "evaluation/proposal.html#review", _detail_context(proposal))
    return redirect("proposal-detail", public_id=public_id)


def _reevaluate(request: HttpRequest, proposal: Proposal, comment: str) -> None:
    kind = (
        SweepKind.ESCALATION_MONITOR
        if proposal.change == ProposalChange.UPGRADE
        else SweepKind.TIER_DOWNGRADE
    )
    services.proposal_supersede(proposal=proposal, comment=comment or "re-evaluation requested")
    run, _ = services.sweep_run_create(kind=kind, task_class=proposal.task_class, user=request.user)
    messages.success(request, f"Re-evaluation queued as sweep run #{run.pk}.")


# The sweeps an Operator may start from the sweeps page (shadow runs need a configuration).
STARTABLE_KINDS = [SweepKind.TIER_DOWNGRADE, SweepKind.ESCALATION_MONITOR, SweepKind.CONDENSE]


@require_GET
@role_required(VIEWER)
def sweep_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        _template(request, "evaluation/sweeps.html", "runs"),
        {
            "runs": selectors.sweep_run_list(),
            "schedules": selectors.sweep_schedule_list(),
            "task_classes": TaskClass.objects.filter(is_active=True).order_by("slug"),
            "kinds": STARTABLE_KINDS,
        },
    )


@require_POST
@role_required(OPERATOR)
def sweep_start(request: HttpRequest) -> HttpResponse:
    kind = request.POST.get("kind", "")
    if kind not in STARTABLE_KINDS:
        messages.error(request, "Choose a sweep kind.")
        return redirect("sweeps")
    slug = request.POST.get("task_class", "")
    task_class = get_object_or_404(TaskClass, slug=slug) if slug else None
    run, _ = services.sweep_run_create(kind=kind, task_class=task_class, user=request.user)
    messages.success(request, f"Sweep run #{run.pk} queued.")
    return redirect("sweeps")


@require_POST
@role_required(OPERATOR)
def sweep_resume(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(SweepRun, pk=run_id)
    try:
        services.sweep_run_resume(run=run, user=request.user)
        messages.success(request, f"Sweep run #{run.pk} resumed.")
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
    return redirect("sweeps")


CALIBRATION_DAYS = (1, 7, 14, 30)


@require_GET
@role_required(VIEWER)
def calibration(request: HttpRequest) -> HttpResponse:
    """How well decisions' confidence predicts graded outcomes, and the learned routers."""
    try:
        days = int(request.GET.get("days", "14"))
    except ValueError:
        days = 14
    if days not in CALIBRATION_DAYS:
        days = 14
    rows = selectors.calibration_summary(days=days)
    overall = rows[0] if rows else None
    figure = charts.reliability_figure([(r.label, r.bins) for r in rows[:6]])
    routers = selectors.learned_router_list()
    router_rows = [
        {
            "router": r,
            "models": [
                {"slug": slug, **r.metrics.get(slug, {}), **r.samples.get(slug, {})}
                for slug in sorted(r.coefficients)
            ],
            "share": r.metrics.get("routing", {}).get("share", {}),
        }
        for r in routers
    ]
    return render(
        request,
        "evaluation/calibration.html",
        {
            "rows": rows[1:],
            "overall": overall,
            "figure": figure,
            "days": days,
            "day_choices": CALIBRATION_DAYS,
            "routers": router_rows,
        },
    )


# --- the reviewers' desk: human handoffs ------------------------------------------------------


def _slug_param(value: str) -> str:
    """A filter value: a slug, or nothing (a NUL or look-alike never reaches the query)."""
    return value if len(value) <= 64 and SLUG_RE.fullmatch(value) else ""


def _queue_context(request: HttpRequest) -> dict[str, Any]:
    task_class = _slug_param(request.GET.get("task_class", ""))
    team = _slug_param(request.GET.get("team", ""))
    rows = selectors.handoff_queue(task_class=task_class, team=team)
    choices = selectors.handoff_filter_choices()
    return {
        "rows": rows,
        "task_class": task_class,
        "team": team,
        "task_classes": choices["task_classes"],
        "teams": choices["teams"],
        "stats": selectors.handoff_stats(),
        "now": timezone.now(),
    }


@require_GET
@role_required(REVIEWER)
def handoff_queue(request: HttpRequest) -> HttpResponse:
    """Pending drafts, oldest first, with age, SLA and who holds each."""
    return render(
        request,
        _template(request, "evaluation/handoffs.html", "handoff-queue"),
        _queue_context(request),
    )


@require_POST
@role_required(REVIEWER)
def handoff_claim_next(request: HttpRequest) -> HttpResponse:
    handoff = handoff_services.handoff_claim_next(
        user=request.user,
        task_class=_slug_param(request.POST.get("task_class", "")),
        team=_slug_param(request.POST.get("team", "")),
    )
    if handoff is None:
        messages.info(request, "Nothing left to claim.")
        return redirect("handoffs")
    return redirect("handoff-detail", public_id=handoff.public_id)


def _handoff(public_id: UUID) -> Any:
    found = selectors.handoff_get(public_id)
    if found is None:
        raise Http404("No such handoff.")
    return found


def _desk_context(request: HttpRequest, public_id: UUID) -> dict[str, Any]:
    handoff = _handoff(public_id)
    now = timezone.now()
    claim_live = handoff.claim_expires_at is not None and handoff.claim_expires_at > now
    return {
        "h": handoff,
        "now": now,
        "mine": claim_live and handoff.claimed_by_id == request.user.pk,
        "held_by_other": claim_live and handoff.claimed_by_id != request.user.pk,
        "path": selectors.handoff_decision_path(handoff),
        "checks": selectors.output_checks_for(handoff.decision_id),
        "diff_lines": selectors.diff_lines(handoff.diff),
    }


@require_GET
@role_required(REVIEWER)
def handoff_detail(request: HttpRequest, public_id: UUID) -> HttpResponse:
    """The draft, its context and the decision's whole path, with the review actions."""
    return render(
        request,
        _template(request, "evaluation/handoff.html", "desk"),
        _desk_context(request, public_id),
    )


@require_POST
@role_required(REVIEWER)
def handoff_act(request: HttpRequest, public_id: UUID) -> HttpResponse:
    """claim | release | approve (with or without edits) | reject, then the desk again."""
    handoff = _handoff(public_id)
    action = request.POST.get("action", "")
    try:
        if action == "claim":
            if handoff_services.handoff_claim(handoff=handoff, user=request.user):
                messages.success(request, "Claimed: it is yours until the claim expires.")
            else:
                messages.error(request, "Someone else holds this item, or it is resolved.")
        elif action == "release":
            handoff_services.handoff_release(handoff=handoff, user=request.user)
            messages.info(request, "Released.")
        elif action == "approve":
            handoff = handoff_services.handoff_approve(
                handoff=handoff,
                user=request.user,
                final_text=request.POST.get("final_text", handoff.draft)[:MAX_DRAFT_CHARS],
            )
            messages.success(
                request, "Approved with edits." if handoff.diff else "Approved as drafted."
            )
        elif action == "reject":
            handoff_services.handoff_reject(
                handoff=handoff, user=request.user, reason=request.POST.get("reason", "")
            )
            messages.success(request, "Rejected.")
        else:
            messages.error(request, "Unknown action.")
    except handoff_services.HandoffNotClaimed as exc:
        messages.error(request, str(exc))
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            messages.error(request, f"{field}: {'; '.join(errors)}")
    if getattr(request, "htmx", False):
        return render(request, "evaluation/handoff.html#desk", _desk_context(request, public_id))
    return redirect("handoff-detail", public_id=public_id)


@require_GET
@role_required(OPERATOR)
def webhook_deliveries(request: HttpRequest) -> HttpResponse:
    """Every webhook delivery with its attempts; Operators send one again."""
    status = request.GET.get("status", "")
    if status not in ("", *DeliveryStatus.values):
        status = ""
    return render(
        request,
        _template(request, "evaluation/webhooks.html", "deliveries"),
        {
            "deliveries": selectors.webhook_delivery_list(status=status),
            "status": status,
            "statuses": DeliveryStatus.values,
        },
    )


@require_POST
@role_required(OPERATOR)
def webhook_resend(request: HttpRequest, delivery_id: int) -> HttpResponse:
    delivery = get_object_or_404(WebhookDelivery, pk=delivery_id)
    handoff_services.webhook_resend(delivery=delivery)
    messages.success(request, f"Delivery #{delivery.pk} queued again.")
    return redirect("webhook-deliveries")
