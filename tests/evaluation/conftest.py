"""Evaluation fixtures: the replay fleet over HTTP, a fleet-backed registry, decisions.

Requests come from the project's generated workload (``evaluation.workload``); nothing is
read from outside the repository. A RouteLLM-format recording, where a test needs one, is a
small synthetic directory written by :func:`routellm_dir_write`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from evaluation.fleet import RunningFleet, fleet_start
from evaluation.models import GraderConfig
from evaluation.workload import WorkloadItem, workload_items
from telemetry.ids import uuid7, uuid7_time
from telemetry.models import DecisionOutcome, DecisionRecord
from tests import factories
from tests.browser import roles_ensure

REPO_ROOT = Path(__file__).resolve().parents[2]
REASONING = "multi-step-reasoning"


@pytest.fixture(scope="session")
def reasoning_items() -> tuple[WorkloadItem, ...]:
    """Generated arithmetic word problems with numeric references (mixed difficulty)."""
    return workload_items(REASONING)


@pytest.fixture(scope="session")
def eval_fleet() -> Iterator[RunningFleet]:
    with fleet_start(latency_scale=0.0) as running:
        yield running


ROUTELLM_COLUMNS = (
    "prompt",
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "gpt-4-1106-preview",
    "mistralai/Mixtral-8x7B-Instruct-v0.1_response",
    "gpt-4-1106-preview_response",
    "reference_answer",
)


def routellm_dir_write(directory: Path, rows: int = 12) -> list[dict[str, str]]:
    """A tiny synthetic recording in the RouteLLM layout: ``gsm8k_responses.csv`` (quoted
    multi-line answers, weak right on even rows, strong on all but every fourth) and one
    ``mmlu/mmlu_<domain>.csv``. Returns the GSM8K rows written."""
    import csv

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(rows):
        a, b = 3 + i, 7 + 2 * i
        weak_ok, strong_ok = i % 2 == 0, i % 4 != 3
        weak = a + b if weak_ok else a + b + 1
        strong = a + b if strong_ok else a * b
        written.append(
            {
                ROUTELLM_COLUMNS[0]: f"Tom has {a} red and  {b} blue marbles. How many in all?",
                ROUTELLM_COLUMNS[1]: str(weak_ok),
                ROUTELLM_COLUMNS[2]: str(strong_ok),
                ROUTELLM_COLUMNS[3]: f" He has {a} + {b} marbles.\n#### {weak}\n",
                ROUTELLM_COLUMNS[4]: f"Adding them:\n{a} + {b} = {strong}.",
                ROUTELLM_COLUMNS[5]: str(a + b),
            }
        )
    with (directory / "gsm8k_responses.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=ROUTELLM_COLUMNS)
        writer.writeheader()
        writer.writerows(written)
    (directory / "mmlu").mkdir(exist_ok=True)
    (directory / "mmlu" / "mmlu_astronomy.csv").write_text(
        "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\n"
        '"Which planet is largest?\nA. Mars\nB. Jupiter",False,True\n',
        encoding="utf-8",
    )
    return written


def eval_registry_create(fleet_url: str) -> dict[str, Any]:
    """Three fleet models (tier 1 local, tier 2 and 3 cloud) and two reasoning classes fed
    with the generated word problems (skill profiles: llama ≈ 0.70, mistral ≈ 0.95,
    gpt-4o ≈ 0.97 correct on the difficulty mix).

    * ``math-practice`` (target 0.75) routed to the tier-3 model: the tier-2 model is good
      enough, so a downgrade is proposed.
    * ``math-strict`` (target 0.95) routed to the tier-2 model: the tier-1 model falls far
      short, so no downgrade may be proposed.
    """
    roles_ensure()
    base_url = f"{fleet_url}/v1"
    since = timezone.now() - timedelta(days=400)
    llama = factories.model_create(
        slug="llama-3.1-8b-local",
        provider_model="llama-3.1-8b-local",
        base_url=base_url,
        tier=1,
        locality="local",
        input_usd_per_mtok="0.03",
        output_usd_per_mtok="0.06",
        price_effective_from=since,
    )
    mistral = factories.model_create(
        slug="mistral-small-hosted",
        provider_model="mistral-small-hosted",
        base_url=base_url,
        tier=2,
        locality="cloud",
        input_usd_per_mtok="0.20",
        output_usd_per_mtok="0.60",
        price_effective_from=since,
    )
    gpt4o = factories.model_create(
        slug="gpt-4o",
        provider_model="gpt-4o",
        base_url=base_url,
        tier=3,
        locality="cloud",
        input_usd_per_mtok="2.50",
        output_usd_per_mtok="10.00",
        price_effective_from=since,
    )
    practice = factories.task_class_create(
        slug="math-practice", quality_target=Decimal("0.750"), prompt_retention_days=30
    )
    strict = factories.task_class_create(
        slug="math-strict", quality_target=Decimal("0.950"), prompt_retention_days=30
    )
    for task_class in (practice, strict):
        GraderConfig.objects.create(task_class=task_class, kind="numeric")
    version = factories.routing_table_create({practice: (gpt4o, []), strict: (mistral, ["gpt-4o"])})
    return {
        "llama": llama,
        "mistral": mistral,
        "gpt4o": gpt4o,
        "practice": practice,
        "strict": strict,
        "version": version,
    }


@pytest.fixture
def eval_registry(db: Any, eval_fleet: RunningFleet) -> dict[str, Any]:
    return eval_registry_create(eval_fleet.url)


def decisions_create(
    *,
    task_class: str,
    model: Any,
    prompts: Sequence[str],
    references: Sequence[str | None] | None = None,
    classification: str = "",
    pii_types: Sequence[str] = (),
    age: timedelta = timedelta(hours=1),
    retention: timedelta = timedelta(days=30),
    escalated: Sequence[bool] | None = None,
    output_tokens: int = 120,
) -> list[DecisionRecord]:
    """Decision records with stored prompts (and outcomes when ``escalated`` is given)."""
    now = timezone.now()
    rows = []
    outcomes = []
    for index, prompt in enumerate(prompts):
        ident = uuid7(int((now - age).timestamp() * 1000) - index)
        created = uuid7_time(ident)
        reference = references[index] if references is not None else None
        rows.append(
            DecisionRecord(
                id=ident,
                created_at=created,
                request_id=f"req-{uuid.uuid4().hex[:12]}",
                application_id=1,
                application="app-eval",
                team="team-eval",
                task_class=task_class,
                model=model.slug,
                provider_model=model.provider_model,
                tier=model.tier,
                locality=model.locality,
                strategy="rule",
                confidence=0.9,
                reason="route",
                routing_table_version=1,
                data_classification=classification,
                pii_types=list(pii_types),
                input_tokens=200,
                context_tokens=0,
                max_output_tokens=512,
                decision_us=150,
                prompt=prompt,
                prompt_expires_at=created + retention,
                metadata={"reference_answer": reference} if reference is not None else {},
            )
        )
        if escalated is not None:
            outcomes.append(
                DecisionOutcome(
                    decision_id=ident,
                    decision_created_at=created,
                    reported_at=created,
                    application_id=1,
                    application="app-eval",
                    team="team-eval",
                    task_class=task_class,
                    routed_model=model.slug,
                    routed_tier=model.tier,
                    final_model=model.slug,
                    final_tier=model.tier,
                    final_status="ok",
                    attempts=[],
                    attempt_count=2 if escalated[index] else 1,
                    escalated=escalated[index],
                    input_tokens=200,
                    output_tokens=output_tokens,
                    cost_usd=Decimal("0.001"),
                    latency_ms=400,
                )
            )
    DecisionRecord.objects.bulk_create(rows)
    if outcomes:
        DecisionOutcome.objects.bulk_create(outcomes)
    return rows


def workload_decisions(
    items: Sequence[WorkloadItem],
    *,
    task_class: str,
    model: Any,
    count: int,
    offset: int = 0,
    with_reference: bool = True,
    **extra: Any,
) -> list[DecisionRecord]:
    """Decisions whose stored prompts are generated items (references in metadata)."""
    chosen = items[offset : offset + count]
    assert len(chosen) == count, "not enough generated items"
    return decisions_create(
        task_class=task_class,
        model=model,
        prompts=[item.prompt for item in chosen],
        references=[item.reference for item in chosen] if with_reference else None,
        **extra,
    )


# --- a real Celery worker -----------------------------------------------------------------


class Worker:
    """``celery -A controlplane worker`` in its own process group, on a private queue."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            str(Path(sys.executable).parent / "celery"),
            "-A",
            "controlplane",
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            "2",
            "--pool",
            "prefork",
            "-Q",
            self.env["CELERY_TASK_DEFAULT_QUEUE"],
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"eval-{uuid.uuid4().hex[:8]}@%h",
        ]
        self.proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery worker exited; see {self.log}")
            if b"ready." in self.log.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"celery worker did not become ready; see {self.log}")

    def kill(self) -> None:
        """SIGKILL the whole process group: the worker dies mid-task, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


@pytest.fixture(scope="session")
def worker_env(django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a worker that sees the test database and a private queue."""
    from django.db import connection

    broker = os.environ.get("CELERY_BROKER_URL")
    database_url = os.environ.get("DATABASE_URL")
    if not broker or not database_url:
        pytest.fail("needs DATABASE_URL and CELERY_BROKER_URL (run through controlplane.stack)")
    base, _, query = database_url.partition("?")
    test_url = base.rsplit("/", 1)[0] + "/" + connection.settings_dict["NAME"]
    if query:
        test_url += "?" + query
    queue = f"eval-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    env.update(
        DATABASE_URL=test_url,
        DJANGO_SETTINGS_MODULE="tests.settings",
        CELERY_TASK_DEFAULT_QUEUE=queue,
        DATABASE_CONN_MAX_AGE="0",
        SWITCHYARD_SWEEP_CONCURRENCY="8",
    )
    return env


@pytest.fixture
def celery_queue(worker_env: dict[str, str]) -> Iterator[str]:
    """Route this process's task messages to the private queue the test worker consumes."""
    from controlplane.celery import app

    queue = worker_env["CELERY_TASK_DEFAULT_QUEUE"]
    previous = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    app.amqp.queues.select_add(queue)
    try:
        yield queue
    finally:
        app.conf.task_default_queue = previous


@pytest.fixture
def celery_worker_process(
    worker_env: dict[str, str], celery_queue: str, tmp_path: Path
) -> Iterator[Worker]:
    worker = Worker(worker_env, tmp_path / "worker.log")
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
