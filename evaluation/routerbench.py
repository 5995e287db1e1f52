"""Routing quality on recorded model outcomes (RouteLLM format), plain Python + numpy.

``manage.py routerbench`` (and ``make bench`` with ``ROUTERBENCH_DATA``) runs this. A
RouteLLM-format directory holds ``mmlu/mmlu_<domain>.csv`` (``prompt`` and one True/False
column per model) and ``gsm8k_responses.csv`` (the same plus ``<model>_response``, the
model's recorded answer). It is read in place; nothing is copied.

Per dataset every router scores each prompt (higher: the weak model is enough); sending the
lowest-scored share ``c`` of prompts to the strong model traces accuracy a(c), from which
(RouteLLM, Ong et al. 2024): PGR(c) = (a(c) − a_weak) / (a_strong − a_weak); APGR = the
area under PGR over c ∈ [0, 1]; CPT(x) = the smallest c with PGR(c) ≥ x.

Routers:

- ``random``; ``length`` (a rule: the longest prompts go strong); ``oracle``.
- ``learned``: the product's learned router, trained from the decision log of a scratch
  database by the product's own training and decided by its engine
  (``evaluation.services.routerbench``); the score is the predicted success of the weak
  model minus the strong model's — the ``gain`` rule of ``routing.learned``, so the
  threshold sweep is exactly what the product would route. In k-fold runs each fold has
  its own router, and the prompts are ranked by their place in their fold's training
  traffic (the strong share at which a threshold calibrated there, as the product
  calibrates, sends them weak); ``learned_raw`` pools the folds' raw scores instead, which
  mixes five routers' offsets (a fold that holds out the domains with the largest gap has
  trained on the rest, so its offset leans the wrong way). Also reported: the engine's
  strong share and accuracy at the router's threshold and the Brier score of its
  decisions' confidence.
- ``semantic``: the product's semantic router (``routing.semantic``, default hashed TF-IDF
  backend fitted on the training prompts) with two routes defined by the training prompts
  as utterances — "weak" (the weak model was enough) and "strong" (only the strong model
  was right); the score is the weak route's best similarity minus the strong route's.
- ``cascade`` (GSM8K, where the weak model's answers exist): the product's cascade call
  (``evaluation.services.cascade``, ``routing.cascade``) on the weak model's recorded
  answer, the learned router's confidence as its prior.

Held out: with ``train`` rows, fitted on them and scored on the data; otherwise k-fold
cross-validation where MMLU folds hold out whole domains and GSM8K folds by prompt hash.
"""

from __future__ import annotations

import csv
import math
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.logreg import group_folds
from routing.confidence import brier_score
from routing.semantic import HashedTfidf

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
ROUTERS = ("random", "length", "learned", "learned_raw", "semantic", "cascade", "oracle")
csv.field_size_limit(1 << 26)


@dataclass(frozen=True, slots=True)
class Row:
    prompt: str
    group: str  # the MMLU domain; for GSM8K a hash bucket of the prompt
    weak: bool
    strong: bool
    weak_response: str = ""


def _bool(value: str) -> bool:
    text = value.strip().lower()
    if text in {"true", "1", "1.0"}:
        return True
    if text in {"false", "0", "0.0"}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def load_mmlu(directory: Path, weak: str = WEAK, strong: str = STRONG) -> list[Row]:
    rows = []
    for path in sorted((directory / "mmlu").glob("*.csv")):
        domain = path.stem.removeprefix("mmlu_")
        with path.open(newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                rows.append(Row(r["prompt"], domain, _bool(r[weak]), _bool(r[strong])))
    return rows


def load_gsm8k(directory: Path, weak: str = WEAK, strong: str = STRONG) -> list[Row]:
    path = directory / "gsm8k_responses.csv"
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [
            Row(
                r["prompt"],
                f"h{zlib.crc32(r['prompt'].encode()) % 16}",
                _bool(r[weak]),
                _bool(r[strong]),
                r.get(f"{weak}_response", ""),
            )
            for r in csv.DictReader(f)
        ]


LOADERS: dict[str, Callable[[Path, str, str], list[Row]]] = {
    "mmlu": load_mmlu,
    "gsm8k": load_gsm8k,
}


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def curve(rows: Sequence[Row], scores: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
    """(c, accuracy, PGR) for every strong share k/n: the lowest scores go strong first
    (ties broken at random, seeded)."""
    rng = np.random.default_rng(seed)
    n = len(rows)
    order = np.lexsort((rng.random(n), np.asarray(scores, dtype=float)))
    weak = np.asarray([r.weak for r in rows], dtype=float)[order]
    strong = np.asarray([r.strong for r in rows], dtype=float)[order]
    strong_prefix = np.concatenate([[0.0], np.cumsum(strong)])
    weak_suffix = np.concatenate([[0.0], np.cumsum(weak[::-1])])[::-1]
    accuracy = (strong_prefix + weak_suffix) / n
    c = np.arange(n + 1) / n
    a_weak, a_strong = weak.mean(), strong.mean()
    gap = a_strong - a_weak
    pgr = (accuracy - a_weak) / gap if gap else np.zeros(n + 1)
    return c, accuracy, pgr


def summary(rows: Sequence[Row], scores: Sequence[float], seed: int) -> dict[str, float]:
    c, _, pgr = curve(rows, scores, seed)
    apgr = float(np.sum((pgr[1:] + pgr[:-1]) / 2 * np.diff(c)))

    def cpt(x: float) -> float:
        hit = np.nonzero(pgr >= x)[0]
        return float(c[hit[0]]) if len(hit) else 1.0

    return {"apgr": round(apgr, 4), "cpt50": round(cpt(0.5), 4), "cpt80": round(cpt(0.8), 4)}


# --------------------------------------------------------------------------------------------
# What the product said (evaluation.services.routerbench)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProductScores:
    """The held-out answers of the product's learned router and cascade, aligned with the
    rows: predicted success of each model, the engine's decision at the router's threshold
    (strong or not, and its confidence: the chosen model's predicted success), and the
    cascade call's probability that the weak model's answer is right (GSM8K)."""

    p_weak: Sequence[float]
    p_strong: Sequence[float]
    chose_strong: Sequence[bool]
    confidence: Sequence[float]
    cascade: Sequence[float] | None = None
    routers: Sequence[dict[str, Any]] = ()
    # Each prompt's rank in its fold's training traffic (evaluation.services.routerbench):
    # with it, ``learned`` ranks by it and ``learned_raw`` by the raw gain score.
    traffic_rank: Sequence[float] = ()


def semantic_scores(
    rows: Sequence[Row], *, train_rows: Sequence[Row] = (), folds: int = 5
) -> list[float]:
    """Held-out scores of the two-route semantic router (see the module docstring): each
    route's score is its most similar example, as ``SemanticRouterInfo.match`` computes it
    (here for many prompts at once, in blocks)."""
    everything = [*train_rows, *rows]
    offset = len(train_rows)
    if train_rows:
        splits = [(list(range(offset)), list(range(offset, len(everything))))]
    else:
        fold = group_folds([r.group for r in rows], folds)
        splits = [
            ([i for i in range(len(rows)) if fold[i] != f],
             [i for i in range(len(rows)) if fold[i] == f])
            for f in range(folds)
        ]  # fmt: skip
    needs_strong = np.asarray([(not r.weak) and r.strong for r in everything], dtype=bool)
    out = np.zeros(len(rows))
    for train, test in splits:
        strong_side = needs_strong[train]
        if not train or not test or strong_side.all() or not strong_side.any():
            continue
        backend = HashedTfidf()
        backend.fit([everything[i].prompt for i in train])
        examples = backend.embed([everything[i].prompt for i in train])
        for start in range(0, len(test), 512):
            block = test[start : start + 512]
            similarity = backend.embed([everything[i].prompt for i in block]) @ examples.T
            weak_side = np.logical_not(strong_side)
            score = similarity[:, weak_side].max(axis=1) - similarity[:, strong_side].max(axis=1)
            out[[i - offset for i in block]] = score
    return [float(v) for v in out]


# --------------------------------------------------------------------------------------------
# Running the routers
# --------------------------------------------------------------------------------------------


def evaluate(
    rows: list[Row],
    *,
    product: ProductScores,
    train_rows: Sequence[Row] = (),
    folds: int = 5,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Every router's summary on ``rows``, and the scores (for the curves)."""
    rng = random.Random(seed)
    n = len(rows)
    out: dict[str, Any] = {
        "prompts": n,
        "weak_accuracy": round(sum(r.weak for r in rows) / n, 4),
        "strong_accuracy": round(sum(r.strong for r in rows) / n, 4),
        "held_out": "trained on --train" if train_rows else f"{folds}-fold, whole groups held out",
    }
    observed = [r.weak for r in rows]
    gain = [w - s for w, s in zip(product.p_weak, product.p_strong, strict=True)]
    routers: dict[str, list[float]] = {
        "random": [rng.random() for _ in rows],
        "length": [-float(len(r.prompt)) for r in rows],
        # The rule gain of routing.learned, each fold's router at every threshold
        # calibrated on its own training traffic: the threshold sweep is what the product
        # routes (one router, with --train: the same order as the raw score).
        "learned": list(product.traffic_rank) if product.traffic_rank else gain,
        "semantic": semantic_scores(rows, train_rows=train_rows, folds=folds),
        "oracle": [1.0 if r.weak or not r.strong else 0.0 for r in rows],
    }
    if product.traffic_rank:
        # The raw gain scores of the folds' routers pooled: each fold's router has its own
        # offset, and a fold that holds out the domains with the largest gap trains on the
        # others, so its offset leans the wrong way (a cross-validation artefact).
        routers["learned_raw"] = gain
    if product.cascade is not None:
        routers["cascade"] = list(product.cascade)
    for router, scores in routers.items():
        out[router] = summary(rows, scores, seed)
    learned = out["learned"]
    learned["brier"] = round(brier_score(product.p_weak, observed), 4)
    base = sum(r.weak for r in (train_rows or rows)) / len(train_rows or rows)
    learned["brier_base_rate"] = round(brier_score([base] * n, observed), 4)
    # The engine's decisions at the router's threshold, and their confidence.
    chosen_ok = [r.strong if s else r.weak for r, s in zip(rows, product.chose_strong, strict=True)]
    learned["strong_share"] = round(sum(product.chose_strong) / n, 4)
    learned["accuracy"] = round(sum(chosen_ok) / n, 4)
    learned["confidence_brier"] = round(brier_score(product.confidence, chosen_ok), 4)
    learned["routers"] = list(product.routers)
    if product.cascade is not None:
        cascade = list(product.cascade)
        out["cascade"]["brier"] = round(brier_score(cascade, observed), 4)
        escalate = [p < 0.5 for p in cascade]
        acc = sum(r.strong if e else r.weak for r, e in zip(rows, escalate, strict=True))
        out["cascade"]["strong_share_at_0.5"] = round(sum(escalate) / n, 4)
        out["cascade"]["accuracy_at_0.5"] = round(acc / n, 4)
    return out, routers


def table(results: dict[str, Any]) -> list[str]:
    lines = []
    for name, res in results.items():
        lines.append(
            f"{name}: {res['prompts']} prompts, weak {res['weak_accuracy']:.3f}, "
            f"strong {res['strong_accuracy']:.3f} ({res['held_out']})"
        )
        lines.append(f"  {'router':<11} {'APGR':>6} {'CPT50':>6} {'CPT80':>6} {'Brier':>6}")
        for router in ROUTERS:
            if router in res:
                r = res[router]
                brier = f"{r['brier']:>6.3f}" if "brier" in r else f"{'':>6}"
                figures = f"{r['apgr']:>6.3f} {r['cpt50']:>6.3f} {r['cpt80']:>6.3f}"
                lines.append(f"  {router:<11} {figures} {brier}")
    return lines


def plot_html(scored: dict[str, tuple[list[Row], dict[str, list[float]]]], seed: int) -> str:
    """The cost–quality curves (PGR against the strong-call share) as self-contained HTML."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(scored)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    for col, name in enumerate(names, start=1):
        rows, routers = scored[name]
        for router, scores in routers.items():
            c, _, pgr = curve(rows, scores, seed)
            step = max(1, len(c) // 400)
            fig.add_trace(
                go.Scatter(x=c[::step], y=pgr[::step], name=f"{name} {router}", mode="lines"),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="strong-call share", row=1, col=col)
        fig.update_yaxes(title_text="PGR", row=1, col=col)
    html: str = fig.to_html(include_plotlyjs=True, full_html=True)
    return html


def finite(results: dict[str, Any]) -> bool:
    return all(math.isfinite(r["learned"]["apgr"]) for r in results.values())
