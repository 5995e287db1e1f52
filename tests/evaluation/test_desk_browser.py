"""A Reviewer works the desk in headless Chromium with the keyboard: claim, edit, approve."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from evaluation.models import Handoff, HandoffStatus
from tests.browser import browser_page, login, roles_ensure, screenshot

pytestmark = pytest.mark.browser


def test_reviewer_edits_and_approves_with_the_keyboard(
    live_server: Any, registry: dict[str, Any], api_key: str
) -> None:
    roles_ensure()
    client = Client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key}"}
    ids = []
    for prompt, draft in (
        ("My parcel is late and I am furious", "Dear customer,\nsorry for the delay.\n"),
        ("Second, newer request", "Newer draft.\n"),
    ):
        decided = client.post(
            "/api/v1/decisions",
            {"task_class": "triage", "prompt": prompt},
            content_type="application/json",
            **auth,
        )
        assert decided.status_code == 201, decided.content
        submitted = client.post(
            "/api/v1/handoffs",
            {"decision_id": decided.json()["decision_id"], "draft": draft, "sla_minutes": 20},
            content_type="application/json",
            **auth,
        )
        assert submitted.status_code == 201, submitted.content
        ids.append(submitted.json()["id"])
    reviewer = User.objects.create_user("rita", password="review-pass-123")
    reviewer.groups.add(Group.objects.get(name="Reviewer"))

    with browser_page() as page:
        login(page, live_server.url, "rita", "review-pass-123")
        page.click("nav >> text=Handoffs")
        page.wait_for_selector("#handoff-queue")
        assert page.inner_text("[data-testid=queue-depth]").startswith("2")
        rows = page.locator("#handoff-queue tbody tr")
        assert "sorry for the delay" in rows.nth(0).inner_text()  # oldest first
        screenshot(page, "desk-queue")

        page.keyboard.press("n")  # claim the next (oldest) item
        page.wait_for_selector("[data-testid=claim-state]:has-text('Claimed by you')")
        assert ids[0] in page.url
        assert "small-local" in page.inner_text("#decision-path")  # the path beside the draft

        page.keyboard.press("e")  # into the text box
        assert page.evaluate("document.activeElement.id") == "final_text"
        page.keyboard.press("Control+End")
        page.keyboard.type("We refund the shipping.")
        page.keyboard.press("Control+Enter")  # approve with the edits
        page.wait_for_selector("[data-testid=handoff-status]:has-text('edited and approved')")
        diff = page.inner_text("[data-testid=diff]")
        assert "+We refund the shipping." in diff
        screenshot(page, "desk-approved-with-edits")
        # Resource failures are in failed_requests (which leaves out the missing favicon).
        errors = page.console_errors  # type: ignore[attr-defined]
        assert not [e for e in errors if not e.startswith("Failed to load resource")]
        assert not page.failed_requests  # type: ignore[attr-defined]

    handoff = Handoff.objects.get(public_id=ids[0])
    assert handoff.status == HandoffStatus.EDITED and handoff.reviewed_by == reviewer
    assert handoff.final_text == "Dear customer,\nsorry for the delay.\nWe refund the shipping."
    assert Handoff.objects.get(public_id=ids[1]).status == HandoffStatus.PENDING
