"""Dashboard benchmark: server time of the overview, its htmx partials and the explorer
with 5,000,000 decisions (and outcomes) over 30 days.

1. A database ``switchyard_bench_dash`` on the server in DATABASE_URL, migrated, with the
   demo registry. It is kept between runs: when it already holds the decisions, loading
   is skipped (``BENCH_DASH_FRESH=1`` drops and rebuilds it).
2. Decisions and outcomes are generated in Python and streamed with COPY (text format),
   two processes in parallel (one per core), 30 days with a daily rhythm; then ANALYZE and
   ``rollups_rebuild`` (the same SQL the dashboards' refresh uses).
3. In-process with Django's test client (DEBUG off, a signed-in Viewer): after one warm-up,
   the median of 5 requests each for the 30-day overview, every htmx partial and the
   explorer's first page; plus one streamed CSV export of a million rows.

Run with ``make bench`` or ``.venv/bin/python bench/bench_dashboards.py [--fresh]``
(DATABASE_URL set, or the embedded server running, e.g. under
``python -m controlplane.stack exec``). Writes bench/results/dashboards.json.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import resource
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "dashboards.json"
DB_NAME = "switchyard_bench_dash"
ROWS = int(os.environ.get("BENCH_DASH_ROWS", "5000000"))
DAYS = 30
TARGETS = {"overview_ms": 300, "partial_ms": 150, "explorer_ms": 100}
REPEAT = 5


def _base_url() -> str:
    from controlplane.env import EMBEDDED_DATABASE_URL

    return os.environ.get("DATABASE_URL", EMBEDDED_DATABASE_URL)


def database_url(*, fresh: bool) -> tuple[str, bool]:
    """The bench database's URL, and whether it had to be created."""
    base = _base_url()
    admin = urlunsplit(urlsplit(base)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone()
        if exists and fresh:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{DB_NAME}' AND pid <> pg_backend_pid()"
            )
            conn.execute(f"DROP DATABASE {DB_NAME}")
            exists = None
        if not exists:
            conn.execute(f"CREATE DATABASE {DB_NAME}")
    return urlunsplit(urlsplit(base)._replace(path=f"/{DB_NAME}")), not exists


# ---------------------------------------------------------------------------------------
# Generation (plain Python + COPY; no ORM)
# ---------------------------------------------------------------------------------------


def _copy_text(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def _profiles() -> list[dict[str, Any]]:
    """One entry per (application, task class): routes, prices and a static decision path."""
    from controlplane.demo import MODELS, ROUTES_V1, ROUTES_V2
    from telemetry.demo_traffic import MIX, PROFILES

    models = {
        m[0]: {
            "provider_model": m[2],
            "tier": m[3],
            "locality": m[4],
            "price": (float(m[7]), float(m[8])),
        }
        for m in MODELS
    }
    teams = {"support-desk": "support", "bi-assistant": "analytics", "internal-tools": "platform"}
    out = []
    for app, (app_share, mix) in MIX.items():
        for task_class, share in mix.items():
            profile = PROFILES[task_class]
            routes = {}
            for version, table in ((1, ROUTES_V1), (2, ROUTES_V2)):
                primary, fallbacks = table[task_class]
                path = json.dumps(
                    {
                        "candidates": [
                            {
                                "model": primary,
                                "tier": models[primary]["tier"],
                                "accepted": True,
                                "reason": "selected",
                            }
                        ]
                        + [
                            {
                                "model": f,
                                "tier": models[f]["tier"],
                                "accepted": True,
                                "reason": "eligible fallback",
                            }
                            for f in fallbacks
                        ],
                        "fallbacks": [
                            {
                                "model": f,
                                "tier": models[f]["tier"],
                                "triggers": ["invalid_output", "error_timeout"],
                            }
                            for f in fallbacks
                        ],
                        "policy": {"pii_types_found": [], "actions": []},
                        "budgets": [],
                        "local_only": False,
                    },
                    separators=(",", ":"),
                )
                routes[version] = (primary, (fallbacks or [primary])[0], path)
            out.append(
                {
                    "app": app,
                    "team": teams[app],
                    "task_class": task_class,
                    "weight": app_share * share,
                    "profile": profile,
                    "routes": routes,
                    "models": models,
                }
            )
    return out


def _generate_days(args: tuple[str, int, list[datetime], float, datetime]) -> int:
    """COPY one process's share of days: decisions, then their outcomes, a day at a time."""
    url, worker, days, scale, v2_at = args
    from telemetry.ids import uuid7

    rng = random.Random(worker)
    profiles = _profiles()
    cumulative = []
    total = 0.0
    for p in profiles:
        total += p["weight"]
        cumulative.append(total)
    from telemetry.demo_traffic import hour_weight

    written = 0
    with psycopg.connect(url) as conn:
        conn.execute("SET synchronous_commit = off")
        for day in days:
            weights = [hour_weight(day + timedelta(hours=h)) for h in range(24)]
            decisions: list[str] = []
            outcomes: list[str] = []
            for hour, weight in enumerate(weights):
                start_ms = int((day + timedelta(hours=hour)).timestamp() * 1000)
                for _ in range(int(weight * scale + rng.random())):
                    ms = start_ms + rng.randrange(3_600_000)
                    ident = uuid7(ms)
                    created = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()
                    p = profiles[_pick(cumulative, rng.random() * total)]
                    version = 2 if ms >= v2_at.timestamp() * 1000 else 1
                    routed, fallback, path = p["routes"][version]
                    m = p["models"]
                    prof = p["profile"]
                    tokens = max(20, int(prof.input_tokens * rng.uniform(0.6, 1.4)))
                    out_tokens = max(1, int(prof.output_tokens * rng.uniform(0.5, 1.5)))
                    escalated = rng.random() < (0.08 if m[routed]["tier"] == 1 else 0.03)
                    final = fallback if escalated else routed
                    tier = m[final]["tier"]
                    ttft, tps = {1: (70, 260), 2: (320, 120), 3: (650, 90)}[tier]
                    latency = int((ttft + 1000 * out_tokens / tps) * rng.lognormvariate(0, 0.3))
                    pin, pout = m[final]["price"]
                    cost = (tokens * pin + out_tokens * pout) / 1e6
                    ok = rng.random() < prof.success_by_tier[tier - 1]
                    decisions.append(
                        "\t".join(
                            (
                                str(ident),
                                created,
                                "",
                                "1",
                                p["app"],
                                p["team"],
                                p["task_class"],
                                routed,
                                m[routed]["provider_model"],
                                str(m[routed]["tier"]),
                                m[routed]["locality"],
                                "rule",
                                "0.8",
                                f"Routed {p['task_class']} to {routed} by table v{version} rule.",
                                str(version),
                                "f",
                                "internal",
                                "{}",
                                str(tokens),
                                "0",
                                str(prof.output_tokens),
                                "\\N",
                                "\\N",
                                "35",
                                "",
                                "\\N",
                                "\\N",
                                prof.template,
                                "1",
                                "",
                                "{}",
                                "{}",
                                path,
                                "{}",
                            )
                        )
                    )
                    attempts = json.dumps(
                        [
                            {
                                "model": final,
                                "tier": tier,
                                "status": "ok" if ok else "invalid_output",
                                "latency_ms": latency,
                                "input_tokens": tokens,
                                "output_tokens": out_tokens,
                                "escalation_reason": "",
                                "cost_usd": f"{cost:.8f}",
                            }
                        ],
                        separators=(",", ":"),
                    )
                    reported = datetime.fromtimestamp(
                        ms / 1000 + latency / 1000 + 0.05, tz=UTC
                    ).isoformat()
                    quality = (
                        f"{min(1.0, rng.gauss(0.88, 0.06)):.3f}" if rng.random() < 0.5 else "\\N"
                    )
                    outcomes.append(
                        "\t".join(
                            (
                                str(ident),
                                created,
                                reported,
                                "1",
                                p["app"],
                                p["team"],
                                p["task_class"],
                                routed,
                                str(m[routed]["tier"]),
                                final,
                                str(tier),
                                "ok" if ok else "invalid_output",
                                attempts,
                                "2" if escalated else "1",
                                "t" if escalated else "f",
                                str(tokens),
                                str(out_tokens),
                                f"{cost:.8f}",
                                str(latency),
                                quality,
                                "",
                                "{}",
                                "{}",
                                "2" if escalated else "1",
                            )
                        )
                    )
            with conn.cursor() as cursor:
                with cursor.copy("COPY telemetry_decision FROM STDIN") as copy:
                    copy.write("\n".join(decisions) + "\n")
                with cursor.copy(
                    "COPY telemetry_outcome (decision_id, decision_created_at, reported_at, "
                    "application_id, application, team, task_class, routed_model, routed_tier, "
                    "final_model, final_tier, final_status, attempts, attempt_count, escalated, "
                    "input_tokens, output_tokens, cost_usd, latency_ms, quality_score, "
                    "user_feedback, validation, retrieval_document_ids, charged_attempts) "
                    "FROM STDIN"
                ) as copy:
                    copy.write("\n".join(outcomes) + "\n")
            conn.commit()
            written += len(decisions)
    return written


def _pick(cumulative: list[float], value: float) -> int:
    import bisect

    return min(bisect.bisect_left(cumulative, value), len(cumulative) - 1)


def _secondary_indexes_drop() -> list[str]:
    """Drop the non-key indexes of the two partitioned tables; return their definitions."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN "
            "('telemetry_decision', 'telemetry_outcome') AND indexname NOT LIKE '%%pkey'"
        )
        found = cursor.fetchall()
        for name, _ in found:
            cursor.execute(f'DROP INDEX "{name}"')
    return [definition for _, definition in found]


def _index_recursive(definition: str) -> str:
    """pg_indexes gives a partitioned table's index as ``CREATE INDEX … ON ONLY <parent>``:
    run as is, that creates an invalid index on the parent alone and none on the
    partitions (every query then scans whole partitions). Without ONLY it recurses."""
    return definition.replace(" ON ONLY ", " ON ", 1)


def indexes_invalid() -> list[str]:
    """Indexes of the two partitioned tables that are not valid (or not on every partition)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indexrelid::regclass::text FROM pg_index i "
            "JOIN pg_class t ON t.oid = i.indrelid "
            "WHERE t.relname IN ('telemetry_decision', 'telemetry_outcome') "
            "AND NOT i.indisvalid"
        )
        return [row[0] for row in cursor.fetchall()]


def indexes_repair() -> list[str]:
    """Rebuild, on every partition, the indexes an earlier load left on the parent only."""
    from django.db import connection

    invalid = indexes_invalid()
    with connection.cursor() as cursor:
        for name in invalid:
            cursor.execute("SELECT pg_get_indexdef(%s::regclass)", [name])
            definition = cursor.fetchone()[0]
            cursor.execute(f"DROP INDEX {name}")
            cursor.execute(_index_recursive(definition))
        if invalid:
            cursor.execute("ANALYZE telemetry_decision")
            cursor.execute("ANALYZE telemetry_outcome")
    return invalid


def load(url: str) -> dict[str, Any]:
    from django.core.management import call_command
    from django.db import connection

    from controlplane.demo import demo_registry_load, demo_users_load
    from controlplane.models import RoutingTableVersion
    from telemetry.partitions import partitions_ensure
    from telemetry.rollups import rollups_rebuild

    started = time.monotonic()
    call_command("migrate", "--noinput", verbosity=0)
    demo_registry_load()
    demo_users_load()
    now = datetime.now(UTC)
    first = (now - timedelta(days=DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [first + timedelta(days=i) for i in range(DAYS)]
    partitions_ensure(first.date(), now.date() + timedelta(days=1))
    v2 = RoutingTableVersion.objects.get(number=2).activated_at
    assert v2 is not None
    connection.close()
    from telemetry.demo_traffic import hour_weight

    scale = ROWS / sum(hour_weight(d + timedelta(hours=h)) for d in days for h in range(24))
    jobs = [(url, w, days[w::2], scale, v2) for w in range(2)]
    # Secondary indexes are built once after the load (a sort) instead of row by row.
    indexes = _secondary_indexes_drop()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        written = sum(pool.map(_generate_days, jobs))
    generated = time.monotonic() - started
    with connection.cursor() as cursor:
        for definition in indexes:
            cursor.execute(_index_recursive(definition))
        cursor.execute("ANALYZE telemetry_decision")
        cursor.execute("ANALYZE telemetry_outcome")
    mark = time.monotonic()
    rollup_rows = rollups_rebuild(start=first, end=now + timedelta(hours=1))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE telemetry_rollup_hourly")
    return {
        "rows": written,
        "generate_s": round(generated, 1),
        "index_and_analyze_s": round(mark - started - generated, 1),
        "rollups_s": round(time.monotonic() - mark, 1),
        "rollup_rows": rollup_rows,
    }


def measure() -> dict[str, Any]:
    from django.test import Client

    from telemetry.models import DecisionRecord
    from telemetry.views import _charts
    from tests.factories import user_create

    client = Client()
    user = user_create("Viewer", username=f"bench-{int(time.time())}")
    client.force_login(user)

    def timed(url: str, **headers: Any) -> float:
        samples = []
        response = client.get(url, **headers)  # warm-up
        assert response.status_code == 200, (url, response.status_code)
        for _ in range(REPEAT):
            began = time.perf_counter()
            response = client.get(url, **headers)
            samples.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200
        return round(statistics.median(samples), 1)

    htmx = {"HTTP_HX_REQUEST": "true"}
    overview = timed("/?range=30d")
    partials = {
        target: timed("/?range=30d", HTTP_HX_TARGET=target, **htmx)
        for target in ["dashboard", "budgets", *(f"chart-{c.name}" for c in _charts("overview"))]
    }
    explorer = timed("/decisions/?range=30d")
    explorer_filtered = timed("/decisions/?range=30d&task_class=sql-generation&tier=2")
    task_class_page = timed("/dashboards/task-classes/sql-generation/?range=30d")

    # One streamed export of the last ~6 days (about a million rows).
    export_from = datetime.now(UTC) - timedelta(days=6)
    expected = DecisionRecord.objects.filter(created_at__gte=export_from).count()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    response = client.get(f"/decisions/export.csv?range=custom&start={export_from:%Y-%m-%dT%H:%M}")
    lines = sum(chunk.count(b"\n") for chunk in response.streaming_content)
    export_s = time.perf_counter() - began
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {
        "overview_ms": overview,
        "partial_ms": max(partials.values()),
        "partials_ms": partials,
        "explorer_ms": explorer,
        "explorer_filtered_ms": explorer_filtered,
        "task_class_page_ms": task_class_page,
        "export": {
            "rows": lines - 1,
            "expected_rows": expected,
            "seconds": round(export_s, 1),
            "rows_per_s": round((lines - 1) / export_s),
            "max_rss_growth_mb": round(grown_mb, 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="Dashboard benchmark at BENCH_DASH_ROWS decisions (default 5,000,000); "
        "writes bench/results/dashboards.json. See the module docstring."
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        default=os.environ.get("BENCH_DASH_FRESH") == "1",
        help=f"drop and rebuild the {DB_NAME} database (also BENCH_DASH_FRESH=1)",
    )
    fresh = parser.parse_args(argv).fresh
    url, created = database_url(fresh=fresh)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_HTTPS", "0")
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    import django

    django.setup()
    from django.db import connection

    loaded: dict[str, Any] = {"reused": True}
    has_rows = False
    if not created:
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass('telemetry_rollup_hourly') IS NOT NULL")
            if cursor.fetchone()[0]:
                cursor.execute("SELECT count(*) FROM telemetry_rollup_hourly")
                has_rows = cursor.fetchone()[0] > 0
    if not has_rows:
        loaded = load(url)
        print(f"loaded {loaded}", flush=True)
    else:
        from django.core.management import call_command

        call_command("migrate", "--noinput", verbosity=0)
        # A database loaded before the index fix holds its indexes on the parents only.
        loaded["indexes_repaired"] = indexes_repair()
    invalid = indexes_invalid()
    assert not invalid, f"invalid indexes after loading: {invalid}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT sum(decisions) FROM telemetry_rollup_hourly")
        rows = int(cursor.fetchone()[0] or 0)
    # The machine may be shared: keep the load average beside the figures.
    load_before = [round(x, 2) for x in os.getloadavg()]
    measured = measure()
    machine = {
        "cpus": os.cpu_count(),
        "loadavg_1_5_15_before": load_before,
        "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
    }
    results = {"rows": rows, **measured, "load": loaded, "machine": machine, "targets": TARGETS}
    results["meets_targets"] = all(results[k] <= v for k, v in TARGETS.items())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
