"""A hard limit holds under concurrency: real gunicorn (2 workers), real HTTP, real PostgreSQL.

Many clients post decisions and report their outcomes against a nearly exhausted hard
limit. Each worker's recorder holds worst cases out of its own budget leases
(telemetry/budgets.py); this checks, by sampling while the load runs and at the end, that
spent + reserved never passes the limit by more than one request's worst case, that the
limit was actually reached (429s), and that the books balance exactly: spent = opening +
charged outcomes; reserved = what the leases hold = once the workers closed their leases,
the holds of the decisions whose outcome never came.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.live_server import live_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

LIMIT = Decimal("5.00")
SPENT = Decimal("4.00")  # room for about a hundred decisions below
TASK_CLASS = "multi-step-reasoning"  # routed to gpt-4o: 2.50 in / 10.00 out per Mtok
INPUT_TOKENS = 2000
CLIENTS = 16
ROUNDS = 25
LEASE_S = 0.5  # the workers' lease lifetime, short so the test sees them close


@dataclass
class Server:
    url: str
    db_url: str
    secret: str
    budget_id: int


_BUDGET_SETUP = (
    "from decimal import Decimal\n"
    "from django.utils import timezone\n"
    "from controlplane import services\n"
    "from controlplane.models import BudgetSpend, Team\n"
    "b = services.budget_create(name='demo-hard', scope='team',"
    " team=Team.objects.get(slug='demo'), period='month',"
    f" limit_usd=Decimal('{LIMIT}'), soft_limit_pct=Decimal('100'),"
    " hard_action='block')\n"
    "BudgetSpend.objects.create(budget=b, period_start=b.period_start(timezone.now()),"
    f" spent_usd=Decimal('{SPENT}'))\n"
    "print(b.pk)\n"
)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    budget_ids: list[int] = []

    def create_budget(env: dict[str, str]) -> None:  # before gunicorn loads its snapshot
        out = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", _BUDGET_SETUP],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        budget_ids.append(int(out.split()[-1]))

    env = {"SWITCHYARD_RECORD_TIMEOUT_S": "10", "SWITCHYARD_BUDGET_LEASE_S": str(LEASE_S)}
    with live_server("budgets", env, create_budget) as started:
        yield Server(started.url, started.db_url, started.secret, budget_ids[0])


@dataclass
class Tally:
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> None:
        with self.lock:
            self.statuses[what] = self.statuses.get(what, 0) + 1


def _client(server: Server, number: int, tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {server.secret}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        for i in range(ROUNDS):
            body = {"task_class": TASK_CLASS, "input_tokens": INPUT_TOKENS}
            response = client.post("/api/v1/decisions", json=body)
            tally.count(f"decide {response.status_code}")
            if response.status_code == 429:
                error = response.json()["error"]
                if error["code"] != "budget_exceeded":
                    tally.errors.append(response.text)
                continue
            if response.status_code != 201:
                tally.errors.append(response.text)
                continue
            decision = response.json()
            if (number + i) % 4 == 0:
                continue  # some outcomes never arrive: their reservations stay held
            attempt = {
                "model": decision["model"]["slug"],
                "status": "ok",
                "latency_ms": 50,
                "input_tokens": INPUT_TOKENS,
                "output_tokens": decision["max_output_tokens"] // (1 + i % 3),
            }
            outcome = client.post(
                f"/api/v1/decisions/{decision['decision_id']}/outcome",
                json={"attempts": [attempt], "final_status": "ok"},
            )
            tally.count(f"outcome {outcome.status_code}")
            if outcome.status_code != 200:
                tally.errors.append(outcome.text)


def _committed(conn: psycopg.Connection[Any], budget_id: int) -> Decimal:
    row = conn.execute(
        "SELECT coalesce(sum(spent_usd + reserved_usd), 0) FROM controlplane_budgetspend "
        "WHERE budget_id = %s",
        [budget_id],
    ).fetchone()
    assert row is not None
    return Decimal(row[0])


def test_spent_plus_reserved_never_passes_a_hard_limit_by_more_than_one_worst_case(
    server: Server,
) -> None:
    tally = Tally()
    samples: list[Decimal] = []
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(server.db_url, autocommit=True) as conn:
            while not stop.is_set():
                samples.append(_committed(conn, server.budget_id))
                time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clients = [
        threading.Thread(target=_client, args=(server, n, tally), daemon=True)
        for n in range(CLIENTS)
    ]
    for t in clients:
        t.start()
    for t in clients:
        t.join(300)
    stop.set()
    sampler.join(10)

    assert not tally.errors, tally.errors[:5]
    assert tally.statuses.get("decide 201", 0) > 20, tally.statuses
    assert tally.statuses.get("decide 429", 0) > 0, tally.statuses  # the limit was reached
    assert tally.statuses.get("outcome 200", 0) > 10, tally.statuses
    time.sleep(LEASE_S + 1.5)  # idle workers close their leases, giving back what is unused
    with psycopg.connect(server.db_url) as conn:
        row = conn.execute(
            "SELECT max((h->>1)::numeric), "
            "       coalesce(sum((h->>1)::numeric) FILTER (WHERE o.decision_id IS NULL), 0) "
            "FROM telemetry_decision d CROSS JOIN jsonb_array_elements(d.budget_holds) h "
            "JOIN controlplane_budgetlease l ON l.id = (h->>0)::bigint AND l.budget_id = %s "
            "LEFT JOIN telemetry_outcome o ON o.decision_id = d.id",
            [server.budget_id],
        ).fetchone()
        assert row is not None
        worst, unreported = Decimal(row[0] or 0), Decimal(row[1])
        assert unreported > 0  # unreported decisions still hold their worst case
        leases = conn.execute(
            "SELECT coalesce(sum(amount_usd - coalesce(unused_usd, 0) - settled_usd), 0), "
            "count(*) FILTER (WHERE unused_usd IS NULL) "
            "FROM controlplane_budgetlease WHERE budget_id = %s",
            [server.budget_id],
        ).fetchone()
        assert leases is not None
        lease_held, still_open = Decimal(leases[0]), leases[1]
        assert still_open == 0
        final = _committed(conn, server.budget_id)
        spend = conn.execute(
            "SELECT spent_usd, reserved_usd FROM controlplane_budgetspend WHERE budget_id = %s",
            [server.budget_id],
        ).fetchone()
        assert spend is not None
        charged = conn.execute(
            "SELECT coalesce(sum(o.cost_usd), 0) FROM telemetry_outcome o WHERE o.team = 'demo'"
        ).fetchone()
        assert charged is not None
    # The books balance (module doc).
    assert Decimal(spend[0]) == SPENT + Decimal(charged[0])
    assert Decimal(spend[1]) == lease_held == unreported
    assert worst > 0
    assert samples and max(samples) <= LIMIT + worst, (max(samples), worst)
    assert final <= LIMIT + worst
