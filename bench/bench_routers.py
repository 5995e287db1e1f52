"""Routing quality on recorded model outcomes (RouteLLM format): learned vs rules vs random.

Run from the repository root, with a directory laid out like RouteLLM's evaluation data
(``mmlu/*.csv`` with ``prompt`` and one True/False column per model; ``gsm8k_responses.csv``
with the same plus ``<model>_response`` answer texts)::

    .venv/bin/python bench/bench_routers.py DIR [--folds 5] [--json] [--out FILE]

The directory is read in place; nothing is copied. No test depends on it.

Per dataset, every router scores each prompt with the probability that the weak model is
enough; sending the lowest-scored share ``c`` of prompts to the strong model traces
accuracy a(c), from which (RouteLLM, Ong et al. 2024):
PGR(c) = (a(c) − a_weak) / (a_strong − a_weak), APGR = the area under PGR over c ∈ [0, 1],
CPT(x) = the smallest c with PGR(c) ≥ x.

Routers: ``random``; ``length`` (a rule: the longest prompts go strong); ``learned`` (the
product's own features and logistic regression — ``routing.learned``, ``evaluation.logreg``
— with the product's defaults, predicting the weak model's success; k-fold: MMLU holds out
whole domains, GSM8K folds by prompt hash); ``cascade`` (GSM8K only: ``routing.cascade``
on the weak model's recorded answer, prior = the learned prediction); ``oracle``. The
static rules "always weak" / "always strong" are the curve's two ends. Nothing is tuned on
the data: the same settings as the product, no search over folds or thresholds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluation.logreg import design, logistic_fit  # noqa: E402
from routing.cascade import CascadeAttempt, cascade_judge  # noqa: E402
from routing.confidence import brier_score  # noqa: E402
from routing.learned import HashingSpec, LearnedModel, predict_one, request_features  # noqa: E402

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
csv.field_size_limit(1 << 26)


@dataclass(frozen=True, slots=True)
class Row:
    prompt: str
    group: str  # MMLU domain, or "" (GSM8K)
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


def load_mmlu(directory: Path, weak: str, strong: str) -> list[Row]:
    rows = []
    for path in sorted((directory / "mmlu").glob("*.csv")):
        domain = path.stem.removeprefix("mmlu_")
        with path.open(newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                rows.append(Row(r["prompt"], domain, _bool(r[weak]), _bool(r[strong])))
    return rows


def load_gsm8k(directory: Path, weak: str, strong: str) -> list[Row]:
    path = directory / "gsm8k_responses.csv"
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [
            Row(r["prompt"], "", _bool(r[weak]), _bool(r[strong]), r.get(f"{weak}_response", ""))
            for r in csv.DictReader(f)
        ]


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
    pgr = (accuracy - a_weak) / (a_strong - a_weak)
    return c, accuracy, pgr


def summary(rows: Sequence[Row], scores: Sequence[float], seed: int) -> dict[str, Any]:
    c, _, pgr = curve(rows, scores, seed)
    apgr = float(np.sum((pgr[1:] + pgr[:-1]) / 2 * np.diff(c)))

    def cpt(x: float) -> float:
        hit = np.nonzero(pgr >= x)[0]
        return float(c[hit[0]]) if len(hit) else 1.0

    return {"apgr": round(apgr, 4), "cpt50": round(cpt(0.5), 4), "cpt80": round(cpt(0.8), 4)}


# --------------------------------------------------------------------------------------------
# Routers
# --------------------------------------------------------------------------------------------


def folds_of(rows: Sequence[Row], k: int) -> list[int]:
    """MMLU: whole domains per fold (sorted, round-robin); otherwise by prompt hash."""
    if any(r.group for r in rows):
        domains = sorted({r.group for r in rows})
        fold_of = {d: i % k for i, d in enumerate(domains)}
        return [fold_of[r.group] for r in rows]
    return [zlib.crc32(r.prompt.encode()) % k for r in rows]


def learned_scores(rows: Sequence[Row], k: int, spec: HashingSpec) -> tuple[list[float], float]:
    """Out-of-fold P(weak succeeds) from the product's features and fit; and its Brier score
    minus the base-rate predictor's (negative: better than the base rate)."""
    features = [request_features(spec, r.prompt) for r in rows]
    fold = folds_of(rows, k)
    scores = [0.0] * len(rows)
    base_scores = [0.0] * len(rows)
    for f in range(k):
        train = [i for i in range(len(rows)) if fold[i] != f]
        test = [i for i in range(len(rows)) if fold[i] == f]
        if not train or not test:
            continue
        y = np.asarray([rows[i].weak for i in train], dtype=float)
        w, b = logistic_fit(design([features[i] for i in train], spec.width), y, l2=1 / len(train))
        model = LearnedModel("weak", b, tuple(float(v) for v in w))
        for i in test:
            scores[i] = predict_one(model, features[i])
            base_scores[i] = float(y.mean())
    observed = [r.weak for r in rows]
    return scores, brier_score(scores, observed) - brier_score(base_scores, observed)


def evaluate(name: str, rows: list[Row], folds: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    spec = HashingSpec()
    out: dict[str, Any] = {
        "prompts": len(rows),
        "weak_accuracy": round(sum(r.weak for r in rows) / len(rows), 4),
        "strong_accuracy": round(sum(r.strong for r in rows) / len(rows), 4),
    }
    started = time.monotonic()
    learned, brier_gain = learned_scores(rows, folds, spec)
    out["learned_train_s"] = round(time.monotonic() - started, 1)
    observed = [r.weak for r in rows]
    routers: dict[str, list[float]] = {
        "random": [rng.random() for _ in rows],
        "length": [-float(len(r.prompt)) for r in rows],
        "learned": learned,
        "oracle": [1.0 if r.weak or not r.strong else 0.0 for r in rows],
    }
    if any(r.weak_response for r in rows):
        routers["cascade"] = [
            cascade_judge(
                CascadeAttempt(output=r.weak_response), prior=p, expects="number"
            ).p_success
            for r, p in zip(rows, learned, strict=True)
        ]
    for router, scores in routers.items():
        out[router] = summary(rows, scores, seed)
    out["learned"]["brier"] = round(brier_score(learned, observed), 4)
    out["learned"]["brier_minus_base_rate"] = round(brier_gain, 4)
    if "cascade" in routers:
        out["cascade"]["brier"] = round(brier_score(routers["cascade"], observed), 4)
        # The cascade at its default threshold (0.5): escalations and accuracy.
        escalate = [p < 0.5 for p in routers["cascade"]]
        acc = sum(r.strong if e else r.weak for r, e in zip(rows, escalate, strict=True))
        out["cascade"]["strong_share_at_0.5"] = round(sum(escalate) / len(rows), 4)
        out["cascade"]["accuracy_at_0.5"] = round(acc / len(rows), 4)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weak", default=WEAK)
    parser.add_argument("--strong", default=STRONG)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        parser.error(f"{args.directory} is not a directory")
    results: dict[str, Any] = {}
    for name, loader in (("mmlu", load_mmlu), ("gsm8k", load_gsm8k)):
        rows = loader(args.directory, args.weak, args.strong)
        if rows:
            results[name] = evaluate(name, rows, args.folds, args.seed)
    if not results:
        parser.error("no RouteLLM-format data found (mmlu/*.csv, gsm8k_responses.csv)")
    for name, res in results.items():
        print(
            f"{name}: {res['prompts']} prompts, weak {res['weak_accuracy']:.3f}, "
            f"strong {res['strong_accuracy']:.3f}"
        )
        print(f"  {'router':<8} {'APGR':>6} {'CPT50':>6} {'CPT80':>6}")
        for router in ("random", "length", "learned", "cascade", "oracle"):
            if router in res:
                r = res[router]
                print(f"  {router:<8} {r['apgr']:>6.3f} {r['cpt50']:>6.3f} {r['cpt80']:>6.3f}")
        extra = {k: v for k, v in res["learned"].items() if k.startswith("brier")}
        print(f"  learned confidence: {extra}")
    payload = json.dumps(results, sort_keys=True)
    if args.out:
        args.out.write_text(payload + "\n")
    if args.json:
        print(payload)
    return 0 if all(math.isfinite(r["learned"]["apgr"]) for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
