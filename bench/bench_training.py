"""Learned-router training time on 100,000 graded decisions, on one core (issue 10: ≤ 60 s).

1. A fresh database ``switchyard_bench_training`` on the server in DATABASE_URL (migrated;
   dropped again afterwards).
2. A registry of three models (tiers 1, 2, 3) and one task class routed to the tier-3
   model with both others as fallbacks.
3. 100,000 graded decisions over the last 20 days, a third routed to each model, every
   one with its own prompt (the generated multi-step-reasoning word problems,
   ``evaluation.workload``: all distinct, so nothing is folded together) and an outcome
   whose first attempt succeeds as the replay fleet's skill profile says that model
   answers that item (``evaluation.fleet.skills``) — a signal the prompt carries.
4. ``learned_router_train`` timed end to end, pinned to one CPU (``sched_setaffinity``,
   BLAS threads 1): the read of the graded decisions, features, the penalty's
   cross-validation, the fits, held-out metrics, the cost–quality curve, storing. Phases
   are timed by wrapping the service's own functions. PostgreSQL answers the read from
   its own process.

Run with ``make bench`` or ``.venv/bin/python bench/bench_training.py`` (DATABASE_URL set;
``BENCH_TRAINING_DECISIONS`` to change the size; ``BENCH_TRAINING_COMPARE=1`` also trains
with the penalty cross-validated on every row, for comparison). Writes
bench/results/training.json.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "training.json"
DB_NAME = "switchyard_bench_training"
DECISIONS = int(os.environ.get("BENCH_TRAINING_DECISIONS", "100000"))
TARGET_SECONDS = 60.0
CLASS = "multi-step-reasoning"
# bench model → the fleet model whose skill profile it answers with
MODELS = (
    ("small-local", 1, "local", "0.03", "0.06", "llama-3.1-8b-local"),
    ("mid-cloud", 2, "cloud", "0.20", "0.60", "gpt-4o-mini"),
    ("big-cloud", 3, "cloud", "2.50", "10.00", "gpt-4o"),
)


def database(base_url: str, *, create: bool) -> str:
    admin = urlunsplit(urlsplit(base_url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{DB_NAME}' AND pid <> pg_backend_pid()"
        )
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME}")
        if create:
            conn.execute(f"CREATE DATABASE {DB_NAME}")
    return urlunsplit(urlsplit(base_url)._replace(path=f"/{DB_NAME}"))


def timed(phases: dict[str, float], name: str, function: Callable[..., Any]) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - started

    return wrapper


def main() -> int:
    base = os.environ.get("DATABASE_URL")
    if not base:
        print("bench_training: set DATABASE_URL (or run through `make bench`)", file=sys.stderr)
        return 2
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"  # one core: before numpy is imported (by the services)
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    os.environ["DATABASE_URL"] = database(base, create=True)
    os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections
    from django.utils import timezone

    from controlplane import services as registry
    from controlplane.models import TaskClass
    from evaluation.fleet.skills import SKILLS, verdict
    from evaluation.services import learned
    from evaluation.workload import workload_items
    from telemetry.ids import uuid7, uuid7_time
    from telemetry.models import DecisionOutcome, DecisionRecord
    from telemetry.partitions import partitions_ensure

    try:
        call_command("migrate", "--noinput", verbosity=0)
        now = timezone.now()
        since = now - timedelta(days=365)
        models = {}
        for slug, tier, locality, price_in, price_out, _ in MODELS:
            models[slug] = registry.model_endpoint_create(
                slug=slug,
                provider="bench",
                base_url="http://127.0.0.1:9/v1",
                provider_model=slug,
                tier=tier,
                locality=locality,
                context_window=32768,
                max_output_tokens=4096,
                input_usd_per_mtok=price_in,
                output_usd_per_mtok=price_out,
                price_effective_from=since,
            )
        task_class = TaskClass.objects.create(
            slug=CLASS,
            name="Multi-step reasoning",
            default_output_cap=512,
            quality_target=Decimal("0.85"),
            prompt_retention_days=30,
        )
        version = registry.routing_version_draft_create()
        registry.route_set(
            version=version,
            task_class=task_class,
            primary=models["big-cloud"],
            fallbacks=["mid-cloud", "small-local"],
        )
        registry.routing_version_activate(version=version)

        started = time.perf_counter()
        items = workload_items(CLASS, size=DECISIONS)
        assert len({i.prompt for i in items}) == len(items) == DECISIONS
        span_ms = 20 * 86_400_000
        partitions_ensure((now - timedelta(days=21)).date(), now.date())
        decisions, outcomes = [], []
        for i, item in enumerate(items):
            slug, tier, locality, _, _, skill = MODELS[i % 3]
            ident = uuid7(int(now.timestamp() * 1000) - 60_000 - (i * span_ms) // DECISIONS)
            created = uuid7_time(ident)
            ok = verdict(skill, SKILLS[skill], CLASS, item.difficulty, item.id) == "correct"
            record = DecisionRecord(
                id=ident, created_at=created, application_id=1, application="bench",
                team="bench", task_class=CLASS, model=slug, provider_model=slug, tier=tier,
                locality=locality, strategy="rule", confidence=0.8, reason="bench",
                routing_table_version=version.number, input_tokens=120, context_tokens=0,
                max_output_tokens=512, decision_us=5, prompt=item.prompt,
                prompt_expires_at=created + timedelta(days=30),
                prompt_template_id="reasoning-v1", prompt_template_version="1",
                metadata={"reference_answer": item.reference},
            )  # fmt: skip
            decisions.append(record)
            status = "ok" if ok else "invalid_output"
            outcome = DecisionOutcome(
                decision_id=ident, decision_created_at=created,
                reported_at=created + timedelta(seconds=1), application_id=1,
                application="bench", team="bench", task_class=CLASS, routed_model=slug,
                routed_tier=tier, final_model=slug, final_tier=tier, final_status=status,
                attempts=[{"model": slug, "status": status, "latency_ms": 300,
                           "input_tokens": 120, "output_tokens": 40}],
                attempt_count=1, escalated=False, input_tokens=120, output_tokens=40,
                cost_usd=Decimal("0.0001"), latency_ms=300,
                quality_score=0.9 if ok else 0.1,
            )  # fmt: skip
            outcomes.append(outcome)
        DecisionRecord.objects.bulk_create(decisions, batch_size=5000)
        DecisionOutcome.objects.bulk_create(outcomes, batch_size=5000)
        setup_s = time.perf_counter() - started
        del decisions, outcomes

        phases: dict[str, float] = {}
        for name in ("training_examples", "l2_choose", "logistic_fit", "cost_quality_curve"):
            setattr(learned, name, timed(phases, name, getattr(learned, name)))
        load = [round(v, 2) for v in os.getloadavg()]
        started = time.perf_counter()
        router = learned.learned_router_train(task_class, threshold=0.85)
        seconds = time.perf_counter() - started
        assert router is not None
        per_model = {
            slug: {
                "train": router.samples[slug]["train"],
                "heldout": router.samples[slug]["heldout"],
                "l2": router.coefficients[slug]["l2"],
                **{k: router.metrics[slug][k] for k in ("brier", "brier_base", "auc", "ece")},
            }
            for slug in router.coefficients
        }
        result = {
            "benchmark": "learned-router training (learned_router_train, end to end)",
            "graded_decisions": DECISIONS,
            "distinct_prompts": DECISIONS,
            "seconds": round(seconds, 2),
            "target_seconds": TARGET_SECONDS,
            "ok": seconds <= TARGET_SECONDS,
            "phases_s": {k: round(v, 2) for k, v in phases.items()},
            "models": per_model,
            "routing_at_threshold": router.metrics["routing"],
            "cpu": f"pinned to CPU {cpu} (sched_setaffinity), BLAS threads 1",
            "load_average_before": load,
            "setup_s": round(setup_s, 1),
            "python": platform.python_version(),
        }
        if os.environ.get("BENCH_TRAINING_COMPARE"):
            # The same training with the penalty cross-validated on every row (no subsample):
            # what the subsample costs in quality, and saves in time.
            from evaluation import logreg

            logreg.CV_MAX_ROWS = 10**9
            started = time.perf_counter()
            full = learned.learned_router_train(task_class, threshold=0.85)
            assert full is not None
            result["full_cross_validation"] = {
                "seconds": round(time.perf_counter() - started, 2),
                "models": {
                    slug: {
                        "l2": full.coefficients[slug]["l2"],
                        **{k: full.metrics[slug][k] for k in ("brier", "auc", "ece")},
                    }
                    for slug in full.coefficients
                },
            }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
        print(
            f"training: {DECISIONS} graded decisions in {seconds:.1f} s on one core "
            f"(target ≤ {TARGET_SECONDS:.0f} s) → {RESULTS.relative_to(ROOT)}"
        )
        return 0 if result["ok"] else 1
    finally:
        connections.close_all()
        database(base, create=False)


if __name__ == "__main__":
    sys.exit(main())
