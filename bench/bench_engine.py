"""Throughput benchmark of the routing core (``routing.engine.decide``), one core, no Django.

Run from the repository root::

    .venv/bin/python bench/bench_engine.py [--calls 200000] [--repeat 3]

Writes ``bench/results/engine.json`` and prints a one-line summary.  Exits non-zero when the
measured rate is below the 20,000 decisions/s target.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from routing.engine import (  # noqa: E402
    BudgetState,
    DecisionRequest,
    EscalationTriggers,
    ModelInfo,
    RouteConditions,
    RouteInfo,
    RoutingError,
    Snapshot,
    TaskClassInfo,
    decide,
    snapshot_build,
)

TARGET = 20_000
RESULTS = ROOT / "bench" / "results" / "engine.json"


def build_snapshot() -> Snapshot:
    """6 models over 3 tiers, 10 task classes, 3 budgets (one team budget past its soft limit)."""

    def model(
        slug: str,
        tier: int,
        locality: str,
        window: int,
        max_out: int,
        price_in: float,
        price_out: float,
        p95: float | None,
        provider: str,
    ) -> ModelInfo:
        return ModelInfo(
            slug=slug,
            provider=provider,
            base_url=f"https://{provider}.example/v1",
            provider_model=slug,
            version="2025-01",
            tier=tier,
            locality=locality,
            context_window=window,
            max_output_tokens=max_out,
            status="active",
            input_usd_per_mtok=price_in,
            output_usd_per_mtok=price_out,
            p95_latency_ms=p95,
        )

    models = [
        model("llama-3-8b", 1, "local", 8_192, 2_048, 0.05, 0.05, 350.0, "vllm"),
        model("qwen-2.5-14b", 1, "local", 32_768, 4_096, 0.10, 0.10, 600.0, "vllm"),
        model("llama-3-70b", 2, "local", 32_768, 4_096, 0.60, 0.80, 1_400.0, "vllm"),
        model("gpt-4o-mini", 2, "cloud", 128_000, 16_384, 0.15, 0.60, 900.0, "openai"),
        model("claude-sonnet", 3, "cloud", 200_000, 8_192, 3.00, 15.00, 2_800.0, "anthropic"),
        model("gpt-4o", 3, "cloud", 128_000, 16_384, 2.50, 10.00, None, "openai"),
    ]
    esc = EscalationTriggers(confidence_below=0.7, on_invalid_output=True, on_error=True)
    task_specs = [
        # slug, risk, data policy, output cap, latency class, primary, fallbacks
        ("ticket-triage", "normal", "any", 256, "interactive", "llama-3-8b", ("gpt-4o-mini",)),
        ("summarize", "normal", "any", 1_024, "batch", "gpt-4o-mini", ("llama-3-70b",)),
        (
            "code-review",
            "normal",
            "any",
            4_096,
            "batch",
            "claude-sonnet",
            ("gpt-4o", "gpt-4o-mini"),
        ),
        ("sql-gen", "normal", "any", 1_024, "interactive", "gpt-4o", ("gpt-4o-mini",)),
        ("hr-letters", "high", "local_only", 2_048, "batch", "llama-3-70b", ("qwen-2.5-14b",)),
        ("extract-entities", "normal", "any", 512, "interactive", "qwen-2.5-14b", ()),
        ("chat-support", "normal", "any", 1_024, "interactive", "gpt-4o-mini", ("llama-3-8b",)),
        ("legal-review", "high", "any", 4_096, "batch", "claude-sonnet", ("gpt-4o",)),
        ("translate", "normal", "any", 2_048, "interactive", "gpt-4o-mini", ("qwen-2.5-14b",)),
        ("classify-intent", "normal", "any", 64, "interactive", "llama-3-8b", ()),
    ]
    task_classes = []
    routes = []
    for slug, risk, policy, cap, latency, primary, fallbacks in task_specs:
        task_classes.append(
            TaskClassInfo(
                slug=slug,
                risk=risk,
                data_policy=policy,
                default_output_cap=cap,
                latency_class=latency,
                quality_target=0.85,
            )
        )
        conditions = (
            RouteConditions(max_context_tokens=100_000)
            if slug == "code-review"
            else RouteConditions()
        )
        routes.append(
            RouteInfo(
                task_class=slug,
                primary=primary,
                fallbacks=fallbacks,
                escalation=esc,
                conditions=conditions,
            )
        )
    budgets = [
        BudgetState(1, "global-monthly", "global", None, "month", 50_000.0, 21_000.0),
        BudgetState(2, "acme-monthly", "team", "acme", "month", 2_000.0, 1_700.0, 80.0),
        BudgetState(3, "support-bot-daily", "application", "support-bot", "day", 100.0, 20.0),
    ]
    quality = {("llama-3-8b", "ticket-triage"): 0.91, ("gpt-4o-mini", "summarize"): 0.88}
    return snapshot_build(
        version=4,
        models=models,
        task_classes=task_classes,
        routes=routes,
        budgets=budgets,
        quality=quality,
    )


def build_requests(snapshot: Snapshot, n: int, seed: int = 7) -> list[DecisionRequest]:
    rng = random.Random(seed)
    tasks = sorted(snapshot.task_classes)
    teams = [None, "acme", "globex", "initech"]
    apps = [None, "support-bot", "crm", "analytics"]
    classifications = [None] * 3 + ["public"] * 2 + ["internal"] * 3 + ["confidential", "personal"]
    pii_choices = [()] * 12 + [("email",), ("email", "phone"), ("iban",)]
    out = []
    for _ in range(n):
        input_tokens = int(rng.lognormvariate(6.5, 1.2))
        out.append(
            DecisionRequest(
                task_class=rng.choice(tasks),
                input_tokens=input_tokens,
                context_tokens=input_tokens + rng.choice((0, 0, 500, 4_000)),
                latency_budget_ms=rng.choice((None, None, 800, 1_500, 3_000)),
                max_cost_usd=rng.choice((None, None, None, 0.01, 0.1)),
                data_classification=rng.choice(classifications),
                pii_found=rng.choice(pii_choices),
                pii_detection_failed=rng.random() < 0.02,
                team=rng.choice(teams),
                application=rng.choice(apps),
            )
        )
    return out


def run_once(snapshot: Snapshot, requests: list[DecisionRequest], calls: int) -> float:
    full, rest = divmod(calls, len(requests))
    sequence = requests * full + requests[:rest]  # built outside the timed loop
    start = time.perf_counter()
    for req in sequence:
        try:
            decide(req, snapshot)
        except RoutingError:  # refusals (budget, no eligible model) count as decisions
            continue
    return time.perf_counter() - start


def outcome_mix(snapshot: Snapshot, requests: list[DecisionRequest]) -> dict[str, int]:
    mix: Counter[str] = Counter()
    for req in requests:
        try:
            mix[decide(req, snapshot).strategy] += 1
        except RoutingError as exc:
            mix[type(exc).__name__] += 1
    return dict(sorted(mix.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    snapshot = build_snapshot()
    requests = build_requests(snapshot, args.requests)
    mix = outcome_mix(snapshot, requests)  # also warms up
    timings = [run_once(snapshot, requests, args.calls) for _ in range(args.repeat)]
    best = min(timings)
    rate = args.calls / best
    result = {
        "benchmark": "routing.engine.decide",
        "decisions_per_s": round(rate),
        "target": TARGET,
        "ok": rate >= TARGET,
        "calls": args.calls,
        "distinct_requests": len(requests),
        "repeat": args.repeat,
        "best_s": round(best, 4),
        "us_per_decision": round(best / args.calls * 1e6, 2),
        "outcomes": mix,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"engine: {rate:,.0f} decisions/s ({result['us_per_decision']} us/decision, best of "
        f"{args.repeat} x {args.calls:,} calls) target {TARGET:,}/s -> "
        f"{'OK' if result['ok'] else 'BELOW TARGET'}"
    )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
