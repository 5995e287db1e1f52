"""Decision API benchmark: the real server (gunicorn, production settings) on loopback.

1. A fresh database ``switchyard_bench`` on the server in DATABASE_URL: migrated, demo
   registry loaded, one API key.
2. gunicorn with production settings (DEBUG off) on 127.0.0.1:8300.
3. Ceiling: wrk against a bare Django JSON view (/healthz) on the same server.
4. Saturation: wrk POSTing a realistic mix of task classes and prompts (200–2,000
   characters, some with personal data) to /api/v1/decisions.
5. Steady: an open-loop generator at 300 requests/s; p50/p95/p99 from scheduled send time.
6. Afterwards the stored decisions are counted: every 2xx must have its row (``lost``).
7. Strategies: every route switched (a new routing-table version) to the rule, to
   ``learned`` (an active stored-format router per class: three models × 4,096 hashed
   features, weights drawn at random — the cost does not depend on them), to ``semantic``
   (ten semantic routes of 20 generated utterances per class); two such rounds, 10 s of wrk
   saturation each, each strategy's figure the mean of its two. The issue's target:
   learned ≥ 0.8 × rule in the same run.

Run with ``make bench`` (or ``python -m controlplane.stack exec .venv/bin/python
bench/bench_decision_api.py``). Writes bench/results/decision_api.json.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import percentile, steady_run  # noqa: E402

PORT = int(os.environ.get("BENCH_PORT", "8300"))
RESULTS = ROOT / "bench" / "results" / "decision_api.json"
TASK_MIX = [
    ("ticket-triage", 30),
    ("intent-detection", 15),
    ("field-extraction", 12),
    ("short-summary", 12),
    ("policy-check", 8),
    ("sql-generation", 8),
    ("multi-step-reasoning", 5),
    ("pii-redaction", 4),
    ("long-report-synthesis", 3),
    ("customer-reply-draft", 3),
]
WORDS = (
    "customer order shipment invoice refund account password reset printer network outage "
    "latency dashboard report quarterly revenue forecast contract clause renewal escalation "
    "priority queue ticket agent warehouse inventory delivery schedule billing subscription "
    "upgrade downgrade cancel error timeout login mobile app browser cache support team"
).split()
PII = [
    "Contact me at jane.doe@example.com.",
    "Call +44 20 7946 0958 tomorrow.",
    "Card 4111 1111 1111 1111 was charged twice.",
    "IBAN GB82 WEST 1234 5698 7654 32.",
]


def bench_url(base: str) -> str:
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path="/switchyard_bench"))


def prepare_database(base_url: str) -> str:
    admin = urlunsplit(urlsplit(base_url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = 'switchyard_bench' AND pid <> pg_backend_pid()"
        )
        conn.execute("DROP DATABASE IF EXISTS switchyard_bench")
        conn.execute("CREATE DATABASE switchyard_bench")
    return bench_url(base_url)


def make_bodies(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    classes = [c for c, w in TASK_MIX for _ in range(w)]
    bodies = []
    for i in range(count):
        length = rng.randint(200, 2000)
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < length:
            words.append(rng.choice(WORDS))
        text = " ".join(words)[:length]
        if rng.random() < 0.08:
            text = text[: length - 60] + " " + rng.choice(PII)
        body = {
            "task_class": rng.choice(classes),
            "prompt": text,
            "metadata": {"bench": True, "i": i},
        }
        if rng.random() < 0.3:
            body["team"] = rng.choice(["support", "analytics", "platform"])
        bodies.append(json.dumps(body).encode())
    return bodies


def wrk_lua(bodies: list[bytes], path: Path, secret: str) -> None:
    entries = ",\n".join("[==[" + b.decode() + "]==]" for b in bodies)
    path.write_text(
        "local bodies = {\n" + entries + "\n}\n"
        "local i = 0\n"
        "wrk.method = 'POST'\n"
        f"wrk.headers['Authorization'] = 'Bearer {secret}'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
        "request = function()\n"
        "  i = i + 1\n"
        "  return wrk.format(nil, '/api/v1/decisions', nil, bodies[(i % #bodies) + 1])\n"
        "end\n"
    )


def run_wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script:
        cmd[1:1] = ["-s", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "rps": rps,
        "raw": out,
    }


def stored_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM telemetry_decision").fetchone()[0]


def budget_holding(url: str) -> dict:
    """How the budgets were held: decisions with holds, and the leases it took."""
    with psycopg.connect(url) as conn:
        held = conn.execute(
            "SELECT count(*) FROM telemetry_decision WHERE budget_holds <> '[]'::jsonb"
        ).fetchone()[0]
        leases = conn.execute("SELECT count(*) FROM controlplane_budgetlease").fetchone()[0]
    return {"decisions_with_holds": held, "budget_leases_taken": leases}


def stored_ids(url: str, ids: list[str]) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id::text FROM telemetry_decision WHERE id = ANY(%s::uuid[])", [ids]
        ).fetchall()
    return {r[0] for r in rows}


STRATEGY_SETUP = """
import random
from controlplane import services
from controlplane.models import ModelEndpoint, Route, RoutingTableVersion, VersionStatus
from evaluation.models import LearnedRouter
from evaluation.workload import TASK_CLASSES, workload_items
from routing.learned import HashingSpec
from routing.models import SemanticRoute
from django.utils import timezone

strategy = "{strategy}"
active = RoutingTableVersion.objects.get(status=VersionStatus.ACTIVE)
routes = list(Route.objects.filter(version=active).select_related("task_class", "primary"))
rng = random.Random(5)
spec = HashingSpec()
now = timezone.now()
for route in routes:
    tc = route.task_class
    models = [route.primary.slug, *route.fallbacks]
    if strategy == "learned" and not LearnedRouter.objects.filter(task_class=tc).exists():
        LearnedRouter.objects.create(
            task_class=tc, version=1, status="active", hashing=spec.as_dict(), threshold=0.8,
            coefficients={{
                m: {{"intercept": 1.0, "weights": [rng.gauss(0, 0.3) for _ in range(spec.width)]}}
                for m in models
            }},
            l2=0.0, window_start=now, window_end=now,
        )
    if strategy == "semantic" and not SemanticRoute.objects.filter(task_class=tc).exists():
        for i, other in enumerate(TASK_CLASSES):
            SemanticRoute.objects.create(
                task_class=tc, name=other,
                model=ModelEndpoint.objects.get(slug=models[i % len(models)]),
                utterances=[item.prompt for item in workload_items(other, size=20)],
            )
draft = services.routing_version_draft_create(based_on=active)
for route in Route.objects.filter(version=draft):
    route.strategy = strategy
    route.save(update_fields=["strategy"])
services.routing_version_activate(version=draft)
"""


def strategy_switch(py: str, env: dict[str, str], strategy: str) -> None:
    """Every route of the active table switched to ``strategy`` (a new version)."""
    script = STRATEGY_SETUP.format(strategy=strategy)
    subprocess.run([py, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True)
    time.sleep(2)  # every worker's generation check (0.5 s) and snapshot rebuild


def decision_prepare(var_dir: Path) -> tuple[dict[str, str], str, str]:
    """A fresh bench database (migrated, demo registry, budgets wide open, one API key that
    may act for the bench teams) and the server's environment: (env, db url, key)."""
    db_url = prepare_database(os.environ["DATABASE_URL"])
    prom_dir = var_dir / "prometheus"
    prom_dir.mkdir()
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": db_url,
            "DJANGO_DEBUG": "0",
            "DJANGO_HTTPS": "0",
            "SWITCHYARD_VAR_DIR": str(var_dir),
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
            "LOG_LEVEL": "WARNING",
        }
    )
    py = sys.executable
    subprocess.run([py, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    subprocess.run(
        [py, "manage.py", "demo_load", "--registry-only"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # The load reports no outcomes, so every decision's worst case stays held for the
    # reservation TTL: with the demo limits the run would measure 429s. Budgets keep applying
    # (every decision still reserves against each of them), with room for the whole run.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE controlplane_budget SET limit_usd = 1000000000")
    out = subprocess.run(
        [py, "manage.py", "create_api_key", "bench-client", "--scopes", "decide,report,read"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    secret = out.strip().splitlines()[-1]
    # 30 % of the bodies name a team: the bench application may act for every team.
    grant = (
        "from controlplane.models import Application, Team\n"
        "app = Application.objects.get(slug='bench-client')\n"
        "for slug in ('support', 'analytics', 'platform'):\n"
        "    team, _ = Team.objects.get_or_create(slug=slug, defaults={'name': slug})\n"
        "    app.acts_for_teams.add(team)\n"
    )
    subprocess.run([py, "manage.py", "shell", "-c", grant], cwd=ROOT, env=env, check=True)
    return env, db_url, secret


def decision_server(
    env: dict[str, str], port: int, workers: int, root: Path = ROOT
) -> subprocess.Popen[bytes]:
    """The decision API as production runs it (gunicorn, gthread workers), from the checkout
    at ``root``; returns once it answers /readyz."""
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "controlplane.wsgi:application",
            "-c",
            str(root / "controlplane" / "gunicorn_conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        ],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            return server
        except OSError:
            if server.poll() is not None:
                message = f"the server on port {port} exited with {server.returncode}"
                raise RuntimeError(message) from None
            if time.time() > deadline:
                os.killpg(server.pid, signal.SIGTERM)
                raise
            time.sleep(0.3)


def main() -> int:
    if not shutil.which("wrk"):
        print("wrk is missing: `make bench` installs it (apt-get install wrk)")
        return 1
    var_dir = Path(tempfile.mkdtemp(prefix="sy-bench-"))
    env, db_url, secret = decision_prepare(var_dir)
    py = sys.executable
    workers = os.environ.get("WEB_CONCURRENCY", "2")
    gunicorn = decision_server(env, PORT, int(workers))
    result: dict = {}
    try:
        bodies = make_bodies(400)
        script = var_dir / "decisions.lua"
        wrk_lua(bodies, script, secret)
        # Warm-up: imports, snapshot, connections in every worker.
        run_wrk(f"http://127.0.0.1:{PORT}", 3, 16, script)
        ceiling = run_wrk(f"http://127.0.0.1:{PORT}/healthz", 10, 32)
        before = stored_count(db_url)
        saturation = run_wrk(f"http://127.0.0.1:{PORT}", 15, 32, script)
        time.sleep(1)
        after_sat = stored_count(db_url)
        acked_sat = saturation["requests"] - saturation["non_2xx"]
        steady = steady_run(
            "127.0.0.1",
            PORT,
            "/api/v1/decisions",
            {"Authorization": f"Bearer {secret}"},
            bodies,
            rate=300,
            seconds=20,
            connections=32,
        )
        ids = [json.loads(b)["decision_id"] for b in steady.bodies_2xx]
        found = stored_ids(db_url, ids)
        lost_steady = len(set(ids) - found)
        # wrk stops mid-flight: a request it abandoned may be stored without being counted,
        # never the reverse; so lost = acknowledged minus stored, floored at zero.
        lost_sat = max(0, acked_sat - (after_sat - before))
        sat_rps = saturation["rps"] * (acked_sat / max(1, saturation["requests"]))
        result = {
            "saturation_rps": round(sat_rps, 1),
            "ceiling_rps": round(ceiling["rps"], 1),
            "ratio": round(sat_rps / ceiling["rps"], 3),
            "steady_rps": round(len(steady.latencies_ms) / steady.seconds, 1),
            "p50_ms": round(percentile(steady.latencies_ms, 50), 2),
            "p95_ms": round(percentile(steady.latencies_ms, 95), 2),
            "p99_ms": round(percentile(steady.latencies_ms, 99), 2),
            "lost": lost_sat + lost_steady,
            "saturation": {k: v for k, v in saturation.items() if k != "raw"},
            "steady": {
                "sent": steady.sent,
                "statuses": steady.statuses,
                "errors": steady.errors,
                "stored_checked": len(ids),
            },
            "stored_during_saturation": after_sat - before,
            "budgets": budget_holding(db_url),
            "workers": int(workers),
            "targets": {
                "p50_ms": 3,
                "p99_ms": 10,
                "saturation_rps": 1000,
                "ratio": 0.30,
                "lost": 0,
            },
        }
        # Every route on one strategy at a time (a new routing-table version each), measured
        # alike, in two rounds so that drift over the run (the tables growing, the machine)
        # falls on every strategy. (The saturation figure above is the demo registry's own
        # mix of strategies, not all-rule, so it is not one of them.)
        by_strategy: dict[str, list[float]] = {}
        for _round in range(2):
            for strategy in ("rule", "learned", "semantic"):
                strategy_switch(py, env, strategy)
                run_wrk(f"http://127.0.0.1:{PORT}", 2, 16, script)  # warm the new snapshot
                run = run_wrk(f"http://127.0.0.1:{PORT}", 10, 32, script)
                ok = run["requests"] - run["non_2xx"]
                by_strategy.setdefault(strategy, []).append(
                    round(run["rps"] * ok / max(1, run["requests"]), 1)
                )
        means = {k: sum(v) / len(v) for k, v in by_strategy.items()}
        result["saturation_by_strategy"] = {
            "rps": by_strategy,
            "learned_vs_rule": round(means["learned"] / means["rule"], 3),
            "semantic_vs_rule": round(means["semantic"] / means["rule"], 3),
            "target_learned_vs_rule": 0.8,
        }
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"decision API: saturation {result['saturation_rps']}/s, ceiling "
            f"{result['ceiling_rps']}/s, ratio {result['ratio']}, steady "
            f"{result['steady_rps']}/s p50 {result['p50_ms']} ms p95 {result['p95_ms']} ms "
            f"p99 {result['p99_ms']} ms, lost {result['lost']}; saturation by strategy "
            f"{json.dumps(result['saturation_by_strategy'])}"
        )
    finally:
        os.killpg(gunicorn.pid, signal.SIGTERM)
        gunicorn.wait(20)
        shutil.rmtree(var_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
