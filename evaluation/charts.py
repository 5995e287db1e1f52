"""Plotly figures for the evidence page: one function per chart, built from selector data."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from django.conf import settings

_LAYOUT: dict[str, Any] = {
    "margin": {"l": 50, "r": 20, "t": 40, "b": 40},
    "height": 300,
    "paper_bgcolor": "white",
    "plot_bgcolor": "white",
    "font": {"size": 12},
}


def _as_json(figure: go.Figure) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(figure.to_json())
    return data


def success_rate_chart(evidence: Mapping[str, Any]) -> dict[str, Any] | None:
    """Candidate success rate with its 95 % interval, the primary's rate and the target."""
    if "success_rate" not in evidence:
        return None
    rate = float(evidence["success_rate"])
    names = [f"{evidence['to_model']} (candidate)"]
    values = [rate]
    plus = [float(evidence["interval_high"]) - rate]
    minus = [rate - float(evidence["interval_low"])]
    if evidence.get("primary_success_rate") is not None:
        names.append(f"{evidence['from_model']} (current)")
        values.append(float(evidence["primary_success_rate"]))
        plus.append(0.0)
        minus.append(0.0)
    figure = go.Figure(
        go.Bar(
            x=names,
            y=values,
            marker_color=["#2e9e5b", "#c2413a"][: len(names)],
            error_y={"type": "data", "array": plus, "arrayminus": minus, "visible": True},
            text=[f"{v:.1%}" for v in values],
            textposition="inside",
        )
    )
    target = float(evidence.get("quality_target", 0))
    figure.add_hline(
        y=target, line_dash="dash", line_color="#2f6fde", annotation_text=f"target {target:.0%}"
    )
    figure.update_layout(
        **_LAYOUT, title="Success rate (95 % Wilson interval)", yaxis={"range": [0, 1.05]}
    )
    return _as_json(figure)


def latency_chart(latencies: Mapping[str, Sequence[float]], evidence: Mapping[str, Any]) -> Any:
    if not any(latencies.values()):
        return None
    figure = go.Figure()
    labels = {"candidate": evidence.get("to_model", "candidate")}
    labels["primary"] = evidence.get("from_model", "primary")
    for key, color in (("candidate", "#2e9e5b"), ("primary", "#c2413a")):
        values = list(latencies.get(key, []))
        if values:
            figure.add_trace(go.Box(y=values, name=str(labels[key]), marker_color=color))
    figure.update_layout(**_LAYOUT, title="Latency per request (ms)", showlegend=False)
    return _as_json(figure)


def escalation_chart(evidence: Mapping[str, Any]) -> dict[str, Any] | None:
    if "escalation_rate" not in evidence:
        return None
    rate = float(evidence["escalation_rate"])
    figure = go.Figure(
        go.Bar(
            x=[evidence["task_class"]],
            y=[rate],
            marker_color="#d9901a",
            error_y={
                "type": "data",
                "array": [float(evidence["interval_high"]) - rate],
                "arrayminus": [rate - float(evidence["interval_low"])],
            },
        )
    )
    threshold = float(evidence.get("threshold", settings.SWITCHYARD_ESCALATION_UPGRADE_RATE))
    figure.add_hline(y=threshold, line_dash="dash", annotation_text=f"threshold {threshold:.0%}")
    figure.update_layout(**_LAYOUT, title="Escalation rate (95 % interval)")
    return _as_json(figure)


def reliability_figure(
    series: Sequence[tuple[str, Sequence[tuple[float, float, int]]]],
) -> dict[str, Any] | None:
    """Reliability curve: per series, the observed success rate against the mean predicted
    probability of each confidence bin (marker size ~ decisions), with the diagonal a
    perfectly calibrated predictor would follow. A plain figure structure (as the
    dashboard charts, telemetry/figures.py), drawn by charts.js."""
    if not any(points for _, points in series):
        return None
    palette = ("#2f6fde", "#2e9e5b", "#d9901a", "#c2413a", "#8e5bd6", "#1aa3a3")
    traces: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines",
            "x": [0, 1],
            "y": [0, 1],
            "name": "perfectly calibrated",
            "line": {"color": "#9aa5b1", "dash": "dash", "width": 1},
            "hoverinfo": "skip",
        }
    ]
    for i, (name, points) in enumerate(series):
        if not points:
            continue
        largest = max(count for *_, count in points)
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers" if i == 0 else "markers",
                "name": name,
                "x": [round(p, 4) for p, _, _ in points],
                "y": [round(o, 4) for _, o, _ in points],
                "text": [f"{count} decisions" for *_, count in points],
                "marker": {
                    "size": [6 + 14 * (count / largest) ** 0.5 for *_, count in points],
                    "color": palette[i % len(palette)],
                },
                "line": {"color": palette[i % len(palette)], "width": 1.5},
                "hovertemplate": "confidence %{x:.2f} → observed %{y:.2f} (%{text})"
                "<extra>%{fullData.name}</extra>",
            }
        )
    # Zoom to where the decisions are (confidence is mostly high), diagonal kept.
    lowest = min(min(p, o) for _, points in series for p, o, _ in points)
    low = max(0.0, math.floor(lowest * 10) / 10 - 0.05)
    return {
        "data": traces,
        "layout": {
            **_LAYOUT,
            "height": 360,
            "title": {"text": "Reliability: observed success against confidence"},
            "xaxis": {"title": {"text": "confidence (predicted success)"}, "range": [low, 1.02]},
            "yaxis": {"title": {"text": "observed success rate"}, "range": [low, 1.02]},
            "legend": {"orientation": "h", "y": -0.3},
        },
    }


def cost_quality_figure(
    curve: Sequence[Mapping[str, float]], threshold: float
) -> dict[str, Any] | None:
    """A learned router's cost–quality curve: for each threshold, the mean relative cost of
    the models it would choose (the dearest route model is 1) against their mean predicted
    success, on the held-out requests of its training; the router's current threshold is
    marked. A plain figure structure, drawn like the dashboard charts."""
    points = sorted(curve, key=lambda p: p["threshold"])
    if not points:
        return None
    current = min(points, key=lambda p: abs(p["threshold"] - threshold))
    hover = (
        "threshold %{text}<br>relative cost %{x:.3f}<br>expected success %{y:.3f}"
        "<br>on the strongest model %{customdata:.0%}<extra></extra>"
    )
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "thresholds 0 → 1",
                "x": [round(p["mean_cost"], 4) for p in points],
                "y": [round(p["expected_success"], 4) for p in points],
                "text": [f"{p['threshold']:.2f}" for p in points],
                "customdata": [p["strongest_share"] for p in points],
                "marker": {"size": 5, "color": "#2f6fde"},
                "line": {"color": "#2f6fde", "width": 1.5},
                "hovertemplate": hover,
            },
            {
                "type": "scatter",
                "mode": "markers+text",
                "name": f"current threshold {threshold:.2f}",
                "x": [round(current["mean_cost"], 4)],
                "y": [round(current["expected_success"], 4)],
                "text": [f"threshold {threshold:.2f}"],
                "textposition": "bottom right",
                "customdata": [current["strongest_share"]],
                "marker": {"size": 14, "color": "#c2413a", "symbol": "star"},
                "hovertemplate": hover,
            },
        ],
        "layout": {
            **_LAYOUT,
            "height": 340,
            "title": {"text": "Cost and quality by threshold (held out)"},
            "xaxis": {"title": {"text": "mean relative cost (dearest route model = 1)"}},
            "yaxis": {"title": {"text": "expected success of the chosen model"}},
            "legend": {"orientation": "h", "y": -0.25},
        },
    }
