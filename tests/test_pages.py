"""Every page and every htmx partial answers on an empty database and with one decision.

The URL patterns are read from the resolver, so a new page is covered without editing this
file: a page must carry ``role_required`` (its role is read from the view), and a page with
URL arguments must say here where its arguments come from. For each page:

* signed out → redirect to the login page; signed in with a role that may not see it → 403;
* every role that may see it → 200 (GET pages), or a redirect/404, never a 5xx (POST actions);
* every htmx target on the page (each swappable ``<section>``/``<div>`` id, and each
  ``hx-get`` link with its ``hx-target``) → 200 as an htmx request.

Worlds: (a) only roles and users; (a') plus a monthly budget per scope that has seen no
spend; (b) a registry and one decision, without and with its outcome (and a proposal, a
failed output check, a handoff and a failed webhook delivery).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.urls.converters import IntConverter, UUIDConverter

from controlplane import services
from controlplane.models import Application, Budget, Team
from controlplane.roles import GRANTED_BY, ROLE_NAMES
from evaluation import services as evaluation_services
from evaluation.models import Handoff, WebhookDelivery, WebhookEndpoint
from tests import factories

pytestmark = pytest.mark.django_db

# Not pages: JSON APIs (schemathesis covers them), the admin site, health probes, sign-in.
API_PREFIXES = ("api/", "admin/", "metrics")
PUBLIC = {"healthz", "readyz", "login", "logout"}


@dataclass(frozen=True, slots=True)
class Page:
    name: str
    route: str
    role: str
    kwargs: dict[str, Any]  # argument name → its path converter


def _walk(patterns: list[URLPattern | URLResolver], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        else:
            yield prefix + str(entry.pattern), entry


def pages() -> list[Page]:
    found = []
    for route, pattern in _walk(get_resolver().url_patterns):
        if route.startswith(API_PREFIXES) or pattern.name in PUBLIC:
            continue
        role = getattr(pattern.callback, "required_role", None)
        assert role is not None, f"{route} ({pattern.name}) is a page without role_required"
        found.append(Page(str(pattern.name), route, role, dict(pattern.pattern.converters)))
    return found


def test_the_enumeration_finds_the_pages() -> None:
    names = {p.name for p in pages()}
    assert {"home", "decisions", "proposals", "sweeps", "registry", "api-keys"} <= names
    assert {"handoffs", "handoff-detail", "webhook-deliveries"} <= names


# Where each page's URL arguments come from: the world (None when it has no such object).
ARGUMENTS: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    "task-class-dashboard": lambda w: {"slug": w["task_class"]} if "task_class" in w else None,
    "model-dashboard": lambda w: {"slug": w["model"]} if "model" in w else None,
    "decision-detail": lambda w: {"decision_id": w["decision_id"]} if "decision_id" in w else None,
    "routing-version": lambda w: {"number": w["version"]} if "version" in w else None,
    "routing-version-activate": lambda w: {"number": w["version"]} if "version" in w else None,
    "proposal-detail": lambda w: {"public_id": w["proposal"]} if "proposal" in w else None,
    "proposal-review": lambda w: {"public_id": w["proposal"]} if "proposal" in w else None,
    "sweep-resume": lambda w: None,
    "handoff-detail": lambda w: {"public_id": w["handoff"]} if "handoff" in w else None,
    "handoff-act": lambda w: {"public_id": w["handoff"]} if "handoff" in w else None,
    "webhook-resend": lambda w: {"delivery_id": w["delivery"]} if "delivery" in w else None,
}


def _missing(converter: Any) -> Any:
    """A well-formed value that names nothing."""
    if isinstance(converter, IntConverter):
        return 999
    if isinstance(converter, UUIDConverter):
        return uuid.UUID(int=7)
    return "no-such-thing"


def _url(page: Page, world: dict[str, Any]) -> tuple[str, bool]:
    """The page's URL and whether its object exists."""
    if not page.kwargs:
        return reverse(page.name), True
    assert page.name in ARGUMENTS, f"say where {page.name}'s URL arguments come from"
    kwargs = ARGUMENTS[page.name](world)
    if kwargs is not None:
        return reverse(page.name, kwargs=kwargs), True
    missing = {name: _missing(converter) for name, converter in page.kwargs.items()}
    return reverse(page.name, kwargs=missing), False


class _Targets(HTMLParser):
    """Swappable containers (ids of sections and divs) and hx-get links with their target."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: set[tuple[str, str]] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag in {"section", "div"} and values.get("id"):
            self.ids.add(values["id"])
        if "hx-get" in values:
            target = values.get("hx-target", "").lstrip("#") or values.get("id", "")
            self.links.add((values["hx-get"], target))


def _clients() -> dict[str | None, Client]:
    clients: dict[str | None, Client] = {}
    for role in (*ROLE_NAMES, None):
        client = Client()
        client.force_login(factories.user_create(role))
        clients[role] = client
    return clients


HTMX = {"HTTP_HX_REQUEST": "true"}


def _check_every_page(world: dict[str, Any]) -> int:
    """Request every page as every role; returns the number of requests made."""
    clients = _clients()
    anonymous = Client()
    requests = 0
    for page in pages():
        url, exists = _url(page, world)
        allowed = sorted(GRANTED_BY[page.role])
        refused = [r for r in (*ROLE_NAMES, None) if r not in GRANTED_BY[page.role]]
        probe = clients[allowed[0]].get(url)
        post_only = probe.status_code == 405
        method = "post" if post_only else "get"

        response = getattr(anonymous, method)(url)
        assert response.status_code == 302 and "/login/" in response["Location"], url
        for role in refused:
            response = getattr(clients[role], method)(url)
            assert response.status_code == 403, (url, role, response.status_code)
        for role in allowed:
            response = getattr(clients[role], method)(url)
            requests += 1
            if post_only:
                # An action with an empty form: refused politely, never a server error.
                assert response.status_code in {302, 400, 404}, (url, role, response.status_code)
            elif exists:
                assert response.status_code == 200, (url, role, response.status_code)
                if response.streaming:  # the CSV export: it must also finish streaming
                    assert b"".join(response.streaming_content).startswith(b"decision_id")
            else:
                assert response.status_code == 404, (url, role, response.status_code)
        if post_only or not exists or probe.streaming:
            continue
        requests += _check_partials(clients[allowed[0]], url, probe.content.decode())
    return requests


def _check_partials(client: Client, url: str, html: str) -> int:
    parser = _Targets()
    parser.feed(html)
    requests = 0
    for target in sorted(parser.ids):
        response = client.get(url, HTTP_HX_TARGET=target, **HTMX)
        assert response.status_code == 200, (url, target, response.status_code)
        requests += 1
    for link, target in sorted(parser.links):
        absolute = urljoin(url, link.replace("&amp;", "&"))
        assert urlsplit(absolute).netloc == "", absolute
        response = client.get(absolute, HTTP_HX_TARGET=target, **HTMX)
        assert response.status_code == 200, (absolute, target, response.status_code)
        body = response.content.decode()
        if target:
            # A partial answers with the element it replaces (or the page keeps its place).
            assert re.search(rf'id="{re.escape(target)}"', body), (absolute, target)
        requests += 1
    return requests


def test_every_page_on_an_empty_database() -> None:
    assert _check_every_page({}) > 0


def test_every_page_with_budgets_that_have_no_spend() -> None:
    team = Team.objects.create(slug="quiet-team", name="Quiet team")
    app = Application.objects.create(slug="quiet-app", name="Quiet app", team=team)
    task_class = factories.task_class_create(slug="quiet-class")
    for scope, owner in (
        ("global", {}),
        ("team", {"team": team}),
        ("application", {"application": app}),
        ("task_class", {"task_class": task_class}),
    ):
        for period in ("month", "day"):
            services.budget_create(
                name=f"{scope}-{period}",
                scope=scope,
                period=period,
                limit_usd=Decimal("100"),
                **owner,
            )
    assert Budget.objects.count() == 8
    _check_every_page({"task_class": "quiet-class"})


def _one_decision(registry: dict[str, Any], api_key: str, *, outcome: bool) -> dict[str, Any]:
    client = Client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key}"}
    response = client.post(
        "/api/v1/decisions",
        {"task_class": "triage", "prompt": "The printer is on fire"},
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 201, response.content
    decision_id = response.json()["decision_id"]
    if outcome:
        attempt = {
            "model": "small-local",
            "status": "ok",
            "latency_ms": 120,
            "input_tokens": 12,
            "output_tokens": 30,
        }
        reported = client.post(
            f"/api/v1/decisions/{decision_id}/outcome",
            {"attempts": [attempt], "final_status": "ok", "quality_score": 0.9},
            content_type="application/json",
            **auth,
        )
        assert reported.status_code == 200, reported.content
    services.budget_create(
        name="team-a-monthly", scope="team", team=registry["team"], period="month",
        limit_usd=Decimal("50"),
    )  # fmt: skip
    proposal = evaluation_services.proposal_create_manual(
        task_class=registry["triage"],
        to_model=registry["mid"],
        user=factories.user_create("Reviewer"),
        rationale="One decision is all the evidence there is.",
    )
    # A handoff with a failed output check and one webhook delivery (the reviewers' desk).
    checked = client.post(
        f"/api/v1/decisions/{decision_id}/checks",
        {"output": "Mail me at someone@example.com", "input": "The printer is on fire"},
        content_type="application/json",
        **auth,
    )
    assert checked.status_code == 201 and not checked.json()["passed"], checked.content
    handoff = client.post(
        "/api/v1/handoffs",
        {"decision_id": decision_id, "draft": "Turn it off.", "context": {"ticket": 7}},
        content_type="application/json",
        **auth,
    )
    assert handoff.status_code == 201, handoff.content
    stored = Handoff.objects.get()
    endpoint = WebhookEndpoint.objects.create(
        application=registry["app"], url="http://127.0.0.1:9/hook", secret="s"
    )
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint, handoff=stored, event="handoff.approved", body="{}", status="failed"
    )
    return {
        "task_class": "triage",
        "model": "small-local",
        "decision_id": decision_id,
        "version": registry["version"].number,
        "proposal": proposal.public_id,
        "handoff": stored.public_id,
        "delivery": delivery.pk,
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("outcome", [False, True], ids=["no-outcome", "with-outcome"])
def test_every_page_with_one_decision(
    registry: dict[str, Any], api_key: str, outcome: bool
) -> None:
    from tests.browser import roles_ensure

    roles_ensure()
    _check_every_page(_one_decision(registry, api_key, outcome=outcome))
