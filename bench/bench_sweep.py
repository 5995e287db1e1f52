"""Tier-downgrade sweep benchmark: 10,000 sampled requests replayed against the replay fleet.

1. A fresh database ``switchyard_bench_sweep`` on the server in DATABASE_URL (migrated;
   dropped again afterwards).
2. The replay fleet in its own process (the generated workload, latency scale 0.01).
3. A registry of three fleet models and one task class routed to the tier-3 model, with
   10,000 recent decisions whose prompts are stored: the generated multi-step-reasoning
   word problems (``evaluation.workload``) with their references in metadata.
4. One tier-downgrade sweep over all 10,000 (candidate and current primary: 20,000 model
   calls over HTTP, graded, stored), timed end to end in-process.

Run with ``make bench`` or ``.venv/bin/python bench/bench_sweep.py`` (DATABASE_URL set).
Writes bench/results/sweep.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "sweep.json"
DB_NAME = "switchyard_bench_sweep"
SAMPLES = int(os.environ.get("BENCH_SWEEP_SAMPLES", "10000"))
CONCURRENCY = int(os.environ.get("BENCH_SWEEP_CONCURRENCY", "16"))
LATENCY_SCALE = float(os.environ.get("BENCH_SWEEP_LATENCY_SCALE", "0.01"))
TARGET_SECONDS = 60.0


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


def fleet_process() -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        "-m",
        "evaluation.fleet",
        "--port",
        "0",
        "--latency-scale",
        str(LATENCY_SCALE),
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("fleet listening on "):
        proc.kill()
        raise RuntimeError(f"the fleet did not start: {line!r}")
    return proc, line.removeprefix("fleet listening on ")


def main() -> int:
    base = os.environ.get("DATABASE_URL")
    if not base:
        print("bench_sweep: set DATABASE_URL (or run through `make bench`)", file=sys.stderr)
        return 2
    os.environ["DATABASE_URL"] = database(base, create=True)
    os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    os.environ["SWITCHYARD_SWEEP_CONCURRENCY"] = str(CONCURRENCY)
    os.environ["SWITCHYARD_EVAL_HTTP_POOL"] = str(CONCURRENCY * 2)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections
    from django.utils import timezone

    from controlplane import services as registry
    from evaluation import services
    from evaluation.client import http_client_close
    from evaluation.models import GraderConfig, Proposal, SweepKind, SweepSample
    from evaluation.workload import workload_items
    from telemetry.ids import uuid7, uuid7_time
    from telemetry.models import DecisionRecord

    fleet, fleet_url = fleet_process()
    try:
        call_command("migrate", "--noinput", verbosity=0)
        since = timezone.now() - timedelta(days=365)
        models = {}
        for slug, tier, locality, price_in, price_out in (
            ("llama-3.1-8b-local", 1, "local", "0.03", "0.06"),
            ("mistral-small-hosted", 2, "cloud", "0.20", "0.60"),
            ("gpt-4o", 3, "cloud", "2.50", "10.00"),
        ):
            models[slug] = registry.model_endpoint_create(
                slug=slug,
                provider="fleet",
                base_url=f"{fleet_url}/v1",
                provider_model=slug,
                tier=tier,
                locality=locality,
                context_window=32768,
                max_output_tokens=4096,
                input_usd_per_mtok=price_in,
                output_usd_per_mtok=price_out,
                price_effective_from=since,
            )
        from controlplane.models import TaskClass

        task_class = TaskClass.objects.create(
            slug="math-practice",
            name="Math practice",
            default_output_cap=512,
            quality_target=Decimal("0.75"),
            prompt_retention_days=30,
        )
        GraderConfig.objects.create(task_class=task_class, kind="numeric")
        version = registry.routing_version_draft_create()
        registry.route_set(version=version, task_class=task_class, primary=models["gpt-4o"])
        registry.routing_version_activate(version=version)

        items = workload_items("multi-step-reasoning")
        now = timezone.now()
        decisions = []
        for i in range(SAMPLES):
            ident = uuid7(int((now - timedelta(minutes=5)).timestamp() * 1000) - i * 50)
            created = uuid7_time(ident)
            item = items[i % len(items)]
            prompt, reference = item.prompt, item.reference
            decisions.append(
                DecisionRecord(
                    id=ident,
                    created_at=created,
                    application_id=1,
                    application="bench",
                    team="bench",
                    task_class="math-practice",
                    model="gpt-4o",
                    provider_model="gpt-4o",
                    tier=3,
                    locality="cloud",
                    strategy="rule",
                    confidence=0.9,
                    reason="bench",
                    routing_table_version=version.number,
                    input_tokens=220,
                    context_tokens=0,
                    max_output_tokens=512,
                    decision_us=100,
                    prompt=prompt,
                    prompt_expires_at=created + timedelta(days=30),
                    metadata={"reference_answer": reference},
                )
            )
        DecisionRecord.objects.bulk_create(decisions, batch_size=2000)

        run, _ = services.sweep_run_create(
            kind=SweepKind.TIER_DOWNGRADE,
            enqueue=False,
            params={"sample_size": SAMPLES, "max_candidates": 1, "window_days": 2},
        )
        started = time.perf_counter()
        run = services.sweep_run_execute(run_id=run.pk)
        seconds = time.perf_counter() - started
        assert run is not None
        samples = SweepSample.objects.filter(run=run).count()
        outcome = run.summary["classes"]["math-practice"]
        result = {
            "benchmark": "tier-downgrade sweep",
            "samples": samples,
            "seconds": round(seconds, 2),
            "target_seconds": TARGET_SECONDS,
            "samples_per_s": round(samples / seconds, 1),
            "model_calls": 2 * samples,
            "calls_per_s": round(2 * samples / seconds, 1),
            "failed_samples": run.samples_failed,
            "status": run.status,
            "concurrency": CONCURRENCY,
            "fleet_latency_scale": LATENCY_SCALE,
            "candidate": outcome.get("candidate"),
            "success_rate": outcome.get("success_rate"),
            "interval": outcome.get("interval"),
            "proposal_created": Proposal.objects.filter(sweep_run=run).exists(),
            "workload": f"generated multi-step-reasoning ({len(items)} distinct prompts)",
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"sweep: {samples} samples ({2 * samples} model calls) in {seconds:.1f} s "
            f"= {samples / seconds:.0f} samples/s at concurrency {CONCURRENCY} "
            f"(target ≤ {TARGET_SECONDS:.0f} s; {run.status}, "
            f"success {outcome.get('success_rate')}) → {RESULTS.relative_to(ROOT)}"
        )
        ok = run.status == "completed" and samples == SAMPLES and seconds <= TARGET_SECONDS
        return 0 if ok else 1
    finally:
        http_client_close()
        connections.close_all()
        fleet.terminate()
        fleet.wait(10)
        database(base, create=False)


if __name__ == "__main__":
    sys.exit(main())
