"""The dashboard charts: one function per chart, each building one Plotly figure.

Every function takes data a selector returned (the rollup frame, or a frame a selector
helper derived from it) and returns a Plotly figure as its JSON structure
(``{"data": [...], "layout": {...}}``); templates only place it. Building plotly's
``go.Figure`` objects validated every property on every request and cost a dashboard
~100 ms; the tests build ``go.Figure(spec)`` from every chart instead, so a misspelt
property still fails loudly.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import plotly.io as pio

from telemetry.selectors import (
    BudgetBurn,
    RoutingChange,
    escalation_band,
    escalation_by_class,
    latency_by_model,
    pareto_front,
    quality_by_model_class,
    quality_per_dollar_by_class,
)

TIER_COLORS = {1: "#2e9e5b", 2: "#d9901a", 3: "#c2413a"}
# Shades per tier, so a chart stacked by model still reads as "green = local, red = frontier".
TIER_SHADES = {
    1: ("#2e9e5b", "#7cc49a", "#1d6b3d", "#a9dbbd"),
    2: ("#d9901a", "#f0bd6a", "#a86a0c", "#f5d9a8"),
    3: ("#c2413a", "#e0837d", "#8c2a25", "#f0b7b3"),
}
PALETTE = ("#2f6fde", "#8e5bd6", "#1aa3a3", "#e07b39", "#5b6b7b", "#d6458b", "#7a9a01",
           "#b07d2b", "#3d8bd9", "#9c6644")  # fmt: skip
STACKS = {"model": "model", "tier": "tier", "team": "team", "task_class": "task class"}
_AXIS = {"gridcolor": "#eef1f5", "linecolor": "#dde3ea", "zeroline": False}
_MUTED = "#5b6b7b"

Figure = dict[str, Any]  # a Plotly figure: {"data": [traces], "layout": {...}}


def _escalation_guides() -> tuple[tuple[float, str], ...]:
    band = escalation_band()
    return (
        (band.downgrade, f"{band.percent(band.downgrade)} · try a cheaper tier"),
        (band.upgrade, f"{band.percent(band.upgrade)} · needs a stronger tier"),
    )


def _figure(
    traces: Sequence[Any],
    *,
    height: int = 300,
    legend: bool = True,
    xaxis: dict[str, Any] | None = None,
    yaxis: dict[str, Any] | None = None,
    shapes: Sequence[dict[str, Any]] = (),
    annotations: Sequence[dict[str, Any]] = (),
    margin: dict[str, int] | None = None,
    **layout: Any,
) -> Figure:
    """The one place a figure is constructed: shared look, then the chart's own layout."""
    return {
        "data": list(traces),
        "layout": {
            "template": "none",
            "height": height,
            "margin": {"l": 56, "r": 16, "t": 28 if legend else 12, "b": 40, **(margin or {})},
            "font": {
                "family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif",
                "size": 12,
                "color": "#1d2733",
            },
            "paper_bgcolor": "#ffffff",
            "plot_bgcolor": "#ffffff",
            "showlegend": legend,
            "legend": {
                "orientation": "h",
                "y": 1.0,
                "yanchor": "bottom",
                "x": 0,
                "font": {"size": 11},
            },
            "hoverlabel": {"namelength": -1},
            "xaxis": {**_AXIS, **(xaxis or {})},
            "yaxis": {**_AXIS, **(yaxis or {})},
            "shapes": list(shapes),
            "annotations": list(annotations),
            **layout,
        },
    }


def _empty(message: str = "No traffic in this range") -> Figure:
    return _figure(
        [],
        height=220,
        legend=False,
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[
            {
                "text": message,
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "font": {"size": 14, "color": _MUTED},
            }
        ],
    )


def _changes(changes: Sequence[RoutingChange]) -> dict[str, Any]:
    """Routing-table activations as labelled vertical lines on a time axis."""
    shapes, annotations = [], []
    for change in changes:
        shapes.append(
            {
                "type": "line",
                "x0": change.activated_at,
                "x1": change.activated_at,
                "y0": 0,
                "y1": 1,
                "xref": "x",
                "yref": "paper",
                "line": {"color": "#2f6fde", "width": 1.5, "dash": "dot"},
            }
        )
        annotations.append(
            {
                "x": change.activated_at,
                "y": 0.98,
                "xref": "x",
                "yref": "paper",
                "text": f"table v{change.number}",
                "showarrow": False,
                "xanchor": "left",
                "yanchor": "top",
                "bgcolor": "#ffffff",
                "font": {"size": 11, "color": "#2f6fde"},
                "hovertext": change.note or f"routing table v{change.number}",
            }
        )
    return {"shapes": shapes, "annotations": annotations}


def model_order(frame: pd.DataFrame) -> list[str]:
    pairs = frame[["model", "tier"]].drop_duplicates().sort_values(["tier", "model"])
    return list(dict.fromkeys(pairs["model"]))


def model_colors(frame: pd.DataFrame) -> dict[str, str]:
    """A colour per model, shaded by its tier (green local … red frontier)."""
    colors: dict[str, str] = {}
    used: dict[int, int] = {}
    pairs = frame[["model", "tier"]].drop_duplicates().sort_values(["tier", "model"])
    for model, tier in pairs.itertuples(index=False):
        if model in colors:
            continue
        shades = TIER_SHADES.get(int(tier), PALETTE)
        colors[model] = shades[used.get(int(tier), 0) % len(shades)]
        used[int(tier)] = used.get(int(tier), 0) + 1
    return colors


def _series_colors(frame: pd.DataFrame, by: str, keys: Sequence[Any]) -> dict[Any, str]:
    if by == "model":
        return {k: v for k, v in model_colors(frame).items()}
    if by == "tier":
        return {k: TIER_COLORS.get(int(k), _MUTED) for k in keys}
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def _label(by: str, key: object) -> str:
    return f"tier {key}" if by == "tier" else str(key)


def spend_figure(
    frame: pd.DataFrame, *, stack: str = "model", changes: Sequence[RoutingChange] = ()
) -> Figure:
    """Spend per time bucket, stacked by model, tier, team or task class."""
    if frame.empty or frame["cost_usd"].sum() == 0:
        return _empty()
    pivot = frame.pivot_table(
        index="bucket", columns=stack, values="cost_usd", aggfunc="sum", fill_value=0.0
    )
    order = pivot.sum().sort_values(ascending=False).index.tolist()
    if stack == "tier":
        order = sorted(order)
    colors = _series_colors(frame, stack, order)
    traces = [
        {
            "type": "bar",
            "x": pivot.index,
            "y": pivot[key].round(4),
            "name": _label(stack, key),
            "marker": {"color": colors.get(key)},
            "hovertemplate": "%{x}<br>$%{y:,.2f}",
        }
        for key in order
    ]
    return _figure(
        traces,
        barmode="stack",
        bargap=0.15,
        yaxis={"tickprefix": "$", "separatethousands": True},
        **_changes(changes),
    )


def savings_figure(
    frame: pd.DataFrame, *, baseline_model: str, changes: Sequence[RoutingChange] = ()
) -> Figure:
    """Actual cost against the same tokens on the baseline model, per bucket."""
    if frame.empty or frame["baseline_cost_usd"].sum() == 0:
        return _empty("No reported outcomes (or no baseline price) in this range")
    series = frame.groupby("bucket")[["cost_usd", "baseline_cost_usd"]].sum()
    pct = (1 - series["cost_usd"] / series["baseline_cost_usd"].replace(0, np.nan)) * 100
    traces = [
        {
            "type": "scatter",
            "x": series.index,
            "y": series["baseline_cost_usd"].round(2),
            "name": f"all on {baseline_model}",
            "mode": "lines",
            "line": {"color": "#c2413a", "dash": "dash", "width": 2},
            "hovertemplate": "%{x}<br>$%{y:,.2f}",
        },
        {
            "type": "scatter",
            "x": series.index,
            "y": series["cost_usd"].round(2),
            "name": "actual",
            "mode": "lines",
            "line": {"color": "#2e9e5b", "width": 2.5},
            "fill": "tonexty",
            "fillcolor": "rgba(46,158,91,0.12)",
            "hovertemplate": "%{x}<br>$%{y:,.2f}",
        },
        {
            "type": "scatter",
            "x": series.index,
            "y": pct.round(1),
            "name": "saved %",
            "mode": "lines",
            "yaxis": "y2",
            "line": {"color": "#2f6fde", "width": 1.5, "dash": "dot"},
            "hovertemplate": "%{x}<br>%{y:.1f} % saved",
        },
    ]
    return _figure(
        traces,
        yaxis={"tickprefix": "$", "separatethousands": True},
        yaxis2={
            "overlaying": "y",
            "side": "right",
            "range": [0, 100],
            "ticksuffix": " %",
            "showgrid": False,
            "zeroline": False,
        },
        margin={"r": 48},
        **_changes(changes),
    )


def tier_share_figure(frame: pd.DataFrame, *, changes: Sequence[RoutingChange] = ()) -> Figure:
    """Share of requests served by each tier over time (tier 1 at the bottom)."""
    if frame.empty or frame["decisions"].sum() == 0:
        return _empty()
    pivot = frame.pivot_table(
        index="bucket", columns="tier", values="decisions", aggfunc="sum", fill_value=0.0
    )
    share = pivot.div(pivot.sum(axis=1).replace(0, np.nan), axis=0) * 100
    traces = [
        {
            "type": "scatter",
            "x": share.index,
            "y": share[tier].round(1),
            "name": f"tier {tier}",
            "mode": "lines",
            "stackgroup": "share",
            "line": {"width": 0.5, "color": TIER_COLORS.get(tier)},
            "hovertemplate": "%{x}<br>%{y:.1f} %",
        }
        for tier in sorted(share.columns)
    ]
    return _figure(traces, yaxis={"range": [0, 100], "ticksuffix": " %"}, **_changes(changes))


def escalation_figure(frame: pd.DataFrame) -> Figure:
    """Escalation rate per task class, against the escalation band's guide lines."""
    data = escalation_by_class(frame).dropna(subset=["rate"])
    if data.empty:
        return _empty("No reported outcomes in this range")
    data = data.sort_values("rate")
    band = escalation_band()
    colors = [
        "#c2413a" if r > band.upgrade else "#2e9e5b" if r < band.downgrade else "#d9901a"
        for r in data["rate"]
    ]
    trace = {
        "type": "bar",
        "y": data["task_class"],
        "x": (data["rate"] * 100).round(2),
        "orientation": "h",
        "marker": {"color": colors},
        "customdata": data[["escalations", "outcomes"]].to_numpy(),
        "hovertemplate": "%{y}: %{x:.2f} % (%{customdata[0]:,.0f} of %{customdata[1]:,.0f})"
        "<extra></extra>",
    }
    shapes, annotations = [], []
    for value, text in _escalation_guides():
        shapes.append(
            {
                "type": "line",
                "x0": value * 100,
                "x1": value * 100,
                "y0": 0,
                "y1": 1,
                "xref": "x",
                "yref": "paper",
                "line": {"color": _MUTED, "dash": "dash", "width": 1},
            }
        )
        annotations.append(
            {
                "x": value * 100,
                "y": 1.0,
                "xref": "x",
                "yref": "paper",
                "text": text,
                "showarrow": False,
                "xanchor": "left",
                "yanchor": "bottom",
                "font": {"size": 10, "color": _MUTED},
            }
        )
    top = max(16.0, float(data["rate"].max()) * 100 * 1.1)
    return _figure(
        [trace],
        height=max(220, 28 * len(data) + 60),
        legend=False,
        margin={"l": 150, "t": 24},
        xaxis={"ticksuffix": " %", "range": [0, top]},
        shapes=shapes,
        annotations=annotations,
    )


def latency_figure(frame: pd.DataFrame) -> Figure:
    """p50 / p95 / p99 latency per model, from the merged fixed-bucket histograms."""
    data = latency_by_model(frame).dropna(subset=["p50"])
    if data.empty:
        return _empty("No reported outcomes in this range")
    traces = [
        {
            "type": "bar",
            "x": data["model"],
            "y": data[name].round(0),
            "name": name,
            "marker": {"color": color},
            "hovertemplate": "%{x} " + name + ": %{y:,.0f} ms",
        }
        for name, color in (("p50", "#7cc49a"), ("p95", "#d9901a"), ("p99", "#c2413a"))
    ]
    ticks = [50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]
    return _figure(
        traces,
        barmode="group",
        yaxis={
            "type": "log",
            "tickvals": ticks,
            "ticktext": [f"{t // 1000} s" if t >= 1000 else f"{t} ms" for t in ticks],
        },
    )


def quality_figure(frame: pd.DataFrame) -> Figure:
    """Success rate per model × task class (cell text: success rate and grader score)."""
    data = quality_by_model_class(frame).dropna(subset=["success_rate"])
    if data.empty:
        return _empty("No reported outcomes in this range")
    rates = data.pivot(index="task_class", columns="model", values="success_rate")
    scores = data.pivot(index="task_class", columns="model", values="mean_score")
    counts = data.pivot(index="task_class", columns="model", values="outcomes")
    columns = [m for m in model_order(frame) if m in rates.columns]
    rates, scores, counts = rates[columns], scores[columns], counts[columns]
    text = [
        [
            "" if pd.isna(r) else f"{r * 100:.1f} %" + ("" if pd.isna(s) else f"<br>{s:.2f}")
            for r, s in zip(rate_row, score_row, strict=True)
        ]
        for rate_row, score_row in zip(rates.to_numpy(), scores.to_numpy(), strict=True)
    ]
    trace = {
        "type": "heatmap",
        "z": (rates * 100).round(1).to_numpy(),
        "x": columns,
        "y": list(rates.index),
        "text": text,
        "texttemplate": "%{text}",
        "zmin": 80,
        "zmax": 100,
        "colorscale": [[0, "#c2413a"], [0.5, "#f0bd6a"], [0.85, "#a9dbbd"], [1, "#2e9e5b"]],
        "customdata": counts.fillna(0).to_numpy(),
        "hovertemplate": "%{y} on %{x}<br>success %{z:.1f} % of %{customdata:,.0f}<extra></extra>",
        "colorbar": {"ticksuffix": " %", "thickness": 10},
    }
    return _figure(
        [trace], height=max(260, 30 * len(rates.index) + 80), legend=False, margin={"l": 150}
    )


def quality_trend_figure(
    frame: pd.DataFrame, *, by: str = "task_class", changes: Sequence[RoutingChange] = ()
) -> Figure:
    """Mean grader score over time, one line per task class (or model): drift shows here
    even while escalations keep the success rate up."""
    if frame.empty or frame["quality_count"].sum() == 0:
        return _empty("No graded outcomes in this range")
    columns = ["quality_sum", "quality_count", "successes", "outcomes"]
    grouped = frame.groupby(["bucket", by])[columns].sum().reset_index()
    grouped["score"] = grouped["quality_sum"] / grouped["quality_count"].replace(0, np.nan)
    grouped["success"] = grouped["successes"] / grouped["outcomes"].replace(0, np.nan) * 100
    keys = sorted(grouped[by].unique())
    colors = _series_colors(frame, by, keys)
    traces = [
        {
            "type": "scatter",
            "x": part["bucket"],
            "y": part["score"].round(3),
            "customdata": part["success"].round(1),
            "name": str(key),
            "mode": "lines",
            "line": {"width": 1.8, "color": colors.get(key)},
            "hovertemplate": f"{key}<br>%{{x}}<br>score %{{y:.2f}} · success "
            "%{customdata} %<extra></extra>",
        }
        for key, part in grouped.groupby(by)
    ]
    return _figure(traces, yaxis={"title": {"text": "grader score (0–1)"}}, **_changes(changes))


def escalation_trend_figure(
    frame: pd.DataFrame, *, changes: Sequence[RoutingChange] = ()
) -> Figure:
    """Escalation rate over time against the escalation band's guide lines (one task class)."""
    if frame.empty or frame["outcomes"].sum() == 0:
        return _empty("No reported outcomes in this range")
    series = frame.groupby("bucket")[["escalations", "outcomes"]].sum()
    rate = series["escalations"] / series["outcomes"].replace(0, np.nan) * 100
    trace = {
        "type": "scatter",
        "x": series.index,
        "y": rate.round(2),
        "mode": "lines+markers",
        "name": "escalation rate",
        "line": {"color": "#d9901a", "width": 2},
        "marker": {"size": 4},
        "customdata": series[["escalations", "outcomes"]].to_numpy(),
        "hovertemplate": "%{x}<br>%{y:.2f} % (%{customdata[0]:,.0f} of "
        "%{customdata[1]:,.0f})<extra></extra>",
    }
    marks = _changes(changes)
    for value, text in _escalation_guides():
        marks["shapes"].append(
            {
                "type": "line",
                "x0": 0,
                "x1": 1,
                "xref": "paper",
                "y0": value * 100,
                "y1": value * 100,
                "yref": "y",
                "line": {"color": _MUTED, "dash": "dash", "width": 1},
            }
        )
        marks["annotations"].append(
            {
                "x": 1,
                "xref": "paper",
                "y": value * 100,
                "yref": "y",
                "text": text,
                "showarrow": False,
                "xanchor": "right",
                "yanchor": "bottom",
                "font": {"size": 10, "color": _MUTED},
            }
        )
    top = max(16.0, float(rate.max(skipna=True) or 0) * 1.1)
    return _figure([trace], legend=False, yaxis={"ticksuffix": " %", "range": [0, top]}, **marks)


def quality_per_dollar_figure(frame: pd.DataFrame) -> Figure:
    """Successful requests per dollar, per task class."""
    data = quality_per_dollar_by_class(frame).dropna(subset=["per_dollar"])
    if data.empty:
        return _empty("No reported outcomes in this range")
    data = data.sort_values("per_dollar")
    trace = {
        "type": "bar",
        "y": data["task_class"],
        "x": data["per_dollar"].round(1),
        "orientation": "h",
        "marker": {"color": "#2f6fde"},
        "customdata": (data["success_rate"] * 100).round(1),
        "hovertemplate": "%{y}: %{x:,.0f} successful requests per $1 "
        "(success %{customdata} %)<extra></extra>",
    }
    return _figure(
        [trace],
        height=max(220, 28 * len(data) + 60),
        legend=False,
        margin={"l": 150},
        xaxis={"type": "log", "title": {"text": "successful requests per $1 (log)"}},
    )


def pareto_figure(frame: pd.DataFrame) -> Figure:
    """Cost per 1,000 requests against success rate, per model × task class, with the
    Pareto frontier (nothing is both cheaper and better than a point on it)."""
    data = quality_by_model_class(frame).dropna(subset=["success_rate", "cost_per_1k"])
    data = data[data["cost_per_1k"] > 0]
    if data.empty:
        return _empty("No reported outcomes in this range")
    tiers = frame[["model", "tier"]].drop_duplicates().set_index("model")["tier"]
    data = data.assign(tier=data["model"].map(tiers))
    traces: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "x": part["cost_per_1k"].round(4),
            "y": (part["success_rate"] * 100).round(2),
            "mode": "markers",
            "name": f"tier {tier}",
            "marker": {
                "color": TIER_COLORS.get(int(tier)),
                "size": np.clip(np.sqrt(part["outcomes"].to_numpy()) / 4, 6, 22),
                "opacity": 0.8,
                "line": {"width": 1, "color": "#fff"},
            },
            "text": part["model"] + " · " + part["task_class"],
            "hovertemplate": "%{text}<br>$%{x:,.3f} per 1k · %{y:.1f} % success<extra></extra>",
        }
        for tier, part in data.groupby("tier")
    ]
    front = pareto_front(data, cost="cost_per_1k", quality="success_rate")
    traces.append(
        {
            "type": "scatter",
            "x": front["cost_per_1k"].round(4),
            "y": (front["success_rate"] * 100).round(2),
            "mode": "lines",
            "name": "Pareto frontier",
            "hoverinfo": "skip",
            "line": {"color": "#1d2733", "dash": "dot", "shape": "hv", "width": 1.5},
        }
    )
    return _figure(
        traces,
        xaxis={
            "type": "log",
            "tickprefix": "$",
            "title": {"text": "cost per 1,000 requests (log)"},
        },
        yaxis={"ticksuffix": " %", "title": {"text": "success"}},
    )


def volume_figure(frame: pd.DataFrame, *, changes: Sequence[RoutingChange] = ()) -> Figure:
    """Decisions per bucket, stacked by tier served."""
    if frame.empty or frame["decisions"].sum() == 0:
        return _empty()
    pivot = frame.pivot_table(
        index="bucket", columns="tier", values="decisions", aggfunc="sum", fill_value=0
    )
    traces = [
        {
            "type": "bar",
            "x": pivot.index,
            "y": pivot[tier],
            "name": f"tier {tier}",
            "marker": {"color": TIER_COLORS.get(tier)},
            "hovertemplate": "%{x}<br>%{y:,.0f} decisions",
        }
        for tier in sorted(pivot.columns)
    ]
    return _figure(traces, barmode="stack", bargap=0.15, **_changes(changes))


def budget_figure(burn: BudgetBurn, *, now: datetime) -> Figure:
    """A budget's cumulative spend this period, its limits and the projected burn."""
    traces: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "x": burn.times,
            "y": [round(v, 2) for v in burn.cumulative],
            "name": "spent",
            "mode": "lines",
            "line": {"color": "#2f6fde", "width": 2.5},
            "fill": "tozeroy",
            "fillcolor": "rgba(47,111,222,0.10)",
            "hovertemplate": "%{x}<br>$%{y:,.2f}<extra></extra>",
        }
    ]
    if burn.rate_per_day > 0:
        end = burn.exhaustion_at or burn.period_end
        days = max((end - now).total_seconds() / 86400, 0)
        traces.append(
            {
                "type": "scatter",
                "x": [now, end],
                "y": [
                    round(burn.spent_usd, 2),
                    round(burn.spent_usd + burn.rate_per_day * days, 2),
                ],
                "name": "projected",
                "mode": "lines",
                "line": {"color": _MUTED, "dash": "dash"},
                "hovertemplate": "%{x}<br>$%{y:,.2f} projected<extra></extra>",
            }
        )
    shapes, annotations = [], []
    for value, color, text in (
        (burn.limit_usd, "#c2413a", "limit"),
        (burn.soft_limit_usd, "#d9901a", "soft limit"),
    ):
        shapes.append(
            {
                "type": "line",
                "x0": burn.period_start,
                "x1": burn.period_end,
                "y0": value,
                "y1": value,
                "xref": "x",
                "yref": "y",
                "line": {"color": color, "dash": "dot", "width": 1.2},
            }
        )
        annotations.append(
            {
                "x": burn.period_start,
                "y": value,
                "xref": "x",
                "yref": "y",
                "text": f"{text} ${value:,.0f}",
                "showarrow": False,
                "xanchor": "left",
                "yanchor": "bottom",
                "font": {"size": 10, "color": color},
            }
        )
    peak = max(burn.limit_usd, burn.cumulative[-1] if burn.cumulative else 0.0)
    return _figure(
        traces,
        height=200,
        legend=False,
        margin={"l": 48, "r": 8, "t": 8, "b": 28},
        xaxis={"range": [burn.period_start, burn.period_end + timedelta(minutes=1)]},
        yaxis={"tickprefix": "$", "range": [0, peak * 1.1]},
        shapes=shapes,
        annotations=annotations,
    )


def figure_json(fig: Figure) -> str:
    """The figure as JSON safe to place inside a <script type="application/json">."""
    return str(pio.to_json(fig, validate=False)).replace("</", "<\\/")
