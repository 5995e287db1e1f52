"""routing.confidence: the graded-success rule, the Beta estimate, calibration measures."""

from __future__ import annotations

import random

import pytest

from routing.confidence import (
    PRIOR_BY_TIER,
    PRIOR_STRENGTH,
    SuccessCount,
    beta_mean,
    brier_score,
    expected_calibration_error,
    graded_success,
    reliability_bins,
    success_probabilities,
)

OK = {"model": "m", "status": "ok"}


@pytest.mark.parametrize(
    ("attempts", "quality", "validation", "expected"),
    [
        ([OK], 0.9, {}, True),
        ([OK], 0.49, {}, False),  # a poor grade
        ([OK], None, {}, None),  # not graded
        ([OK], None, {"note": "fine"}, None),  # no boolean verdict: not graded
        ([OK], None, {"valid": True}, True),
        ([OK], None, {"schema_valid": False}, False),
        ([OK], 0.9, {"valid": False}, False),
        ([OK], None, {"valid": "false"}, None),  # a string is not a verdict
        ([{"model": "m", "status": "invalid_output"}, {"model": "n", "status": "ok"}], 0.9, {},
         False),  # escalated: the routed model failed
        ([{"model": "other", "status": "ok"}], 0.9, {}, None),  # the caller used another model
        ([], 0.9, {}, None),
    ],
)  # fmt: skip
def test_graded_success_rule(
    attempts: list[dict[str, str]], quality: float | None, validation: dict[str, object],
    expected: bool | None,
) -> None:  # fmt: skip
    assert (
        graded_success(
            routed_model="m", attempts=attempts, quality_score=quality, validation=validation
        )
        is expected
    )


def test_no_data_is_the_tier_prior_and_much_data_is_the_observed_rate() -> None:
    tiers = {"small": 1, "mid": 2, "big": 3}
    empty = success_probabilities({}, tiers, ["c"])
    assert empty == {("small", "c"): 0.7, ("mid", "c"): 0.8, ("big", "c"): 0.9}
    many = success_probabilities({("small", "c"): SuccessCount(5500, 10000)}, tiers, ["c"])
    assert many[("small", "c")] == pytest.approx(0.55, abs=0.002)
    # Others untouched: the pooled evidence is per tier.
    assert many[("mid", "c")] == 0.8


def test_little_data_is_shrunk_towards_the_tier_rate_of_the_class() -> None:
    tiers = {"a": 1, "b": 1, "c": 1}
    counts = {("a", "k"): SuccessCount(300, 1000), ("b", "k"): SuccessCount(1, 1)}
    est = success_probabilities(counts, tiers, ["k"])
    pooled = beta_mean(301, 1001, PRIOR_BY_TIER[1], PRIOR_STRENGTH)
    # One success out of one trial does not make b a sure thing: it stays near the class's
    # tier rate (about 0.3), far below the naive 1.0.
    assert est[("b", "k")] == pytest.approx(beta_mean(1, 1, pooled, PRIOR_STRENGTH), abs=1e-4)
    assert est[("b", "k")] < 0.45
    assert est[("c", "k")] == pytest.approx(pooled, abs=1e-4)  # unseen: the tier rate


def test_estimates_converge_to_the_true_rates_on_generated_trials() -> None:
    rng = random.Random(3)
    truth = {("a", "x"): 0.55, ("b", "x"): 0.92, ("a", "y"): 0.8}
    counts = {}
    for pair, p in truth.items():
        wins = sum(rng.random() < p for _ in range(2000))
        counts[pair] = SuccessCount(wins, 2000)
    est = success_probabilities(counts, {"a": 1, "b": 2}, ["x", "y"])
    for pair, p in truth.items():
        assert est[pair] == pytest.approx(p, abs=0.03), pair


def test_brier_and_reliability() -> None:
    assert brier_score([1.0, 0.0], [True, False]) == 0.0
    assert brier_score([0.5, 0.5], [True, False]) == 0.25
    with pytest.raises(ValueError, match="length"):
        brier_score([0.5], [])
    bins = reliability_bins([0.05, 0.15, 0.95, 0.95], [False, True, True, False], bins=10)
    assert [(b.low, b.count) for b in bins] == [(0.0, 1), (0.1, 1), (0.9, 2)]
    assert bins[2].observed_rate == 0.5 and bins[2].mean_predicted == pytest.approx(0.95)
    assert expected_calibration_error(bins) == pytest.approx((0.05 + 0.85 + 2 * 0.45) / 4)
