"""Comparing two routing-table versions, and proposals, as diffs of routes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from controlplane import services
from evaluation import services as evaluation_services
from tests import factories

pytestmark = pytest.mark.django_db


def _second_version(registry: dict[str, Any]) -> Any:
    draft = services.routing_version_draft_create(note="cheaper triage")
    services.route_set(
        version=draft,
        task_class=registry["triage"],
        primary=registry["mid"],
        fallbacks=["big-cloud"],
        escalate_confidence_below=Decimal("0.7"),
        strategy="learned",
    )
    return draft


def test_compare_shows_route_level_changes(registry: dict[str, Any], role_client: Any) -> None:
    draft = _second_version(registry)
    client = role_client("Viewer")
    body = client.get(f"/registry/routing/compare?from=1&to={draft.number}").content.decode()
    assert body.count('data-testid="route-change"') == 1  # redact is unchanged: left out
    assert "triage" in body and "redact" not in body.split('id="route-diff"')[1]
    for expected in (
        'small-local</span> ⇒ <span class="add">mid-cloud',
        "+ confidence_below:0.700",
        "learned",
        "− mid-cloud",
    ):
        assert expected in body, expected
    # Without arguments: the newest version against the one it was based on.
    default = client.get("/registry/routing/compare").content.decode()
    assert "v1 → v2" in default and 'data-testid="route-change"' in default
    assert client.get("/registry/routing/compare?from=1&to=99").status_code == 404
    assert client.get("/registry/routing/compare?from=x&to=%00").status_code == 200
    assert role_client(None).get("/registry/routing/compare").status_code == 302  # sign in


def test_proposals_queue_shows_the_diff_inline(
    registry: dict[str, Any], role_client: Any, django_assert_max_num_queries: Any
) -> None:
    evaluation_services.proposal_create_manual(
        task_class=registry["triage"],
        to_model=registry["mid"],
        user=factories.user_create("Reviewer"),
        rationale="Try the mid tier.",
    )
    client = role_client("Viewer")
    client.get("/proposals/")
    with django_assert_max_num_queries(10):
        body = client.get("/proposals/").content.decode()
    assert 'data-testid="route-change"' in body
    assert 'small-local</span> ⇒ <span class="add">mid-cloud' in body
