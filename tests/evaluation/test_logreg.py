"""evaluation.logreg: the numpy logistic regression recovers a known model from generated
data and its metrics are right."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from evaluation.logreg import (
    column_scales,
    design,
    heldout_metrics,
    logistic_fit,
    predict_proba,
)


def test_fit_recovers_known_coefficients() -> None:
    rng = random.Random(4)
    truth = {0: 2.0, 1: -1.5, 2: 0.0}
    intercept = 0.3
    rows, labels = [], []
    for _ in range(4000):
        x = {i: rng.gauss(0, 1) for i in truth}
        z = intercept + sum(truth[i] * v for i, v in x.items())
        rows.append(x)
        labels.append(rng.random() < 1 / (1 + math.exp(-z)))
    w, b = logistic_fit(design(rows, 3), np.asarray(labels, dtype=float), l2=1e-6)
    assert b == pytest.approx(intercept, abs=0.12)
    for i, value in truth.items():
        assert w[i] == pytest.approx(value, abs=0.15)
    # A strong penalty shrinks towards zero.
    w_small, _ = logistic_fit(design(rows, 3), np.asarray(labels, dtype=float), l2=10.0)
    assert abs(w_small[0]) < 0.2 < abs(w[0])


def test_metrics() -> None:
    m = heldout_metrics([0.9, 0.8, 0.2, 0.1], [True, True, False, False], base_rate=0.5)
    assert m["auc"] == 1.0 and m["brier_base"] == 0.25
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    assert m["n"] == 4 and m["observed_rate"] == 0.5
    ties = heldout_metrics([0.5, 0.5], [True, False], base_rate=0.5)
    assert ties["auc"] == 0.5
    assert heldout_metrics([0.5], [True], base_rate=0.5)["auc"] is None


def test_standardised_fit_gives_weights_for_raw_values() -> None:
    rng = random.Random(5)
    # Column 1 is a dense feature on a tiny scale (0–0.01), column 0 a hashed bucket.
    rows = [{0: rng.choice([0.0, 1.0]), 1: rng.random() / 100} for _ in range(3000)]
    labels = np.asarray(
        [rng.random() < 1 / (1 + math.exp(-(r[0] - 1 + 300 * r[1]))) for r in rows], dtype=float
    )
    scale = column_scales(rows, 1, 2)
    assert scale[0] == 1.0 and scale[1] == pytest.approx(1 / np.std([r[1] for r in rows]))
    w, b = logistic_fit(design(rows, 2, scale), labels, l2=1e-6)
    raw = w * scale  # the stored weights, for the raw feature values
    assert raw[1] == pytest.approx(300, rel=0.2) and raw[0] == pytest.approx(1, abs=0.2)
    # The fit on the scaled design predicts what the raw weights predict on raw values.
    assert np.allclose(
        predict_proba(design(rows, 2, scale), w, b), predict_proba(design(rows, 2), raw, b)
    )
    # Unstandardised, the same penalty all but silences the tiny-scale feature.
    w_raw, _ = logistic_fit(design(rows, 2), labels, l2=1e-2)
    w_std, _ = logistic_fit(design(rows, 2, scale), labels, l2=1e-2)
    assert abs(w_raw[1]) < 0.5 * abs(w_std[1] * scale[1])
