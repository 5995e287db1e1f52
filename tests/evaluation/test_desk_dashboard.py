"""The desk's numbers: stats, the overview's "needs attention" list, and the demo's desk."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from evaluation.demo import demo_desk_load
from evaluation.models import Handoff, OutputCheck, OutputCheckPolicy
from evaluation.selectors import handoff_stats
from evaluation.services import handoffs
from tests import factories

# Decisions are stored by the recorder on its own connection (committed): flush after.
pytestmark = pytest.mark.django_db(transaction=True)


def _decisions(api_key: str, count: int) -> None:
    client = Client()
    for i in range(count):
        response = client.post(
            "/api/v1/decisions",
            {"task_class": "triage", "prompt": f"Request number {i}"},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {api_key}",
        )
        assert response.status_code == 201, response.content


def test_demo_desk_has_pending_handoffs_and_a_failed_check(
    registry: dict[str, Any], api_key: str
) -> None:
    _decisions(api_key, 4)
    loaded = demo_desk_load(task_class="triage")
    assert loaded == {"handoffs": 4, "checks": 1}
    check = OutputCheck.objects.get()
    assert not check.passed and set(check.rules) == {"personal_data", "forbidden_term"}
    assert check.handoff is not None and check.handoff.source == "output_check"
    assert Handoff.objects.filter(status="pending").count() == 4
    assert demo_desk_load(task_class="triage") == {"handoffs": 0, "checks": 0}  # idempotent
    assert OutputCheckPolicy.objects.get().on_failure == "handoff"

    stats = handoff_stats()
    assert stats["depth"] == 4 and stats["breached"] == 1
    assert stats["age_p95_s"] >= stats["age_p50_s"] > 0
    viewer = Client()
    viewer.force_login(factories.user_create("Viewer"))
    overview = viewer.get("/").content.decode()
    assert "1 handoff past its SLA on the reviewers&#x27; desk" in overview
    assert 'href="/handoffs/"' in overview


def test_review_rates_and_check_failure_rates(registry: dict[str, Any], api_key: str) -> None:
    _decisions(api_key, 4)
    demo_desk_load(task_class="triage")
    rita = factories.user_create("Reviewer")
    items = list(Handoff.objects.order_by("created_at"))
    for item, action in zip(items, ("approve", "edit", "reject", "approve"), strict=True):
        assert handoffs.handoff_claim(handoff=item, user=rita)
        if action == "reject":
            handoffs.handoff_reject(handoff=item, user=rita, reason="Wrong tone")
        else:
            text = item.draft + ("\nP.S." if action == "edit" else "")
            handoffs.handoff_approve(handoff=item, user=rita, final_text=text)
    Handoff.objects.filter(pk=items[0].pk).update(due_at=timezone.now() - timedelta(hours=1))
    stats = handoff_stats()
    assert stats["depth"] == 0 and stats["breached"] == 0
    (row,) = stats["classes"]
    assert (row["total"], row["approved"], row["edited"], row["rejected"]) == (4, 2, 1, 1)
    assert row["approval_rate"] == 0.5 and row["rejection_rate"] == 0.25 and row["late"] == 1

    # 1 failed check of 1 is not enough evidence; 20 checks with 5 failures is (25 %).
    viewer = Client()
    viewer.force_login(factories.user_create("Viewer"))
    assert "Output check" not in viewer.get("/").content.decode()
    first = OutputCheck.objects.get()
    for i in range(19):
        OutputCheck.objects.create(
            decision_id=first.decision_id,
            decision_created_at=first.decision_created_at,
            application_id=first.application_id,
            task_class="triage",
            passed=i >= 4,
            rules=["forbidden_term"] if i < 4 else [],
            action="none",
        )
    stats = handoff_stats()
    rates = {f["rule"]: f["rate"] for f in stats["check_failures"]}
    assert stats["checks_total"] == 20 and rates["forbidden_term"] == pytest.approx(0.25)
    assert rates["personal_data"] == pytest.approx(0.05)
    overview = viewer.get("/").content.decode()
    assert "Output check forbidden_term failed 25% of 20 outputs" in overview
    assert "Output check personal_data" not in overview
