"""End to end on a real Celery worker (real Redis broker, test database) and the HTTP fleet."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from controlplane.models import RoutingTableVersion, VersionStatus
from evaluation import services, tasks
from evaluation.fleet import RunningFleet, fleet_start
from evaluation.models import Proposal, SweepKind, SweepRun, SweepSample, SweepStatus
from evaluation.workload import WorkloadItem
from tests import factories
from tests.evaluation.conftest import (
    Worker,
    eval_registry_create,
    wait_for,
    workload_decisions,
)

pytestmark = pytest.mark.slow


def test_scheduled_sweep_on_a_worker_proposes_and_approval_goes_live(
    transactional_db: Any,
    eval_fleet: RunningFleet,
    reasoning_items: Sequence[WorkloadItem],
    celery_worker_process: Worker,
) -> None:
    reg = eval_registry_create(eval_fleet.url)
    workload_decisions(reasoning_items, task_class="math-practice", model=reg["gpt4o"], count=200)
    workload_decisions(
        reasoning_items, task_class="math-strict", model=reg["mistral"], count=200, offset=200
    )

    tasks.tier_downgrade_sweep.delay(sample_size=200)  # what Celery beat sends weekly

    run = wait_for(
        lambda: SweepRun.objects.filter(
            status__in=[SweepStatus.COMPLETED, SweepStatus.FAILED]
        ).first(),
        timeout=120,
    )
    assert run.status == SweepStatus.COMPLETED, run.error_message
    assert run.samples_done == 400
    proposal = Proposal.objects.get()  # math-practice only; never the 65 % weak model
    assert proposal.task_class == reg["practice"] and proposal.to_model == reg["mistral"]
    assert run.summary["classes"]["math-strict"]["outcome"] == "below target"

    reviewer = factories.user_create("Reviewer")
    services.proposal_approve(proposal=proposal, user=reviewer, comment="good evidence")

    active = RoutingTableVersion.objects.get(status=VersionStatus.ACTIVE)
    assert active.number == reg["version"].number + 1
    route = active.routes.select_related("primary").get(task_class=reg["practice"])
    assert route.primary.slug == "mistral-small-hosted" and route.fallbacks == ["gpt-4o"]


@pytest.fixture
def slow_fleet(reasoning_items: Sequence[WorkloadItem]) -> Iterator[RunningFleet]:
    """Simulated latencies at 1/10: a 400-request sweep takes several seconds."""
    with fleet_start(latency_scale=0.1) as running:
        yield running


def test_killing_the_worker_mid_sweep_leaves_no_duplicate_and_the_run_resumes(
    transactional_db: Any,
    slow_fleet: RunningFleet,
    reasoning_items: Sequence[WorkloadItem],
    worker_env: dict[str, str],
    celery_queue: str,
    tmp_path: Path,
) -> None:
    reg = eval_registry_create(slow_fleet.url)
    workload_decisions(reasoning_items, task_class="math-practice", model=reg["gpt4o"], count=400)
    first = Worker(worker_env, tmp_path / "worker-1.log")
    first.start()
    try:
        run, _ = services.sweep_run_create(
            kind=SweepKind.TIER_DOWNGRADE, params={"sample_size": 400}
        )
        wait_for(lambda: SweepRun.objects.get(pk=run.pk).samples_done >= 64, timeout=60)
    finally:
        first.kill()  # SIGKILL mid-sweep: no cleanup code runs
    run.refresh_from_db()
    assert run.status == SweepStatus.RUNNING and 64 <= run.samples_done < 400
    assert not Proposal.objects.exists()

    assert services.sweep_reap_stale(now=timezone.now(), stale_seconds=0) == 1
    run.refresh_from_db()
    assert run.status == SweepStatus.FAILED and "stale heartbeat" in run.error_message

    second = Worker(worker_env, tmp_path / "worker-2.log")
    second.start()
    try:
        services.sweep_run_resume(run=run)
        wait_for(
            lambda: SweepRun.objects.get(pk=run.pk).status == SweepStatus.COMPLETED, timeout=120
        )
        # A redelivered copy of the original message (or a second worker) is a no-op.
        tasks.sweep_run_execute.delay(run.pk)
        wait_for(lambda: b"not claimed" in (tmp_path / "worker-2.log").read_bytes(), timeout=30)
    finally:
        second.stop()

    run.refresh_from_db()
    assert run.claims == 2
    samples = SweepSample.objects.filter(run=run)
    assert samples.count() == 400 == run.samples_done
    assert samples.values("decision_id").distinct().count() == 400
    assert Proposal.objects.count() == 1
