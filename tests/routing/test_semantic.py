"""Semantic routing: the default hashed TF-IDF backend matches held-out paraphrases of
project-generated utterances to the right route, the engine routes by the match (or by the
rule, saying why), and the decision API serves it from stored semantic routes."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from controlplane import services as registry_services
from controlplane.models import Application, AuditLog, Team
from routing.engine import (
    DecisionRequest,
    ModelInfo,
    RouteInfo,
    TaskClassInfo,
    decide,
    snapshot_build,
)
from routing.models import SemanticRoute
from routing.semantic import (
    HashedTfidf,
    SentenceTransformerBackend,
    backend_factory,
    semantic_router_build,
)
from routing.semantic import (
    SemanticRoute as SemanticRouteInfo,
)
from routing.snapshot import registry_cache
from telemetry.models import DecisionRecord
from tests import factories
from tests.browser import roles_ensure
from tests.conftest import client_for

# Generated utterances: a topic's verbs and objects combined with framings.
TOPICS = {
    "billing": (
        ["refund", "charge", "invoice", "bill", "payment", "subscription fee"],
        ["my card was charged twice", "the amount on my statement is wrong",
         "I want my money back", "cancel the renewal and reimburse me"],
    ),
    "legal": (
        ["contract clause", "indemnification terms", "liability cap", "non-disclosure agreement",
         "governing law section", "termination provision"],
        ["is it enforceable", "what does it oblige us to", "review it for risks",
         "does it comply with regulation"],
    ),
    "code": (
        ["python traceback", "SQL query", "unit test", "stack overflow error", "null pointer",
         "regular expression"],
        ["fix the bug", "why does it fail", "refactor it", "make it faster"],
    ),
}  # fmt: skip
FRAMES = ["Please help: {a}, {b}.", "Question about the {a} - {b}?", "{b} ({a})", "Hi! {a}: {b}"]


def _utterances(topic: str, rng: random.Random, n: int) -> list[str]:
    objects, asks = TOPICS[topic]
    combos = list(itertools.product(objects, asks, FRAMES))
    rng.shuffle(combos)
    return [frame.format(a=a, b=b) for a, b, frame in combos[:n]]


def _routes(rng: random.Random, n: int = 12, threshold: float = 0.3) -> list[SemanticRouteInfo]:
    model = {"billing": "local", "legal": "big", "code": "mid"}
    return [
        SemanticRouteInfo(topic, model[topic], threshold, tuple(_utterances(topic, rng, n)))
        for topic in TOPICS
    ]


def test_hashed_backend_matches_held_out_paraphrases() -> None:
    rng = random.Random(7)
    router = semantic_router_build("support", _routes(rng), HashedTfidf())
    held_out = random.Random(99)  # other combinations than the examples (mostly)
    right = total = 0
    for topic in TOPICS:
        for text in _utterances(topic, held_out, 30):
            match = router.match(text)
            assert match is not None
            right += match.route.name == topic and match.matched
            total += 1
    print(f"held-out paraphrases routed right: {right}/{total}")
    assert right / total >= 0.9
    # Unrelated requests stay under the threshold: the rule decides them.
    for text in ["What will the weather be like in Lisbon tomorrow?", "Tell me a joke"]:
        match = router.match(text)
        assert match is not None and not match.matched, (text, match)
    # Inflections without stemming: character grams.
    refunded = router.match("refunded")
    assert refunded is not None and refunded.route.name == "billing"
    assert router.match("") is None and router.match(None) is None


def test_backend_vectors_are_normalised_and_idf_fitted_on_the_examples() -> None:
    backend = HashedTfidf(dim=512)
    backend.fit(["the refund", "the contract", "the bug"])
    vectors = backend.embed(["the refund", "", "refund"])
    assert vectors.shape == (3, 512)
    assert float((vectors[0] ** 2).sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(abs(vectors[1]).sum()) == 0.0  # nothing to embed
    # "the" is in every example: it weighs less than "refund" in the similarity.
    assert float(vectors[0] @ vectors[2]) > 0.6


def test_backend_settings_and_build_errors() -> None:
    assert backend_factory("hashed")().name == "hashed"
    st = backend_factory("sentence-transformers:/models/minilm")()
    assert isinstance(st, SentenceTransformerBackend) and st.path == "/models/minilm"
    with pytest.raises(ValueError, match="unknown semantic backend"):
        backend_factory("openai:text-embedding-3")
    with pytest.raises(ValueError, match="unknown semantic backend"):
        backend_factory("sentence-transformers:")
    with pytest.raises(ValueError, match="utterances"):
        semantic_router_build("c", [SemanticRouteInfo("a", "m", 0.3, ("  ",))], HashedTfidf())
    with pytest.raises(ValueError, match="threshold"):
        semantic_router_build("c", [SemanticRouteInfo("a", "m", 1.5, ("x",))], HashedTfidf())
    with pytest.raises(ValueError, match="duplicate"):
        route = SemanticRouteInfo("a", "m", 0.3, ("x",))
        semantic_router_build("c", [route, route], HashedTfidf())


def _model(slug: str, tier: int, locality: str, price: float, window: int = 32000) -> ModelInfo:
    return ModelInfo(
        slug=slug, provider="p", base_url="http://127.0.0.1:1/v1", provider_model=slug,
        version="1", tier=tier, locality=locality, context_window=window,
        max_output_tokens=1024, status="active", input_usd_per_mtok=price,
        output_usd_per_mtok=price,
    )  # fmt: skip


def _snapshot(strategy: str = "semantic", mid_window: int = 32000) -> Any:
    router = semantic_router_build("support", _routes(random.Random(7)), HashedTfidf())
    return snapshot_build(
        version=4,
        models=[
            _model("local", 1, "local", 0.1),
            _model("mid", 2, "cloud", 1.0, mid_window),
            _model("big", 3, "cloud", 10.0),
        ],
        task_classes=[TaskClassInfo(slug="support", default_output_cap=256)],
        routes=[
            RouteInfo(
                task_class="support", primary="mid", fallbacks=("big", "local"), strategy=strategy
            )
        ],
        quality={("local", "support"): 0.71, ("big", "support"): 0.93},
        semantic={"support": router},
    )


def _req(prompt: str, **extra: Any) -> DecisionRequest:
    return DecisionRequest(task_class="support", input_tokens=2000, prompt=prompt, **extra)


def test_engine_routes_by_the_matched_semantic_route() -> None:
    snap = _snapshot()
    billing = decide(_req("Please help: my card was charged twice for the invoice."), snap)
    assert billing.model.slug == "local" and billing.strategy == "semantic"
    assert billing.confidence == 0.71  # the model's calibrated estimate on the class
    assert [f.model.slug for f in billing.fallbacks] == ["mid", "big"]  # chain order
    assert "Semantic route 'billing'" in billing.reason and "billing" in billing.reason
    selected = next(c for c in billing.candidates if c.model == "local")
    assert selected.reason.startswith("selected (semantic route 'billing', similarity")

    legal = decide(_req("Is the indemnification terms clause enforceable?"), snap)
    assert legal.model.slug == "big" and legal.strategy == "semantic"

    other = decide(_req("What will the weather be like in Lisbon tomorrow?"), snap)
    assert other.model.slug == "mid" and other.strategy == "rule"
    assert other.reason.startswith("No semantic route matched (best")

    # Personal data: local only, whatever the semantic match says.
    personal = decide(_req("Hi! contract clause: is it enforceable", pii_found=("email",)), snap)
    assert personal.model.slug == "local" and personal.strategy == "policy"
    # A rule route ignores its semantic routes.
    rule = decide(_req("Please help: refund, I want my money back."), _snapshot("rule"))
    assert rule.model.slug == "mid" and rule.strategy == "rule"


def test_matched_route_whose_model_is_not_eligible_falls_back_to_the_rule() -> None:
    snap = _snapshot(mid_window=1000)  # the code route's model cannot take 2,000 tokens
    code = decide(_req("Please help: python traceback, fix the bug."), snap)
    # The primary (mid) is itself rejected: the chain's next model serves it, by the rule.
    assert code.strategy == "fallback" and code.model.slug == "big"
    # The code route names the local model here, which is eligible; a route to a model
    # outside the chain is never taken.
    outside = semantic_router_build(
        "support",
        [
            SemanticRouteInfo(
                "code", "elsewhere", 0.3, tuple(_utterances("code", random.Random(1), 8))
            )
        ],
        HashedTfidf(),
    )
    snap = snapshot_build(
        version=4,
        models=list(snap.models.values()),
        task_classes=list(snap.task_classes.values()),
        routes=list(snap.routes.values()),
        semantic={"support": outside},
    )
    missed = decide(_req("Please help: python traceback, fix the bug."), snap)
    assert missed.strategy == "fallback"
    eligible = decide(
        DecisionRequest(task_class="support", input_tokens=100, prompt="SQL query: fix the bug"),
        snap,
    )
    assert eligible.strategy == "rule" and eligible.model.slug == "mid"
    assert "matched" in eligible.reason and "elsewhere is not eligible" in eligible.reason


# --------------------------------------------------------------------------------------------
# Stored semantic routes, served by the decision API
# --------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_decision_api_serves_stored_semantic_routes(client: Client) -> None:
    roles_ensure()
    local = factories.model_create(slug="small-local", tier=1, locality="local")
    mid = factories.model_create(slug="mid-cloud", tier=2, locality="cloud")
    big = factories.model_create(slug="big-cloud", tier=3, locality="cloud")
    support = factories.task_class_create(slug="support")
    version = registry_services.routing_version_draft_create(based_on=None)
    version.routes.all().delete()
    registry_services.route_set(
        version=version, task_class=support, primary=mid,
        fallbacks=["big-cloud", "small-local"], strategy="semantic",
    )  # fmt: skip
    registry_services.routing_version_activate(version=version)
    rng = random.Random(3)
    SemanticRoute.objects.create(
        task_class=support, name="billing", model=local, utterances=_utterances("billing", rng, 12)
    )
    legal = SemanticRoute.objects.create(
        task_class=support, name="legal", model=big, utterances=_utterances("legal", rng, 12)
    )
    assert AuditLog.objects.filter(object_type="semanticroute", action="create").count() == 2
    team = Team.objects.create(slug="team-s", name="Team S")
    app = Application.objects.create(slug="app-s", name="App S", team=team)
    registry_cache.invalidate()
    _, secret = registry_services.api_key_create(application=app, scopes=["decide", "read"])

    def post(prompt: str) -> dict[str, Any]:
        response = client.post(
            "/api/v1/decisions",
            {"task_class": "support", "prompt": prompt},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {secret}",
        )
        assert response.status_code == 201, response.content
        body: dict[str, Any] = response.json()
        return body

    billing = post("Question about the refund - I want my money back?")
    assert billing["strategy"] == "semantic" and billing["model"]["slug"] == "small-local"
    assert "Semantic route 'billing'" in billing["reason"]
    stored = DecisionRecord.objects.get(id=billing["decision_id"])
    assert stored.strategy == "semantic"
    assert any("semantic route 'billing'" in c["reason"] for c in stored.path["candidates"])
    page = client_for("Viewer").get("/dashboards/task-classes/support/").content.decode()
    assert 'data-testid="semantic-routes"' in page and "<td>billing</td>" in page
    weather = post("What will the weather be like in Lisbon tomorrow?")
    assert weather["strategy"] == "rule" and weather["model"]["slug"] == "mid-cloud"
    # An edit reaches the deciders with the registry generation: the legal route now
    # sends to the mid model.
    legal.model = mid
    legal.save()
    registry_cache.invalidate()
    assert post("Is the liability cap enforceable?")["model"]["slug"] == "mid-cloud"


@pytest.mark.django_db
def test_a_semantic_route_needs_utterances() -> None:
    local = factories.model_create(slug="small-local", tier=1, locality="local")
    support = factories.task_class_create(slug="support")
    route = SemanticRoute(task_class=support, name="empty", model=local, utterances=[" "])
    with pytest.raises(ValidationError, match="utterance"):
        route.full_clean()
