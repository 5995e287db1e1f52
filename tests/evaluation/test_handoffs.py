"""Human handoffs: the API (idempotency, tenants, hostile input), claims, review, the pages."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from controlplane import services as registry_services
from controlplane.models import Application
from evaluation.models import Handoff, HandoffStatus
from evaluation.services import handoffs
from evaluation.services.handoffs import HandoffNotClaimed, HandoffSubmission
from telemetry.ids import uuid7
from telemetry.models import DecisionRecord
from tests import factories

# Decisions are stored by the recorder on its own connection (committed): flush after.
pytestmark = pytest.mark.django_db(transaction=True)


def _auth(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def _decide(client: Client, secret: str, prompt: str = "Refund order 1142?") -> str:
    response = client.post(
        "/api/v1/decisions",
        {"task_class": "triage", "prompt": prompt},
        content_type="application/json",
        **_auth(secret),
    )
    assert response.status_code == 201, response.content
    return str(response.json()["decision_id"])


def _submit(client: Client, secret: str, body: Any, **extra: Any) -> Any:
    return client.post(
        "/api/v1/handoffs", body, content_type="application/json", **_auth(secret), **extra
    )


@pytest.fixture
def decision_id(registry: dict[str, Any], api_key: str) -> str:
    return _decide(Client(), api_key)


def test_submit_then_poll(api_key: str, decision_id: str) -> None:
    client = Client()
    body = {
        "decision_id": decision_id,
        "draft": "Dear customer,\nwe are sorry.",
        "context": {"customer_message": "Where is my refund?", "order": 1142},
        "sla_minutes": 30,
    }
    created = _submit(client, api_key, body)
    assert created.status_code == 201, created.content
    handoff = created.json()
    assert handoff["status"] == "pending" and handoff["sla_minutes"] == 30
    assert handoff["task_class"] == "triage" and handoff["team"] == "team-a"
    again = _submit(client, api_key, body)  # same body: the stored handoff, not a new one
    assert again.status_code == 200 and again.json()["id"] == handoff["id"]
    polled = client.get(f"/api/v1/handoffs/{handoff['id']}", **_auth(api_key))
    assert polled.status_code == 200 and polled.json()["draft"] == body["draft"]
    assert Handoff.objects.count() == 1


def test_idempotency_key_and_decision_conflicts(api_key: str, decision_id: str) -> None:
    client = Client()
    body = {"decision_id": decision_id, "draft": "one", "idempotency_key": "k-1"}
    assert _submit(client, api_key, body).status_code == 201
    other_body = _submit(client, api_key, {**body, "draft": "two"})
    assert other_body.status_code == 409
    error = other_body.json()["error"]
    assert error["code"] == "idempotency_conflict" and "idempotency_key" in error["fields"]
    # Without a key, the decision itself is the key: another draft for it conflicts.
    no_key = _submit(client, api_key, {"decision_id": decision_id, "draft": "three"})
    assert no_key.status_code == 409 and "decision_id" in no_key.json()["error"]["fields"]
    # The same key for another decision is refused too.
    second = _decide(client, api_key, "Another request")
    reused = _submit(
        client, api_key, {"decision_id": second, "draft": "one", "idempotency_key": "k-1"}
    )
    assert reused.status_code == 409
    assert Handoff.objects.count() == 1


def test_another_tenants_decision_is_not_found(
    registry: dict[str, Any], api_key: str, decision_id: str
) -> None:
    other_app = Application.objects.create(slug="app-b", name="B", team=registry["team"])
    _, stranger = registry_services.api_key_create(application=other_app, scopes=["report", "read"])
    client = Client()
    response = _submit(client, stranger, {"decision_id": decision_id, "draft": "hijack"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    mine = _submit(client, api_key, {"decision_id": decision_id, "draft": "legit"}).json()
    peek = client.get(f"/api/v1/handoffs/{mine['id']}", **_auth(stranger))
    assert peek.status_code == 404
    assert Handoff.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"draft": "nul \x00 inside"}, "draft"),
        ({"draft": "zero\u200bwidth"}, "draft"),
        ({"draft": "bidi \u202egnp.exe"}, "draft"),
        ({"draft": "bom \ufeff"}, "draft"),
        ({"draft": ""}, "draft"),
        ({"draft": "x" * 50_001}, "draft"),
        ({"draft": "ok", "context": {"k\x00": "v"}}, "context"),
        ({"draft": "ok", "context": {"k": "soft\u00adhyphen"}}, "context"),
        ({"draft": "ok", "context": {"k": {"nested": 1}}}, "context"),
        ({"draft": "ok", "sla_minutes": 0}, "sla_minutes"),
        ({"draft": "ok", "idempotency_key": "a\x07b"}, "idempotency_key"),
        ({"draft": "ok", "surprise": 1}, "surprise"),
    ],
    ids=[
        "nul",
        "zero-width",
        "bidi-override",
        "bom",
        "empty",
        "too-long",
        "nul-key",
        "soft-hyphen",
        "nested",
        "sla-zero",
        "bell-key",
        "unknown-field",
    ],
)
def test_hostile_bodies_are_refused_whole(
    api_key: str, decision_id: str, body: dict[str, Any], field: str
) -> None:
    response = _submit(Client(), api_key, {"decision_id": decision_id, **body})
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["status"] == 400 and error["code"] == "invalid"
    assert field in error["fields"], error
    assert Handoff.objects.count() == 0


def test_huge_and_malformed_bodies(api_key: str, decision_id: str) -> None:
    client = Client()
    huge = _submit(client, api_key, {"decision_id": decision_id, "draft": "x" * 1_100_000})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
    broken = client.post(
        "/api/v1/handoffs", b'{"decision_id": ', content_type="application/json", **_auth(api_key)
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "malformed_json"
    for bad_id in ("not-a-uuid", "00000000-0000-4000-8000-000000000000", "ｄｅｃｉｓｉｏｎ"):
        response = _submit(client, api_key, {"decision_id": bad_id, "draft": "x"})
        assert response.status_code == 404, (bad_id, response.content)
    assert Handoff.objects.count() == 0


def test_scopes_and_roles(registry: dict[str, Any], decision_id: str) -> None:
    _, reader = registry_services.api_key_create(application=registry["app"], scopes=["read"])
    client = Client()
    assert _submit(client, reader, {"decision_id": decision_id, "draft": "x"}).status_code == 403
    assert (
        _submit(Client(), "sy_nope", {"decision_id": decision_id, "draft": "x"}).status_code == 401
    )
    viewer = Client()
    viewer.force_login(factories.user_create("Viewer"))
    handoff = _handoff(decision_id)
    assert viewer.get(f"/api/v1/handoffs/{handoff.public_id}").status_code == 404
    reviewer = Client()
    reviewer.force_login(factories.user_create("Reviewer"))
    assert reviewer.get(f"/api/v1/handoffs/{handoff.public_id}").status_code == 200


def _handoff(
    decision_id: str, draft: str = "Dear customer,\nyour refund is on its way.\n"
) -> Handoff:
    record = DecisionRecord.objects.get(id=decision_id)
    handoff, created = handoffs.handoff_submit(
        record=record, submission=HandoffSubmission(draft=draft, context={})
    )
    assert created
    return handoff


# --- claims and review -------------------------------------------------------------------


def test_claim_approve_edit_reject(decision_id: str) -> None:
    handoff = _handoff(decision_id)
    rita, sam = factories.user_create("Reviewer"), factories.user_create("Reviewer")
    with pytest.raises(HandoffNotClaimed):
        handoffs.handoff_approve(handoff=handoff, user=rita)  # claim first
    assert handoffs.handoff_claim(handoff=handoff, user=rita)
    assert not handoffs.handoff_claim(handoff=handoff, user=sam)  # held
    with pytest.raises(HandoffNotClaimed):
        handoffs.handoff_approve(handoff=handoff, user=sam)
    edited = handoffs.handoff_approve(
        handoff=handoff,
        user=rita,
        final_text="Dear customer,\nyour refund of 20 EUR is on its way.\n",
    )
    assert edited.status == HandoffStatus.EDITED and edited.reviewed_by == rita
    assert "-your refund is on its way." in edited.diff
    assert "+your refund of 20 EUR is on its way." in edited.diff
    assert not handoffs.handoff_claim(handoff=edited, user=sam)  # resolved: nothing to claim


def test_approve_unchanged_and_reject_needs_a_reason(
    registry: dict[str, Any], api_key: str, decision_id: str
) -> None:
    first = _handoff(decision_id)
    rita = factories.user_create("Reviewer")
    handoffs.handoff_claim(handoff=first, user=rita)
    approved = handoffs.handoff_approve(handoff=first, user=rita, final_text=first.draft)
    assert approved.status == HandoffStatus.APPROVED and approved.diff == ""
    second = _handoff(_decide(Client(), api_key, "Second request"))
    handoffs.handoff_claim(handoff=second, user=rita)
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        handoffs.handoff_reject(handoff=second, user=rita, reason="   ")
    rejected = handoffs.handoff_reject(handoff=second, user=rita, reason="Promises a refund")
    assert rejected.status == HandoffStatus.REJECTED and rejected.reject_reason


def test_an_abandoned_claim_expires(decision_id: str) -> None:
    handoff = _handoff(decision_id)
    rita, sam = factories.user_create("Reviewer"), factories.user_create("Reviewer")
    assert handoffs.handoff_claim(handoff=handoff, user=rita)
    assert not handoffs.handoff_claim(handoff=handoff, user=sam)
    # Rita walks away; her claim runs out (as if SWITCHYARD_HANDOFF_CLAIM_S had passed).
    Handoff.objects.filter(pk=handoff.pk).update(
        claim_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert handoffs.handoff_claim(handoff=handoff, user=sam)
    with pytest.raises(HandoffNotClaimed):  # Rita's stale page cannot resolve Sam's item
        handoffs.handoff_approve(handoff=handoff, user=rita)
    done = handoffs.handoff_reject(handoff=handoff, user=sam, reason="Wrong customer")
    assert done.reviewed_by == sam


@pytest.mark.django_db(transaction=True)
def test_two_reviewers_racing_to_claim_one_wins(registry: dict[str, Any], api_key: str) -> None:
    from tests.browser import roles_ensure

    roles_ensure()
    client = Client()
    items = [_handoff(_decide(client, api_key, f"Request {i}")) for i in range(8)]
    rita, sam = factories.user_create("Reviewer"), factories.user_create("Reviewer")
    for handoff in items:
        barrier = threading.Barrier(2)
        results: dict[str, bool] = {}

        def claim(
            user: Any,
            name: str,
            handoff: Handoff = handoff,
            barrier: Any = barrier,
            results: dict[str, bool] = results,
        ) -> None:
            try:
                barrier.wait()
                results[name] = handoffs.handoff_claim(handoff=handoff, user=user)
            finally:
                connection.close()  # each thread has its own connection

        threads = [
            threading.Thread(target=claim, args=(rita, "rita")),
            threading.Thread(target=claim, args=(sam, "sam")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results.values()) == [False, True], results
        winner = rita if results["rita"] else sam
        assert Handoff.objects.get(pk=handoff.pk).claimed_by == winner
    # Claiming "the next item" with SKIP LOCKED never hands one item to both.
    Handoff.objects.update(claimed_by=None, claim_expires_at=None)
    got: list[Any] = []

    def take(user: Any) -> None:
        try:
            # None only when every unclaimed item is locked by the other reviewer (who
            # then claims it), so when both have stopped, everything has been claimed.
            while (found := handoffs.handoff_claim_next(user=user)) is not None:
                got.append(found.pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=take, args=(u,)) for u in (rita, sam)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == sorted(h.pk for h in items)


# --- pages -------------------------------------------------------------------------------


def test_queue_page_oldest_first_filters_and_bounded_queries(
    registry: dict[str, Any], api_key: str, django_assert_max_num_queries: Any
) -> None:
    client = Client()
    decision = DecisionRecord.objects.get(id=_decide(client, api_key))
    for i in range(60):
        Handoff.objects.create(
            decision_id=uuid7(),
            decision_created_at=decision.created_at,
            application_id=decision.application_id,
            application=decision.application,
            team="team-a" if i % 2 else "team-b",
            task_class="triage" if i % 3 else "refunds",
            source="api",
            draft=f"draft number {i:02d}",
            sla_minutes=30,
            due_at=timezone.now() + timedelta(minutes=30 - i),
            created_at=timezone.now() - timedelta(minutes=i),
            claimed_by=factories.user_create("Reviewer") if i == 5 else None,
            claim_expires_at=timezone.now() + timedelta(minutes=5) if i == 5 else None,
        )
    reviewer = Client()
    reviewer.force_login(factories.user_create("Reviewer"))
    reviewer.get("/handoffs/")  # warm the session and the role cache
    with django_assert_max_num_queries(12):
        response = reviewer.get("/handoffs/")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.index("draft number 59") < body.index("draft number 00")  # oldest first
    assert "overdue" in body and "60</strong> pending" in body
    with django_assert_max_num_queries(12):
        filtered = reviewer.get(
            "/handoffs/?task_class=refunds&team=team-b", HTTP_HX_REQUEST="true"
        ).content.decode()
    assert 'id="handoff-queue"' in filtered and "<html" not in filtered
    assert "draft number 00" in filtered and "draft number 06" in filtered
    assert "draft number 03" not in filtered and "draft number 02" not in filtered
    viewer = Client()
    viewer.force_login(factories.user_create("Viewer"))
    assert viewer.get("/handoffs/").status_code == 403


def test_desk_page_shows_the_path_and_reviews_with_htmx(decision_id: str) -> None:
    handoff = _handoff(decision_id)
    reviewer = Client()
    rita = factories.user_create("Reviewer")
    reviewer.force_login(rita)
    page = reviewer.get(f"/handoffs/{handoff.public_id}/").content.decode()
    assert "The decision's path" in page and "small-local" in page and "Unclaimed" in page
    url = f"/handoffs/{handoff.public_id}/act"
    claimed = reviewer.post(url, {"action": "claim"}, HTTP_HX_REQUEST="true").content.decode()
    assert "Claimed by you" in claimed and 'id="final_text"' in claimed
    done = reviewer.post(
        url,
        {"action": "approve", "final_text": "Dear customer,\r\nyour refund is late.\r\n"},
        HTTP_HX_REQUEST="true",
    ).content.decode()
    assert "edited and approved" in done and "+your refund is late." in done
    handoff.refresh_from_db()
    assert handoff.status == "edited" and handoff.final_text.endswith("late.\n")
    explorer = reviewer.get("/decisions/").content.decode()
    assert 'data-testid="explorer-handoff">handoff edited' in explorer
    decision_page = reviewer.get(f"/decisions/{decision_id}/").content.decode()
    assert "edited and approved" in decision_page and "open on the desk" in decision_page
    viewer = Client()
    viewer.force_login(factories.user_create("Viewer"))
    assert viewer.post(url, {"action": "claim"}).status_code == 403


def test_hostile_filters_and_forms_on_the_desk(decision_id: str) -> None:
    handoff = _handoff(decision_id)
    reviewer = Client()
    reviewer.force_login(factories.user_create("Reviewer"))
    for query in ("task_class=%00", "team=te%E2%80%8Bam-a", "task_class=" + "a" * 500):
        response = reviewer.get(f"/handoffs/?{query}")
        assert response.status_code == 200 and "draft" in response.content.decode().lower()
    assert reviewer.post("/handoffs/next", {"task_class": "\x00"}).status_code == 302
    url = f"/handoffs/{handoff.public_id}/act"
    page = reviewer.post(
        url, {"action": "approve", "final_text": "nul\x00"}, HTTP_HX_REQUEST="true"
    )
    assert "NUL characters are not allowed" in page.content.decode()
    page = reviewer.post(url, {"action": "reject", "reason": "nul\x00"}, HTTP_HX_REQUEST="true")
    assert "NUL characters are not allowed" in page.content.decode()
    page = reviewer.post(url, {"action": "reject", "reason": ""}, HTTP_HX_REQUEST="true")
    assert "Say why" in page.content.decode()
    page = reviewer.post(url, {"action": "<script>"}, HTTP_HX_REQUEST="true").content.decode()
    assert "Unknown action." in page and "<script>" not in page
    handoff.refresh_from_db()
    assert handoff.status == "pending" and handoff.reject_reason == ""
