"""The calibration page: reliability curve, Brier score and the learned routers, from the
generated demo traffic; the summary's SQL agrees with the Python rule."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import pytest
from django.test import Client

from controlplane.demo import demo_registry_load
from evaluation import charts
from evaluation.selectors import calibration_summary
from routing.confidence import brier_score, graded_success
from telemetry.demo_traffic import demo_traffic_load
from telemetry.models import DecisionOutcome, DecisionRecord
from tests.conftest import client_for


@pytest.fixture
def traffic(db: Any) -> None:
    demo_registry_load()
    demo_traffic_load(decisions=1500, days=3, seed=5)


def test_summary_matches_the_python_rule(traffic: None) -> None:
    rows = calibration_summary(days=14)
    assert rows[0].label == "all"
    confidence = dict(DecisionRecord.objects.values_list("id", "confidence"))
    pairs = []
    for o in DecisionOutcome.objects.all():
        ok = graded_success(
            routed_model=o.routed_model,
            attempts=o.attempts,
            quality_score=o.quality_score,
            validation=o.validation,
        )
        if ok is not None:
            pairs.append((o.task_class, confidence[o.decision_id], ok))
    overall = rows[0]
    assert overall.n == len(pairs) > 300
    assert overall.brier == pytest.approx(
        brier_score([c for _, c, _ in pairs], [ok for *_, ok in pairs])
    )
    assert overall.observed_rate == pytest.approx(sum(ok for *_, ok in pairs) / len(pairs))
    assert sum(count for *_, count in overall.bins) == overall.n
    assert {r.label for r in rows[1:]} == {c for c, _, _ in pairs}
    # The demo's confidence is roughly calibrated.
    print(f"demo: brier {overall.brier:.4f} base {overall.brier_base:.4f} ece {overall.ece:.4f}")
    assert overall.ece < 0.08


def test_page_shows_the_reliability_curve(
    traffic: None, django_assert_max_num_queries: Any
) -> None:
    client = client_for("Viewer")
    with django_assert_max_num_queries(12):
        response = client.get("/calibration/?days=7")
    assert response.status_code == 200
    html = response.content.decode()
    overall = calibration_summary(days=7)[0]
    assert f'data-testid="graded">{overall.n}<' in html
    assert f"{overall.brier:.4f}" in html
    assert 'id="chart-reliability"' in html and "multi-step-reasoning" in html
    # Nonsense windows fall back to 14 days rather than failing.
    assert client.get("/calibration/?days=%00").status_code == 200
    assert client.get("/calibration/?days=99999").status_code == 200


def test_empty_page_and_roles(db: Any) -> None:
    assert Client().get("/calibration/").status_code == 302
    response = client_for("Viewer").get("/calibration/")
    assert response.status_code == 200
    assert b'data-testid="no-graded"' in response.content
    assert b"No learned routers trained yet" in response.content


def test_reliability_figure_is_a_valid_plotly_figure() -> None:
    spec = charts.reliability_figure([("all", [(0.55, 0.5, 10), (0.95, 0.97, 300)]), ("x", [])])
    assert spec is not None
    figure = go.Figure(spec)  # validates every property
    assert [t.name for t in figure.data] == ["perfectly calibrated", "all"]
    assert charts.reliability_figure([("all", [])]) is None
