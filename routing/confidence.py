"""What a decision's ``confidence`` means, defined once (plain Python, no Django).

``confidence`` is the probability that the chosen model succeeds on the request. Without a
learned router for the class it is the model's observed *graded* success rate on the task
class, shrunk towards a prior when there is little data:

- A *graded* trial of model M on class C is a live outcome of a decision routed to M whose
  first attempt was M and which carries a quality score or a validation verdict (see
  :func:`graded_success`), or a sweep sample that replayed a request of C on M and graded
  the answer.
- The estimate is the mean of a Beta posterior, in two levels: the class's pooled rate on
  M's tier (prior: the tier default, :data:`PRIOR_BY_TIER`) is the prior of the model's
  own rate; each prior weighs :data:`PRIOR_STRENGTH` pseudo-trials. With no data at all
  the confidence is the tier default; with many trials it is the observed rate.

The counts are gathered off the hot path (``evaluation.calibration``, on a Celery beat
schedule) and the estimates are computed when the in-memory snapshot is rebuilt
(``routing.snapshot``); :func:`routing.engine.decide` only looks them up.

This module also holds the measures of calibration (Brier score, reliability bins).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

# Prior success probability by tier when nothing has been observed.
PRIOR_BY_TIER: Final[Mapping[int, float]] = {1: 0.7, 2: 0.8, 3: 0.9}
# How many pseudo-trials each prior weighs.
PRIOR_STRENGTH: Final = 8.0
# A live outcome's quality score at or above this counts as a success.
QUALITY_PASS: Final = 0.5
# validation keys whose boolean value false makes the attempt a failure.
VALIDATION_KEYS: Final = ("valid", "schema_valid")


@dataclass(frozen=True, slots=True)
class SuccessCount:
    """Graded trials of one model on one task class."""

    successes: int
    trials: int


def graded_success(
    *,
    routed_model: str,
    attempts: Sequence[Mapping[str, Any]],
    quality_score: float | None,
    validation: Mapping[str, Any] | None,
) -> bool | None:
    """Did the routed model succeed on this request? ``None`` when the outcome is not graded
    (no quality score and no validation verdict) or the first attempt was another model.

    Success: the first attempt (the routed model) ended ``ok``, its quality score (when
    given) is at least :data:`QUALITY_PASS`, and no validation verdict says false. An
    escalated request is a failure of the routed model. The SQL in
    ``evaluation.calibration`` is this same rule (a test holds them together)."""
    if not attempts or attempts[0].get("model") != routed_model:
        return None
    verdicts = [validation.get(k) for k in VALIDATION_KEYS] if validation else []
    verdicts = [v for v in verdicts if isinstance(v, bool)]
    if quality_score is None and not verdicts:
        return None
    if attempts[0].get("status") != "ok":
        return False
    if quality_score is not None and quality_score < QUALITY_PASS:
        return False
    return all(verdicts)


def beta_mean(successes: float, trials: float, prior_mean: float, strength: float) -> float:
    """Posterior mean of a success rate with a Beta(strength·p, strength·(1−p)) prior."""
    return (successes + strength * prior_mean) / (trials + strength)


def success_probabilities(
    counts: Mapping[tuple[str, str], SuccessCount],
    tiers: Mapping[str, int],
    task_classes: Iterable[str],
    *,
    strength: float = PRIOR_STRENGTH,
) -> dict[tuple[str, str], float]:
    """The calibrated success probability of every (model, task class) pair.

    ``counts`` is keyed (model slug, task class slug); ``tiers`` maps every model of the
    registry to its tier. Pairs of unknown models are left out."""
    classes = list(task_classes)
    pooled: dict[tuple[str, int], list[int]] = {}
    for (model, task_class), count in counts.items():
        tier = tiers.get(model)
        if tier is None:
            continue
        acc = pooled.setdefault((task_class, tier), [0, 0])
        acc[0] += count.successes
        acc[1] += count.trials
    out: dict[tuple[str, str], float] = {}
    for task_class in classes:
        for model, tier in tiers.items():
            default = PRIOR_BY_TIER.get(tier, 0.7)
            s, n = pooled.get((task_class, tier), (0, 0))
            prior = beta_mean(s, n, default, strength)
            own = counts.get((model, task_class))
            if own is None:
                out[(model, task_class)] = round(prior, 4)
            else:
                out[(model, task_class)] = round(
                    beta_mean(own.successes, own.trials, prior, strength), 4
                )
    return out


# --------------------------------------------------------------------------------------------
# Measuring calibration
# --------------------------------------------------------------------------------------------


def brier_score(predicted: Sequence[float], observed: Sequence[bool]) -> float:
    """Mean squared error of the predicted probabilities (0 best; 0.25 for a coin flip)."""
    if len(predicted) != len(observed):
        raise ValueError("predicted and observed differ in length")
    if not predicted:
        return math.nan
    return sum((p - float(o)) ** 2 for p, o in zip(predicted, observed, strict=True)) / len(
        predicted
    )


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    mean_predicted: float
    observed_rate: float


def reliability_bins(
    predicted: Sequence[float], observed: Sequence[bool], bins: int = 10
) -> list[ReliabilityBin]:
    """Equal-width bins of predicted probability with the observed success rate in each
    (empty bins left out): the points of a reliability curve."""
    sums: list[list[float]] = [[0.0, 0.0, 0.0] for _ in range(bins)]
    for p, o in zip(predicted, observed, strict=True):
        i = min(bins - 1, max(0, int(p * bins)))
        sums[i][0] += 1
        sums[i][1] += p
        sums[i][2] += float(o)
    out = []
    for i, (n, sp, so) in enumerate(sums):
        if n:
            out.append(ReliabilityBin(i / bins, (i + 1) / bins, int(n), sp / n, so / n))
    return out


def expected_calibration_error(bins: Sequence[ReliabilityBin]) -> float:
    """Count-weighted mean gap between predicted and observed rate over the bins."""
    total = sum(b.count for b in bins)
    if not total:
        return math.nan
    return sum(b.count * abs(b.mean_predicted - b.observed_rate) for b in bins) / total
