"""L2-penalised logistic regression on sparse hashed features, and its held-out metrics
(numpy only: no Django, so the benchmarks use the very same fit as the product).

``logistic_fit`` minimises mean log loss + l2/2·|w|² (the intercept is not penalised) with
L-BFGS and an Armijo line search on a sparse design matrix (``design``: the feature dicts of
``routing.learned.request_features``). Rows may carry counts (``trials`` requests with the
same features, ``y`` of them successes: :func:`aggregate` folds repeated requests into one
row), which gives exactly the fit on the individual requests at a fraction of the cost.

``l2_choose`` picks the penalty by grouped cross-validation, each fold's fits warm-started
from the previous (stronger) penalty's solution; above :data:`CV_MAX_ROWS` rows it
cross-validates on a stable subsample and scales the chosen penalty to the full sample
(same prior: ``l2 · n`` is held constant), so training time stays bounded on big logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from routing.confidence import brier_score, expected_calibration_error, reliability_bins


@dataclass(frozen=True, slots=True)
class _Design:
    rows: np.ndarray  # row index of every stored value
    cols: np.ndarray
    vals: np.ndarray
    n: int
    width: int


def design(
    features: Sequence[dict[int, float]], width: int, scale: np.ndarray | None = None
) -> _Design:
    """The sparse matrix of these feature dicts; ``scale``: a multiplier per column
    (:func:`column_scales`)."""
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for i, f in enumerate(features):
        rows.extend([i] * len(f))
        cols.extend(f.keys())
        vals.extend(f.values())
    col = np.asarray(cols, dtype=np.int64)
    val = np.asarray(vals, dtype=np.float64)
    if scale is not None:
        val = val * scale[col]
    return _Design(np.asarray(rows, dtype=np.int64), col, val, len(features), width)


def column_scales(features: Sequence[dict[int, float]], start: int, width: int) -> np.ndarray:
    """A multiplier per column that gives the dense columns ``[start, width)`` unit
    standard deviation over these rows (1 for the others, and for a constant column).
    Fit on the scaled columns, multiply the weights by the same array: the weights for the
    raw values, under a penalty that treats every dense feature alike."""
    scale = np.ones(width)
    n = len(features)
    if n < 2:
        return scale
    total = np.zeros(width - start)
    squares = np.zeros(width - start)
    for f in features:
        for i, v in f.items():
            if i >= start:
                total[i - start] += v
                squares[i - start] += v * v
    var = squares / n - (total / n) ** 2
    sd = np.sqrt(np.clip(var, 0.0, None))
    scale[start:] = np.where(sd > 1e-9, 1.0 / np.maximum(sd, 1e-9), 1.0)
    return scale


def _scores(x: _Design, w: np.ndarray, b: float) -> np.ndarray:
    return np.bincount(x.rows, weights=x.vals * w[x.cols], minlength=x.n) + b


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def aggregate(
    features: Sequence[dict[int, float]], success: Sequence[bool]
) -> tuple[list[dict[int, float]], np.ndarray, np.ndarray, list[int]]:
    """Fold rows that share one features object (the same request seen again: the trainer
    reuses the features of identical requests) into one row with counts. Returns the
    distinct features, successes and trials per row, and the first input index of each."""
    rows: dict[int, int] = {}
    out: list[dict[int, float]] = []
    first: list[int] = []
    wins: list[int] = []
    trials: list[int] = []
    for i, (f, ok) in enumerate(zip(features, success, strict=True)):
        row = rows.get(id(f))
        if row is None:
            row = rows[id(f)] = len(out)
            out.append(f)
            first.append(i)
            wins.append(0)
            trials.append(0)
        wins[row] += bool(ok)
        trials[row] += 1
    return (
        out,
        np.asarray(wins, dtype=np.float64),
        np.asarray(trials, dtype=np.float64),
        first,
    )


def logistic_fit(
    x: _Design,
    y: np.ndarray,
    *,
    l2: float,
    trials: np.ndarray | None = None,
    init: tuple[np.ndarray, float] | None = None,
    max_iter: int = 300,
    tol: float = 1e-7,
) -> tuple[np.ndarray, float]:
    """Minimise mean log loss + l2/2·|w|² (intercept not penalised). Returns (w, b).

    ``y``: the successes of each row (0/1, or a count with ``trials``: the requests the row
    stands for; the mean is over requests). ``init``: a starting point (a warm start)."""
    width = x.width
    theta = np.zeros(width + 1)
    counts = np.ones(x.n) if trials is None else trials
    total = float(counts.sum()) or 1.0
    if init is not None:
        theta[:-1] = init[0]
        theta[-1] = init[1]
    else:
        rate = float(np.clip(y.sum() / total, 1e-3, 1 - 1e-3))
        theta[-1] = math.log(rate / (1 - rate))

    def loss_grad(t: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = t[:-1], t[-1]
        z = _scores(x, w, b)
        loss = float(np.sum(counts * np.logaddexp(0.0, z) - y * z) / total + 0.5 * l2 * (w @ w))
        r = (counts * _sigmoid(z) - y) / total
        grad = np.empty_like(t)
        grad[:-1] = np.bincount(x.cols, weights=x.vals * r[x.rows], minlength=width) + l2 * w
        grad[-1] = r.sum()
        return loss, grad

    memory: list[tuple[np.ndarray, np.ndarray, float]] = []
    loss, grad = loss_grad(theta)
    for _ in range(max_iter):
        # Two-loop recursion: direction = -H·grad.
        q = grad.copy()
        alphas = []
        for s, yv, rho in reversed(memory):
            a = rho * (s @ q)
            alphas.append(a)
            q -= a * yv
        if memory:
            s, yv, _ = memory[-1]
            q *= (s @ yv) / (yv @ yv)
        for (s, yv, rho), a in zip(memory, reversed(alphas), strict=True):
            bcoef = rho * (yv @ q)
            q += s * (a - bcoef)
        direction = -q
        slope = grad @ direction
        if slope >= 0:  # not a descent direction: restart from the gradient
            memory.clear()
            direction = -grad
            slope = -(grad @ grad)
        step = 1.0
        while True:
            candidate = theta + step * direction
            new_loss, new_grad = loss_grad(candidate)
            if new_loss <= loss + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s_vec = candidate - theta
        y_vec = new_grad - grad
        sy = s_vec @ y_vec
        if sy > 1e-12:
            memory.append((s_vec, y_vec, 1.0 / sy))
            if len(memory) > 10:
                memory.pop(0)
        converged = abs(loss - new_loss) <= tol * max(1.0, abs(loss))
        theta, loss, grad = candidate, new_loss, new_grad
        if converged or float(np.max(np.abs(grad))) < 1e-6:
            break
    return theta[:-1], float(theta[-1])


def _auc(p: Sequence[float], y: Sequence[bool]) -> float | None:
    pos = [v for v, o in zip(p, y, strict=True) if o]
    neg = [v for v, o in zip(p, y, strict=True) if not o]
    if not pos or not neg:
        return None
    order = np.argsort(np.asarray(p, dtype=float), kind="mergesort")
    ranks = np.empty(len(p))
    values = np.asarray(p, dtype=float)[order]
    i = 0
    while i < len(values):  # average ranks of ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    flags = np.asarray(y, dtype=bool)
    return float((ranks[flags].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _log_loss(p: Sequence[float], y: Sequence[bool]) -> float:
    eps = 1e-6
    terms = [math.log(max(eps, v if o else 1 - v)) for v, o in zip(p, y, strict=True)]
    return float(-np.mean(terms))


def heldout_metrics(p: list[float], y: list[bool], base_rate: float) -> dict[str, Any]:
    return {
        "n": len(y),
        "base_rate": round(base_rate, 4),
        "observed_rate": round(sum(y) / len(y), 4) if y else None,
        "brier": round(brier_score(p, y), 5) if y else None,
        "brier_base": round(brier_score([base_rate] * len(y), y), 5) if y else None,
        "log_loss": round(_log_loss(p, y), 5) if y else None,
        "auc": (round(a, 4) if (a := _auc(p, y)) is not None else None),
        "ece": round(expected_calibration_error(reliability_bins(p, y)), 4) if y else None,
        "reliability": [
            [round(b.mean_predicted, 4), round(b.observed_rate, 4), b.count]
            for b in reliability_bins(p, y)
        ],
    }


# The penalties cross-validation chooses from (mean log loss, grouped folds).
L2_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
# Above this many (distinct) rows the penalty is chosen on a stable subsample of this size.
CV_MAX_ROWS = 12_000


def predict_proba(x: _Design, w: np.ndarray, b: float) -> np.ndarray:
    return _sigmoid(_scores(x, w, b))


def group_folds(groups: Sequence[str], k: int) -> list[int]:
    """Fold of every example: whole groups per fold (sorted, round-robin), so an example's
    group is never on both sides of a split."""
    names = sorted(set(groups))
    fold_of = {g: i % k for i, g in enumerate(names)}
    return [fold_of[g] for g in groups]


def cv_rows(n: int, max_rows: int | None = None) -> list[int]:
    """The rows :func:`l2_choose` cross-validates on (all, or a fixed-seed draw of
    ``max_rows``, default :data:`CV_MAX_ROWS`): only their features are read."""
    max_rows = CV_MAX_ROWS if max_rows is None else max_rows
    if n <= max_rows:
        return list(range(n))
    return sorted(np.random.default_rng(0).choice(n, max_rows, replace=False).tolist())


def l2_choose(
    features: Sequence[dict[int, float]],
    y: np.ndarray,
    groups: Sequence[str],
    width: int,
    *,
    grid: Sequence[float] = L2_GRID,
    folds: int = 3,
    trials: np.ndarray | None = None,
    max_rows: int | None = None,
    column_scale: np.ndarray | None = None,
) -> tuple[float, dict[str, float]]:
    """The penalty with the lowest grouped k-fold cross-validated log loss on these examples
    (and the mean loss per request of every candidate). Fewer than two groups, or a fold
    without both outcomes in its training part: the middle of the grid.

    ``y``/``trials`` as in :func:`logistic_fit`; ``column_scale``: ``scale`` of
    :func:`design`. Each fold fits the grid from the strongest
    penalty down, each fit starting from the previous one's solution. More than
    ``max_rows`` rows (default :data:`CV_MAX_ROWS`): cross-validated on ``max_rows`` of
    them (a fixed-seed draw), and the chosen penalty scaled by (requests in the subsample /
    all requests)."""
    counts = np.ones(len(y)) if trials is None else trials
    scale = 1.0
    rows = cv_rows(len(y), max_rows)
    if len(rows) < len(y):
        scale = float(counts[rows].sum() / counts.sum())
    fold = group_folds([groups[i] for i in rows], folds)
    k = len(set(fold))
    losses: dict[str, float] = {}
    middle = grid[len(grid) // 2] * scale
    if k < 2:
        return middle, losses
    parts = []
    for f in range(k):
        train = [rows[j] for j in range(len(rows)) if fold[j] != f]
        test = [rows[j] for j in range(len(rows)) if fold[j] == f]
        wins_train, n_train = y[train], counts[train]
        if not test or wins_train.sum() == 0 or wins_train.sum() == n_train.sum():
            return middle, losses
        parts.append(
            (design([features[i] for i in train], width, column_scale), wins_train, n_train,
             design([features[i] for i in test], width, column_scale), y[test], counts[test])
        )  # fmt: skip
    requests = float(counts[rows].sum())
    totals = dict.fromkeys(grid, 0.0)
    for x_train, y_train, n_train, x_test, y_test, n_test in parts:
        start: tuple[np.ndarray, float] | None = None
        for l2 in sorted(grid, reverse=True):  # strongest first: each warm-starts the next
            start = logistic_fit(x_train, y_train, l2=l2, trials=n_train, init=start)
            p = np.clip(predict_proba(x_test, *start), 1e-6, 1 - 1e-6)
            totals[l2] += float(-np.sum(y_test * np.log(p) + (n_test - y_test) * np.log(1 - p)))
    for l2 in grid:
        losses[f"{l2:g}"] = round(totals[l2] / requests, 5)
    best = min(grid, key=lambda v: losses[f"{v:g}"])
    return best * scale, losses
