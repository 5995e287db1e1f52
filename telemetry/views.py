"""Dashboard pages, their htmx partials, the decision explorer and the CSV export.

One view serves a whole page or, for an htmx request, the partial named by the element it
targets (``HX-Target``): ``dashboard`` (filters changed, 30 s refresh), ``chart-<name>``
(one chart, e.g. the spend stack switch), ``budgets``, or ``decision-rows`` (next page).
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from controlplane.decorators import role_required
from controlplane.models import ModelEndpoint, Route, TaskClass
from controlplane.roles import VIEWER
from evaluation.selectors import (
    desk_attention,
    handoff_states,
    handoffs_for_decision,
    output_checks_for,
    proposal_waiting_count,
)
from routing.circuit_board import circuit_view
from telemetry import figures, selectors
from telemetry.forms import DashboardFilterForm, filters_query
from telemetry.selectors import RoutingChange


@dataclass(frozen=True, slots=True)
class Chart:
    name: str
    title: str
    help: str
    build: Callable[[pd.DataFrame, dict[str, Any]], figures.Figure]
    wide: bool = False


def _escalation_chart(focus: str) -> Chart:
    guide = selectors.escalation_band().guide
    if focus == "task_class":
        return Chart(
            "escalation",
            "Escalation rate over time",
            guide,
            lambda f, c: figures.escalation_trend_figure(f, changes=c["changes"]),
        )
    if focus == "model":
        return Chart(
            "escalation",
            "Escalations away from this model",
            "Requests routed here that moved to a fallback (an outage shows here). " + guide,
            lambda f, c: figures.escalation_trend_figure(c["routed"], changes=c["changes"]),
        )
    return Chart(
        "escalation",
        "Escalation rate per task class",
        guide,
        lambda f, c: figures.escalation_figure(f),
    )


def _charts(focus: str) -> list[Chart]:
    """The charts of a page; ``focus`` is "overview", "task_class" or "model"."""
    baseline = settings.SWITCHYARD_BASELINE_MODEL
    trend_by = "model" if focus == "task_class" else "task_class"
    return [
        Chart(
            "spend",
            "Spend",
            "Cost of every attempt, by the model that served the request.",
            lambda f, c: figures.spend_figure(f, stack=c["stack"], changes=c["changes"]),
            wide=True,
        ),
        Chart(
            "savings",
            f"Savings against {baseline}",
            f"Actual cost vs. the same tokens at {baseline}'s dated price.",
            lambda f, c: figures.savings_figure(f, baseline_model=baseline, changes=c["changes"]),
        ),
        Chart(
            "tiers",
            "Traffic served by tier",
            "Share of requests each tier served.",
            lambda f, c: figures.tier_share_figure(f, changes=c["changes"]),
        ),
        _escalation_chart(focus),
        Chart(
            "latency",
            "Latency per model",
            "p50 / p95 / p99 of the whole request (all attempts).",
            lambda f, c: figures.latency_figure(f),
        ),
        Chart(
            "quality",
            "Quality per model and task class",
            "Success rate; second line: mean grader score.",
            lambda f, c: figures.quality_figure(f),
            wide=focus == "overview",
        ),
        Chart(
            "trend",
            "Quality over time",
            f"Mean grader score per {trend_by.replace('_', ' ')}; a falling line is drift.",
            lambda f, c: figures.quality_trend_figure(f, by=trend_by, changes=c["changes"]),
        ),
        Chart(
            "qpd",
            "Quality per dollar",
            "Successful requests per $1, per task class.",
            lambda f, c: figures.quality_per_dollar_figure(f),
        ),
        Chart(
            "pareto",
            "Cost vs. quality",
            "Each point: a model on a task class. The dotted line is the Pareto frontier.",
            lambda f, c: figures.pareto_figure(f),
        ),
        Chart(
            "volume",
            "Decisions",
            "Requests per time bucket, by tier served.",
            lambda f, c: figures.volume_figure(f, changes=c["changes"]),
        ),
    ]


def _filter_form(request: HttpRequest) -> DashboardFilterForm:
    return DashboardFilterForm(request.GET or None)


def _htmx_target(request: HttpRequest) -> str:
    htmx = getattr(request, "htmx", None)
    return str(htmx.target or "") if htmx else ""


def _budget_cards(burns: list[selectors.BudgetBurn]) -> list[dict[str, Any]]:
    now = timezone.now()
    return [
        {"burn": burn, "json": figures.figure_json(figures.budget_figure(burn, now=now))}
        for burn in burns
    ]


def _dashboard(
    request: HttpRequest, *, focus: str, title: str, fixed: dict[str, Any], extra: dict[str, Any]
) -> HttpResponse:
    form = _filter_form(request)
    filters = form.filters(**fixed)
    target = _htmx_target(request)
    charts = _charts(focus)
    if target.startswith("chart-"):
        charts = [c for c in charts if f"chart-{c.name}" == target]
        if not charts:
            raise Http404("unknown chart")
    context: dict[str, Any] = {
        "form": form,
        "filters": filters,
        "title": title,
        "focus": focus,
        "query": filters_query(filters),
        "stack": form.stack_choice(),
        "stacks": figures.STACKS,
        "baseline_model": settings.SWITCHYARD_BASELINE_MODEL,
        "band": selectors.escalation_band(),
        "refresh": focus == "overview",
        # Rollups are hourly: the range starts at the top of its first hour.
        "data_start": filters.start.replace(minute=0, second=0, microsecond=0),
        **extra,
    }
    template = "telemetry/dashboard.html"
    if target == "budgets":
        context["budgets"] = _budget_cards(
            selectors.budget_burns(task_class=fixed.get("task_class", ""))
        )
        return render(request, f"{template}#budgets", context)
    frame = selectors.rollup_frame(filters)
    changes: list[RoutingChange] = selectors.routing_changes(start=filters.start, end=filters.end)
    build_context: dict[str, Any] = {"stack": form.stack_choice(), "changes": changes}
    if focus == "model" and any(c.name == "escalation" for c in charts):
        build_context["routed"] = selectors.escalation_frame(filters, routed_model=fixed["model"])
    context["charts"] = [
        {"chart": chart, "json": figures.figure_json(chart.build(frame, build_context))}
        for chart in charts
    ]
    context["changes"] = changes
    if target.startswith("chart-"):
        context["item"] = context["charts"][0]
        return render(request, f"{template}#chart-card", context)
    context["headline"] = selectors.headline(frame)
    context["gateway_savings"] = selectors.gateway_savings(frame)
    if focus == "overview":
        # The landing page says what to do next: a fresh install how to send its first
        # decision, and whoever lands here that proposals wait for a review.
        context["waiting"] = proposal_waiting_count()
        if not selectors.traffic_seen():
            context["getting_started"] = selectors.getting_started(
                decisions_url=request.build_absolute_uri(reverse("api-decisions"))
            )
    burns = selectors.budget_burns(task_class=fixed.get("task_class", ""))
    context["budgets"] = _budget_cards(burns)
    context["attention"] = selectors.attention_items(frame, burns, escalations=focus != "model")
    if focus == "overview":
        context["attention"] += desk_attention(url=reverse("handoffs"))
    if target == "dashboard":
        return render(request, f"{template}#dashboard", context)
    context["options"] = selectors.filter_options()
    return render(
        request, template, context, status=200 if form.is_valid() or not form.is_bound else 400
    )


@require_GET
@role_required(VIEWER)
def overview(request: HttpRequest) -> HttpResponse:
    return _dashboard(request, focus="overview", title="Overview", fixed={}, extra={})


@require_GET
@role_required(VIEWER)
def task_class_page(request: HttpRequest, slug: str) -> HttpResponse:
    task_class = get_object_or_404(TaskClass, slug=slug)
    history = list(
        Route.objects.filter(task_class=task_class, version__activated_at__isnull=False)
        .select_related("version", "primary")
        .order_by("-version__activated_at")
    )
    from evaluation.selectors import routing_strategy_summary

    routes = list(selectors.active_routes(task_class=slug))
    strategy = routes[0].strategy if routes else None
    return _dashboard(
        request,
        focus="task_class",
        title=f"Task class · {task_class.name}",
        fixed={"task_class": slug},
        extra={
            "task_class": task_class,
            "routes": routes,
            "route_history": history,
            "routing": routing_strategy_summary(slug, strategy),
        },
    )


@require_GET
@role_required(VIEWER)
def model_page(request: HttpRequest, slug: str) -> HttpResponse:
    model = get_object_or_404(ModelEndpoint, slug=slug)
    return _dashboard(
        request,
        focus="model",
        title=f"Model · {model.slug}",
        fixed={"model": slug},
        extra={
            "model": model,
            "routes": selectors.active_routes(model=slug),
            "circuit": circuit_view(slug),
        },
    )


@require_GET
@role_required(VIEWER)
def decision_list(request: HttpRequest) -> HttpResponse:
    form = _filter_form(request)
    filters = form.filters()
    after = (
        selectors.keyset_decode(request.GET.get("cursor", ""))
        if request.GET.get("cursor")
        else None
    )
    page = selectors.decision_page(filters, after=after)
    reviews = handoff_states([d.id for d in page.decisions])
    for d in page.decisions:
        d.handoff_state = reviews.get(d.id, "")  # type: ignore[attr-defined]
    rows = [(d, page.outcomes.get(d.id)) for d in page.decisions]
    query = filters_query(filters)
    context = {
        "form": form,
        "filters": filters,
        "rows": rows,
        "query": query,
        "next_cursor": page.next_cursor,
        "first_page": after is None,
    }
    if _htmx_target(request) == "decision-more":
        return render(request, "telemetry/decisions.html#decision-rows", context)
    context["options"] = selectors.filter_options()
    return render(request, "telemetry/decisions.html", context)


@require_GET
@role_required(VIEWER)
def decision_detail(request: HttpRequest, decision_id: uuid.UUID) -> HttpResponse:
    found = selectors.decision_get(decision_id)
    if found is None:
        raise Http404("no such decision")
    record, outcome = found
    prompt_visible = record.prompt is not None and (
        record.prompt_expires_at is None or record.prompt_expires_at > timezone.now()
    )
    return render(
        request,
        "telemetry/decision_detail.html",
        {
            "d": record,
            "o": outcome,
            "path": record.path or {},
            "prompt_visible": prompt_visible,
            "handoffs": handoffs_for_decision(record.id),
            "checks": output_checks_for(record.id),
        },
    )


class _Echo:
    """A file-like object whose write returns the line (for csv.writer streaming)."""

    def write(self, value: str) -> str:
        return value


def _csv_lines(rows: Iterator[tuple[Any, ...]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(selectors.EXPORT_HEADER)
    for row in rows:
        yield writer.writerow([v.isoformat() if isinstance(v, datetime) else v for v in row])


@require_GET
@role_required(VIEWER)
def decision_export(request: HttpRequest) -> HttpResponse:
    filters = _filter_form(request).filters()
    response = StreamingHttpResponse(
        _csv_lines(selectors.decision_export_rows(filters)), content_type="text/csv"
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="decisions-{stamp}.csv"'
    return response  # type: ignore[return-value]  # a streamed response
