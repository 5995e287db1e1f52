"""Learned routers trained on generated, graded decisions (the seeded workload answered as
the replay fleet's skill profiles say): training, storage as plain data, held-out metrics,
the proposal flow, live decisions, the command and the beat task."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from controlplane import services as registry_services
from controlplane.models import Application, Route, RoutingTableVersion, Team, VersionStatus
from evaluation import services
from evaluation.fleet.skills import SKILLS, verdict
from evaluation.logreg import L2_GRID
from evaluation.models import (
    LearnedRouter,
    LearnedRouterStatus,
    Proposal,
    ProposalChange,
    ProposalStatus,
)
from evaluation.selectors import learned_router_info
from evaluation.services.learned import (
    feature_spec,
    learned_router_propose,
    learned_router_rethreshold,
    learned_router_train,
    learned_routers_train_all,
)
from evaluation.workload import WorkloadItem, workload_items
from routing.learned import HashingSpec, predict_success, request_features
from routing.snapshot import registry_cache
from telemetry.ids import uuid7, uuid7_time
from telemetry.models import DecisionRecord
from telemetry.services import OutcomeInput, outcome_report_batch
from tests import factories
from tests.browser import roles_ensure
from tests.conftest import client_for

CLASS = "multi-step-reasoning"
# Our three tiers answer as these fleet models do (easy / medium / hard accuracy):
# 0.85/0.62/0.38, 0.93/0.80/0.62, 0.99/0.97/0.93.
SKILL_OF = {"small-local": "llama-3.1-8b-local", "mid-cloud": "gpt-4o-mini", "big-cloud": "gpt-4o"}


@pytest.fixture
def world(db: Any) -> dict[str, Any]:
    local = factories.model_create(slug="small-local", tier=1, locality="local")
    mid = factories.model_create(
        slug="mid-cloud",
        tier=2,
        locality="cloud",
        input_usd_per_mtok="0.60",
        output_usd_per_mtok="1.20",
    )
    big = factories.model_create(
        slug="big-cloud",
        tier=3,
        locality="cloud",
        input_usd_per_mtok="5.00",
        output_usd_per_mtok="15.00",
    )
    reasoning = factories.task_class_create(
        slug=CLASS, quality_target=Decimal("0.85"), prompt_retention_days=30
    )
    version = factories.routing_table_create({reasoning: (big, ["mid-cloud", "small-local"])})
    team = Team.objects.create(slug="team-a", name="Team A")
    app = Application.objects.create(slug="app-a", name="App A", team=team)
    return {
        "local": local,
        "mid": mid,
        "big": big,
        "class": reasoning,
        "version": version,
        "app": app,
    }


def _graded_decisions(model: Any, items: list[WorkloadItem], age: timedelta) -> int:
    """One stored, graded decision per item on ``model``: success as the fleet answers it."""
    now = timezone.now()
    rows = []
    for index, item in enumerate(items):
        ident = uuid7(int((now - age).timestamp() * 1000) - index)
        rows.append(
            DecisionRecord(
                id=ident,
                created_at=uuid7_time(ident),
                application_id=1,
                application="app-a",
                team="team-a",
                task_class=CLASS,
                model=model.slug,
                provider_model=model.provider_model,
                tier=model.tier,
                locality=model.locality,
                strategy="rule",
                confidence=0.8,
                reason="r",
                routing_table_version=1,
                input_tokens=120,
                context_tokens=0,
                max_output_tokens=256,
                decision_us=5,
                prompt=item.prompt,
                prompt_template_id="reasoning-v1",
                prompt_template_version="1",
                metadata={"reference_answer": item.reference},
            )
        )
    DecisionRecord.objects.bulk_create(rows)
    outcomes = []
    for record, item in zip(rows, items, strict=True):
        skill = SKILL_OF[model.slug]
        ok = verdict(skill, SKILLS[skill], CLASS, item.difficulty, item.id) == "correct"
        attempts: list[Any] = [
            {
                "model": model.slug,
                "status": "ok" if ok else "invalid_output",
                "latency_ms": 300,
                "input_tokens": 120,
                "output_tokens": 40,
            }
        ]
        outcomes.append(
            OutcomeInput(
                decision=record,
                attempts=attempts,
                final_status=attempts[0]["status"],
                quality_score=0.9 if ok else 0.1,
            )
        )
    return outcome_report_batch(outcomes)


@pytest.fixture
def trained(world: dict[str, Any]) -> dict[str, Any]:
    items = list(workload_items(CLASS))
    # Each model answered a different half of the generated items (traffic routed by rule,
    # then sweeps): 300 graded decisions per model.
    for offset, key in enumerate(("local", "mid", "big")):
        chosen = items[offset * 100 :] + items[: offset * 100]
        _graded_decisions(world[key], chosen[:450], timedelta(days=1 + offset))
    # The feature set pinned (word n-grams and structure; the penalty still chosen by
    # cross-validation): the tests built on this router (thresholds, proposals) do not
    # hang on which set the cross-validation would pick (see the gain retraining below).
    router = learned_router_train(world["class"], threshold=0.8, spec=HashingSpec())
    assert router is not None
    return {**world, "router": router, "items": items}


def test_training_stores_inspectable_data_with_honest_heldout_metrics(
    trained: dict[str, Any],
) -> None:
    router: LearnedRouter = trained["router"]
    assert router.status == LearnedRouterStatus.CANDIDATE and router.version == 1
    # Plain JSON data, never a pickle: it survives a JSON round trip unchanged.
    stored = LearnedRouter.objects.get(pk=router.pk)
    assert json.loads(json.dumps(stored.coefficients)) == stored.coefficients
    assert set(stored.coefficients) == {"small-local", "mid-cloud", "big-cloud"}
    width = stored.hashing["n_features"] + len(stored.hashing["dense"])
    assert all(len(c["weights"]) == width for c in stored.coefficients.values())
    assert stored.hashing["scheme"] == "crc32-signed-v1"
    assert stored.window_end - stored.window_start == timedelta(days=30)
    assert stored.samples["small-local"]["train"] + stored.samples["small-local"]["heldout"] == 450
    for slug in ("small-local", "mid-cloud"):
        m = stored.metrics[slug]
        print(slug, {k: m[k] for k in ("n", "brier", "brier_base", "auc", "ece")})
        # Held-out requests the model never saw: the prompt tells easy from hard.
        assert m["n"] > 60
        assert m["brier"] < m["brier_base"], slug
        assert m["auc"] > 0.6, slug
    # More than two tiers get traffic at this threshold.
    share = stored.metrics["routing"]["share"]
    print("routing share at 0.80:", share)
    assert all(share[s] > 0.03 for s in ("small-local", "mid-cloud", "big-cloud")), share
    assert learned_router_info(stored).threshold == 0.8
    # The cost–quality curve on the held-out requests: every threshold 0 → 1 (step 0.02);
    # a higher threshold sends requests to dearer models.
    curve = stored.metrics["curve"]
    assert [p["threshold"] for p in curve] == [round(i / 50, 4) for i in range(51)]
    assert curve[0]["strongest_share"] == 0.0 and curve[-1]["strongest_share"] > 0.9
    costs = [p["mean_cost"] for p in curve]
    assert costs == sorted(costs) and costs[0] < costs[-1] <= 1.0
    # The penalty was chosen by cross-validation on the training part, per model.
    grid = {f"{v:g}" for v in L2_GRID}
    for slug, coef in stored.coefficients.items():
        losses = stored.samples[slug]["cv_log_loss_by_l2"]
        assert set(losses) == grid
        assert f"{coef['l2']:g}" == min(losses, key=losses.get)
    assert stored.rule == "success"
    assert "features" not in stored.metrics  # the set was given
    # Retrained by the gain rule: same data, another way to read the threshold.
    gain = learned_router_train(trained["class"], rule="gain")
    assert gain is not None and gain.rule == "gain" and gain.threshold == 0.05
    assert learned_router_info(gain).rule == "gain"
    # No feature set given: chosen by cross-validation, grouped by prompt (no request names
    # its source), and stored in the hashing settings.
    choice = gain.metrics["features"]
    losses = choice["cv_log_loss"]
    assert choice["grouped_by"] == "prompt" and set(losses) == {"ngrams", "structure", "lengths"}
    assert choice["chosen"] == min(losses, key=losses.get)
    assert gain.hashing == feature_spec(HashingSpec(), choice["chosen"]).as_dict()


def test_the_router_predicts_difficulty(trained: dict[str, Any]) -> None:
    info = learned_router_info(trained["router"])
    by_difficulty: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for item in trained["items"]:
        features = request_features(info.spec, item.prompt, template="reasoning-v1@1")
        by_difficulty[item.difficulty].append(predict_success(info, features)["small-local"])
    means = {d: sum(v) / len(v) for d, v in by_difficulty.items()}
    print("small-local predicted success by difficulty:", means)
    assert means[1] > means[2] > means[3]
    assert means[1] - means[3] > 0.15


@pytest.mark.django_db(transaction=True)
def test_proposal_approval_turns_on_learned_routing_for_live_decisions(
    trained: dict[str, Any], client: Client
) -> None:
    roles_ensure()  # a transactional test: an earlier flush may have removed the role groups
    router = trained["router"]
    proposal = learned_router_propose(router)
    assert proposal is not None and proposal.change == ProposalChange.LEARNED
    assert proposal.evidence["learned_router_id"] == router.pk
    assert proposal.evidence["metrics"]["small-local"]["brier"] is not None
    assert learned_router_propose(router) is None  # one open proposal per class
    page = client_for("Viewer").get(f"/proposals/{proposal.public_id}/")
    assert page.status_code == 200
    assert b'data-testid="learned-router"' in page.content and b"threshold 0.80" in page.content
    assert b"small-local (held out)" in page.content
    # Not serving before approval.
    registry_cache.invalidate()
    _, secret = registry_services.api_key_create(application=trained["app"], scopes=["decide"])
    easy = next(i for i in trained["items"] if i.difficulty == 1)

    def decide(prompt: str) -> dict[str, Any]:
        response = client.post(
            "/api/v1/decisions",
            {
                "task_class": CLASS,
                "prompt": prompt,
                "prompt_template": {"id": "reasoning-v1", "version": "1"},
            },
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {secret}",
        )
        assert response.status_code == 201, response.content
        body: dict[str, Any] = response.json()
        return body

    assert decide(easy.prompt)["strategy"] == "rule"
    with pytest.raises(ValidationError):  # Viewers and Operators do not approve
        services.proposal_approve(proposal=proposal, user=factories.user_create("Operator"))
    services.proposal_approve(proposal=proposal, user=factories.user_create("Reviewer"))
    proposal.refresh_from_db()
    assert proposal.status == ProposalStatus.APPLIED
    router.refresh_from_db()
    assert router.status == LearnedRouterStatus.ACTIVE
    active = RoutingTableVersion.objects.get(status=VersionStatus.ACTIVE)
    assert Route.objects.get(version=active, task_class__slug=CLASS).strategy == "learned"

    registry_cache.invalidate()
    chosen: dict[str, int] = {}
    confidences = set()
    for item in trained["items"][450:570]:  # requests the router was not trained on
        body = decide(item.prompt)
        assert body["strategy"] == "learned"
        chosen[body["model"]["slug"]] = chosen.get(body["model"]["slug"], 0) + 1
        confidences.add(body["confidence"])
        if body["model"]["slug"] != "big-cloud":
            assert body["confidence"] >= 0.8  # cleared the threshold
    print("live learned routing:", chosen)
    assert len(chosen) == 3  # three tiers in use
    assert len(confidences) > 20  # per-request probabilities, not a constant
    stored = DecisionRecord.objects.filter(strategy="learned").first()
    assert stored is not None
    assert any("predicted success" in c["reason"] for c in stored.path["candidates"])

    # A threshold change is a new version and a proposal like any other.
    stricter = learned_router_rethreshold(router, threshold=0.95)
    assert stricter.version == 2 and stricter.coefficients == router.coefficients
    assert stricter.status == LearnedRouterStatus.CANDIDATE
    second = learned_router_propose(stricter)
    assert second is not None
    services.proposal_approve(proposal=second, user=factories.user_create("Reviewer"))
    router.refresh_from_db()
    stricter.refresh_from_db()
    assert (router.status, stricter.status) == ("retired", "active")
    with pytest.raises(ValidationError):
        learned_router_rethreshold(stricter, threshold=1.5)
    # The daily retraining keeps new versions for inspection but does not propose again
    # for a class that is already routed by its learned router.
    again = learned_routers_train_all(propose=True)
    assert [r.version for r in again] == [3]
    assert not Proposal.objects.filter(status=ProposalStatus.PROPOSED).exists()


def test_not_enough_data_trains_nothing(world: dict[str, Any]) -> None:
    _graded_decisions(world["local"], list(workload_items(CLASS))[:20], timedelta(hours=3))
    assert learned_router_train(world["class"]) is None
    assert not LearnedRouter.objects.exists()


def test_command_and_beat_task(trained: dict[str, Any]) -> None:
    out = StringIO()
    call_command("train_routers", "--task-class", CLASS, "--propose", stdout=out)
    assert "learned v2" in out.getvalue() and "proposed" in out.getvalue()
    with pytest.raises(Exception, match="unknown task class"):
        call_command("train_routers", "--task-class", "nope", stdout=StringIO())
    trained_now = learned_routers_train_all(propose=True)
    assert [r.version for r in trained_now] == [3]  # the open proposal is kept
    from evaluation.tasks import learned_routers_train_task

    assert len(learned_routers_train_task()) == 1


def _sourced_decisions(model: Any, rows: list[tuple[str, str, bool]], age: timedelta) -> None:
    """One stored decision on ``model`` per (prompt, source, success), graded by validation;
    the source in the metadata key ``group``."""
    now = timezone.now()
    records = []
    for index, (prompt, source, _) in enumerate(rows):
        ident = uuid7(int((now - age).timestamp() * 1000) - index)
        records.append(
            DecisionRecord(
                id=ident, created_at=uuid7_time(ident), application_id=1,
                application="app-a", team="team-a", task_class=CLASS, model=model.slug,
                provider_model=model.provider_model, tier=model.tier,
                locality=model.locality, strategy="rule", confidence=0.8, reason="r",
                routing_table_version=1, input_tokens=120, context_tokens=0,
                max_output_tokens=256, decision_us=5, prompt=prompt,
                metadata={"group": source},
            )
        )  # fmt: skip
    DecisionRecord.objects.bulk_create(records)
    outcome_report_batch(
        [
            OutcomeInput(
                decision=record,
                attempts=[
                    {
                        "model": model.slug,
                        "status": "ok",
                        "latency_ms": 300,
                        "input_tokens": 120,
                        "output_tokens": 40,
                    }
                ],
                final_status="ok",
                validation={"valid": ok},
            )
            for record, (_, _, ok) in zip(records, rows, strict=True)
        ]
    )


FILL = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def _sourced_prompt(rng: random.Random, source: int, hard: bool) -> str:
    """A question in its source's own words; hard ones offer five answer options, easy ones
    two (the form, the same in every source)."""
    words = " ".join(f"s{source}w{rng.randint(0, 9)}" for _ in range(8))
    count = 5 if hard else 2
    options = "\n".join(f"{'ABCDE'[k]}. {' '.join(rng.sample(FILL, 4))}" for k in range(count))
    return f"{words} {rng.randint(0, 10**6)}?\n{options}\nAnswer:"


def test_choices_are_cross_validated_grouped_by_the_requests_source(
    world: dict[str, Any],
) -> None:
    rng = random.Random(7)
    rows = [
        (_sourced_prompt(rng, s, hard), f"source-{s}", hard)
        for s in range(8)
        for hard in [rng.random() < 0.5 for _ in range(70)]
    ]
    for key, p_hard, p_easy in (("local", 0.2, 0.85), ("big", 0.8, 0.95)):
        graded = [(p, src, rng.random() < (p_hard if h else p_easy)) for p, src, h in rows]
        _sourced_decisions(world[key], graded, timedelta(hours=5))
    router = learned_router_train(world["class"], rule="gain")
    assert router is not None
    choice = router.metrics["features"]
    print("feature choice:", choice)
    # Grouped by the eight sources the requests name; the set with the lowest
    # cross-validated loss is the one stored, in the hashing settings.
    assert choice["grouped_by"] == "source" and choice["groups"] == 8
    losses = choice["cv_log_loss"]
    assert set(losses) == {"ngrams", "structure", "lengths"}
    assert choice["chosen"] == min(losses, key=losses.get)
    assert router.hashing == feature_spec(HashingSpec(), choice["chosen"]).as_dict()
    # The length features alone tell five options from two only as far as they make the
    # prompt longer: not chosen.
    assert choice["chosen"] != "lengths" and losses["lengths"] > losses[choice["chosen"]]
    info = learned_router_info(router)
    # A source never seen, in words never seen: the form still tells hard from easy.
    fresh = random.Random(8)
    hard = [_sourced_prompt(fresh, 99, True) for _ in range(40)]
    easy = [_sourced_prompt(fresh, 99, False) for _ in range(40)]

    def local(prompts: list[str]) -> float:
        p = [predict_success(info, request_features(info.spec, q))["small-local"] for q in prompts]
        return sum(p) / len(p)

    print("small-local on a new source: hard", local(hard), "easy", local(easy))
    assert local(easy) - local(hard) > 0.3
    # The source's name is no feature.
    q = hard[0]
    named = request_features(info.spec, q, metadata={"group": "source-1"})
    assert named == request_features(info.spec, q, metadata={"group": "elsewhere"})
    assert named == request_features(info.spec, q)
