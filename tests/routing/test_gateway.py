"""The OpenAI-compatible gateway with the official ``openai`` client, over real HTTP: the
gateway served by uvicorn (the ASGI app of controlplane/asgi.py), the replay fleet as the
upstream, decisions and outcomes in PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from django.utils import timezone

from controlplane import services
from controlplane.generation import generation_bump
from controlplane.models import BudgetSpend, ModelEndpoint, TaskClass, Team
from evaluation.fleet import RunningFleet, fleet_start
from routing import metrics
from routing.gateway import Attempt, ChatCall, OutcomeWriter, _cost, _Pending
from routing.schemas import decision_input_decode
from routing.services import Decided, decision_make
from routing.snapshot import registry_cache
from telemetry.models import DecisionOutcome, DecisionRecord
from telemetry.recorder import recorder
from tests.live_server import free_port
from tests.routing.gateway_support import (
    ASK,
    SUPPORT,
    client_for,
    outcome_of,
    registry_create,
)

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


def test_plain_completion_is_decided_called_and_recorded(
    fleet_registry: dict[str, Any], gateway_url: str, fleet: RunningFleet
) -> None:
    uncapped_answer = httpx.post(
        f"{fleet.url}/v1/chat/completions", json={"model": "mistral-small-hosted", "messages": ASK}
    ).json()["usage"]["completion_tokens"]
    assert uncapped_answer > 24  # so the cap below is what shortens it
    client = client_for(gateway_url, fleet_registry["secret"])
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT, max_tokens=1000
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.model == "mistral-small-hosted"
    headers = raw.headers
    assert headers["x-switchyard-model"] == "mistral-small-hosted"
    assert headers["x-switchyard-tier"] == "2"
    assert headers["x-switchyard-escalations"] == "0"
    assert headers["x-switchyard-cache"] == "miss"
    # The output cap of the class (24) wins over the client's 1000.
    assert completion.usage is not None and completion.usage.completion_tokens <= 24
    record = DecisionRecord.objects.get(id=headers["x-switchyard-decision-id"])
    assert record.task_class == "support" and record.model == "mistral-small-hosted"
    assert record.application == "app-a" and record.max_output_tokens == 24
    outcome = outcome_of(headers["x-switchyard-decision-id"])
    assert outcome.final_status == "ok" and outcome.attempt_count == 1
    assert outcome.input_tokens == completion.usage.prompt_tokens
    assert outcome.output_tokens == completion.usage.completion_tokens
    assert outcome.cost_usd == Decimal(headers["x-switchyard-cost-usd"]) > 0
    assert outcome.charged_attempts == 1
    # A null max_tokens does not lift the cap either.
    uncapped = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        json={"model": "support", "messages": ASK, "max_tokens": None},
        headers={"Authorization": f"Bearer {fleet_registry['secret']}"},
    )
    assert uncapped.status_code == 200
    assert uncapped.json()["usage"]["completion_tokens"] <= 24


def test_task_class_as_model_or_in_metadata(
    fleet_registry: dict[str, Any], gateway_url: str
) -> None:
    client = client_for(gateway_url, fleet_registry["secret"])
    by_model = client.chat.completions.with_raw_response.create(model="support", messages=ASK)
    by_metadata = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, metadata={"task_class": "support", "ticket": "T-9"}
    )
    for raw in (by_model, by_metadata):
        assert raw.headers["x-switchyard-model"] == "mistral-small-hosted"
        assert raw.parse().choices[0].message.content
    record = DecisionRecord.objects.get(id=by_metadata.headers["x-switchyard-decision-id"])
    assert record.task_class == "support"
    # model 'auto' without a class, or a model naming another class than the header: 400.
    with pytest.raises(openai.BadRequestError) as missing:
        client.chat.completions.create(model="auto", messages=ASK)
    assert missing.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="support", messages=ASK, extra_headers={"X-Switchyard-Task-Class": "redact"}
        )
    assert DecisionRecord.objects.count() == 2


def test_pinned_model_is_policy_checked_budgeted_and_recorded(
    fleet_registry: dict[str, Any], gateway_url: str
) -> None:
    client = client_for(gateway_url, fleet_registry["secret"])
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=ASK, extra_headers=SUPPORT
    )
    assert raw.parse().model == "gpt-4o"
    assert raw.headers["x-switchyard-model"] == "gpt-4o"
    record = DecisionRecord.objects.get(id=raw.headers["x-switchyard-decision-id"])
    assert record.model == "gpt-4o" and record.tier == 3
    assert "pinned: gpt-4o named by the caller" in record.response["policy"]["actions"]
    assert outcome_of(str(record.id)).final_model == "gpt-4o"
    # Personal data (disguised with a zero-width space) never goes to a pinned cloud model.
    personal = [{"role": "user", "content": "Mail me at jane.doe\u200b@example.com please"}]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=personal, extra_headers=SUPPORT)
    assert refused.value.body["code"] == "policy_refused"  # type: ignore[index]
    # A local-only class keeps a pinned cloud model out too; the local model is fine.
    redact = {"X-Switchyard-Task-Class": "redact"}
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o", messages=ASK, extra_headers=redact)
    local = client.chat.completions.with_raw_response.create(
        model="llama-3.1-8b-local", messages=personal, extra_headers=redact
    )
    assert local.headers["x-switchyard-model"] == "llama-3.1-8b-local"
    assert DecisionRecord.objects.count() == 2  # the refused ones stored nothing


def test_streaming_relays_chunks_and_records_time_to_first_token(
    fleet_registry: dict[str, Any], gateway_url: str
) -> None:
    client = client_for(gateway_url, fleet_registry["secret"])
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT, stream=True
    )
    chunks = list(raw.parse())
    assert raw.headers["x-switchyard-model"] == "mistral-small-hosted"
    assert raw.headers["content-type"].startswith("text/event-stream")
    # The usage chunk the gateway asked for is not forwarded to a client that did not.
    assert all(c.choices for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    plain = client.chat.completions.create(model="auto", messages=ASK, extra_headers=SUPPORT)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    outcome = outcome_of(raw.headers["x-switchyard-decision-id"])
    assert outcome.final_status == "ok" and outcome.output_tokens > 0
    assert outcome.attempts[0]["ttft_ms"] >= 0
    # A client that asks for usage gets it.
    with_usage = list(
        client.chat.completions.create(
            model="auto",
            messages=ASK,
            extra_headers=SUPPORT,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_outage_escalates_with_context(
    fleet_registry: dict[str, Any], gateway_url: str, fleet: RunningFleet, stream: bool
) -> None:
    fleet.state.configure("mistral-small-hosted", fail_rate=None, down=True)
    escalations = metrics.GATEWAY_ESCALATIONS.labels("mistral-small-hosted")
    before = escalations._value.get()
    client = client_for(gateway_url, fleet_registry["secret"])
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT, stream=stream
    )
    parsed = raw.parse()
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in parsed)  # type: ignore[union-attr]
    else:
        text = parsed.choices[0].message.content  # type: ignore[union-attr]
    assert text
    assert raw.headers["x-switchyard-model"] == "gpt-4o"
    assert raw.headers["x-switchyard-escalations"] == "1"
    outcome = outcome_of(raw.headers["x-switchyard-decision-id"])
    # Counted by the outcome writer with the call's outcome (before its COMMIT).
    assert escalations._value.get() == before + 1
    assert outcome.escalated and outcome.final_model == "gpt-4o"
    first, second = outcome.attempts
    assert first["model"] == "mistral-small-hosted" and first["status"] == "error"
    assert first["escalation_reason"] == "HTTP 503"
    assert second["status"] == "ok"
    stats = fleet.state.stats()["models"]
    assert stats["mistral-small-hosted"]["by_status"] == {"503": 1}  # type: ignore[index]


def test_every_model_down_is_a_clean_error_and_recorded(
    fleet_registry: dict[str, Any], gateway_url: str, fleet: RunningFleet
) -> None:
    for slug in ("mistral-small-hosted", "gpt-4o"):
        fleet.state.configure(slug, fail_rate=None, down=True)
    client = client_for(gateway_url, fleet_registry["secret"])
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(
                model="auto", messages=ASK, extra_headers=SUPPORT, stream=stream
            )
        assert failed.value.status_code == 502
        assert failed.value.body["code"] == "upstream_failed"  # type: ignore[index]
        decision_id = failed.value.response.headers["x-switchyard-decision-id"]
        outcome = outcome_of(decision_id)
        assert outcome.final_status == "error" and outcome.attempt_count == 2
    assert DecisionOutcome.objects.count() == 2


def test_models_lists_what_the_key_may_name(
    fleet_registry: dict[str, Any], gateway_url: str
) -> None:
    ids = [m.id for m in client_for(gateway_url, fleet_registry["secret"]).models.list()]
    assert ids[0] == "auto"
    assert {"support", "redact", "llama-3.1-8b-local", "gpt-4o"} <= set(ids)
    with pytest.raises(openai.AuthenticationError):
        client_for(gateway_url, "sy_not-a-key").models.list()


def test_errors_use_the_openai_shape(fleet_registry: dict[str, Any], gateway_url: str) -> None:
    good = client_for(gateway_url, fleet_registry["secret"])
    with pytest.raises(openai.AuthenticationError) as bad_key:
        client_for(gateway_url, "sy_" + "x" * 40).chat.completions.create(
            model="auto", messages=ASK, extra_headers=SUPPORT
        )
    assert bad_key.value.body["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as unknown:
        good.chat.completions.create(model="gpt-5-turbo", messages=ASK, extra_headers=SUPPORT)
    assert unknown.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as nul:
        good.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "hello\x00world"}],
            extra_headers=SUPPORT,
        )
    assert nul.value.body["param"] == "messages[0].content"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        good.chat.completions.create(model="auto", messages=[], extra_headers=SUPPORT)
    raw = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {fleet_registry['secret']}"},
    )
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "malformed_json"
    assert httpx.get(f"{gateway_url}/v1/nothing").json()["error"]["code"] == "not_found"
    assert DecisionRecord.objects.count() == 0


def test_hostile_input(fleet_registry: dict[str, Any], gateway_url: str) -> None:
    client = client_for(gateway_url, fleet_registry["secret"])
    # Look-alikes never match: a Cyrillic 'о' in the model, a fullwidth class name.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4\u043e", messages=ASK, extra_headers=SUPPORT)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="\uff53upport", messages=ASK)
    with pytest.raises(openai.BadRequestError) as unknown_class:
        client.chat.completions.create(
            model="auto", messages=ASK, metadata={"task_class": "supp\u043ert"}
        )
    assert unknown_class.value.body["code"] == "unknown_task_class"  # type: ignore[index]
    raw_header = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        json={"model": "auto", "messages": ASK},
        headers={
            "Authorization": f"Bearer {fleet_registry['secret']}",
            "X-Switchyard-Task-Class": "supp\u043ert".encode(),
        },
    )
    assert raw_header.status_code == 400
    assert raw_header.json()["error"]["code"] == "unknown_task_class"
    # Another tenant's team: refused, nothing recorded.
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model="auto", messages=ASK, extra_headers={**SUPPORT, "X-Switchyard-Team": "team-b"}
        )
    # Control characters anywhere in a message or the role.
    for messages in (
        [{"role": "us\x00er", "content": "hi"}],
        [{"role": "user", "content": [{"type": "text", "text": "a\x07b"}]}],
    ):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="auto", messages=messages, extra_headers=SUPPORT)
    assert DecisionRecord.objects.count() == 0


def _fleet_process(port: int, latency_scale: float) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "evaluation.fleet",
            "--port",
            str(port),
            "--latency-scale",
            str(latency_scale),
        ],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the fleet did not start"
        time.sleep(0.1)


def test_upstream_killed_mid_stream_ends_cleanly_and_is_recorded(
    fleet: RunningFleet, gateway_url: str
) -> None:
    port = free_port()
    proc = _fleet_process(port, latency_scale=4.0)  # the answer streams over ~2 s
    try:
        fleet_registry = registry_create(f"http://127.0.0.1:{port}/v1")
        client = client_for(gateway_url, fleet_registry["secret"])
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=ASK, extra_headers=SUPPORT, stream=True
        )
        stream = raw.parse()
        received = []
        started = time.monotonic()
        with pytest.raises(openai.APIError) as broken:
            for chunk in stream:
                received.append(chunk)
                if chunk.choices and chunk.choices[0].delta.content:
                    os.killpg(proc.pid, signal.SIGKILL)  # the upstream dies mid-answer
        assert time.monotonic() - started < 20  # an error, never a hang
        assert received, "the stream had started before the upstream died"
        assert "mid-stream" in str(broken.value.message)
        outcome = outcome_of(raw.headers["x-switchyard-decision-id"])
        assert outcome.final_status == "error"
        assert outcome.attempts[0]["escalation_reason"].startswith("mid-stream")
        # Before the first chunk a dead upstream escalates; with every model on it dead the
        # client gets a clean 502.
        with pytest.raises(openai.APIStatusError) as dead:
            client.chat.completions.create(
                model="auto", messages=ASK, extra_headers=SUPPORT, stream=True
            )
        assert dead.value.status_code == 502
        assert (
            outcome_of(dead.value.response.headers["x-switchyard-decision-id"])
            .attempts[1]["escalation_reason"]
            .startswith("connection failed")
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_budgets_are_held_then_settled_with_the_real_cost(
    fleet_registry: dict[str, Any], gateway_url: str
) -> None:
    team = Team.objects.get(slug="team-a")
    b = services.budget_create(
        name="team-a-monthly",
        scope="team",
        team=team,
        period="month",
        limit_usd=Decimal("100"),
        hard_action="block",
    )
    client = client_for(gateway_url, fleet_registry["secret"])
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT
    )
    decision_id = raw.headers["x-switchyard-decision-id"]
    record = DecisionRecord.objects.get(id=decision_id)
    assert record.budget_holds, "the decision held its worst case"
    outcome_of(decision_id)
    recorder.close()  # its leases give back what they did not use
    row = BudgetSpend.objects.get(budget=b, period_start=b.period_start(timezone.now()))
    assert row.spent_usd == Decimal(raw.headers["x-switchyard-cost-usd"]) > 0
    assert row.reserved_usd == 0  # the outcome settled the hold
    # A budget without room refuses the call before any model is called: 429.
    BudgetSpend.objects.filter(pk=row.pk).update(spent_usd=Decimal("100"))
    registry_cache.invalidate()
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="auto", messages=ASK, extra_headers=SUPPORT)
    assert refused.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert DecisionRecord.objects.count() == 1


def test_a_timeout_escalates_and_an_upstream_refusal_does_not(
    fleet: RunningFleet, gateway_url: str, settings: Any
) -> None:
    with fleet_start(latency_scale=1.0) as slow:  # the mid model answers in ≈ 0.5 s
        fleet_registry = registry_create(f"{fleet.url}/v1")
        ModelEndpoint.objects.filter(slug="mistral-small-hosted").update(base_url=f"{slow.url}/v1")
        generation_bump()
        registry_cache.invalidate()
        settings.SWITCHYARD_MODEL_TIMEOUTS = {"mistral-small-hosted": 0.05}
        client = client_for(gateway_url, fleet_registry["secret"])
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=ASK, extra_headers=SUPPORT
        )
        assert raw.headers["x-switchyard-model"] == "gpt-4o"
        first = outcome_of(raw.headers["x-switchyard-decision-id"]).attempts[0]
        assert (first["model"], first["status"]) == ("mistral-small-hosted", "timeout")
        # The upstream refuses the request itself (a 400): no escalation, a 400 to the client.
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="gpt-4o", messages=ASK, extra_headers=SUPPORT, temperature="hot"
            )  # type: ignore[arg-type]
        assert refused.value.body["code"] == "upstream_rejected"  # type: ignore[index]
        decision_id = refused.value.response.headers["x-switchyard-decision-id"]
        outcome = outcome_of(decision_id)
        assert outcome.attempt_count == 1 and outcome.final_status == "error"
        assert outcome.attempts[0]["escalation_reason"] == "HTTP 400"


def test_outcomes_are_written_in_one_batch_with_bounded_queries(
    fleet_registry: dict[str, Any], django_assert_max_num_queries: Any
) -> None:
    key = registry_cache.key_for_secret(fleet_registry["secret"])
    assert key is not None
    calls = []
    for i in range(25):
        data = decision_input_decode(
            orjson.dumps({"task_class": "support", "prompt": f"question {i}"})
        )
        decided = decision_make(key, data, started=time.perf_counter_ns())
        assert isinstance(decided, Decided)
        calls.append(ChatCall(decided, {}, False, False, False, registry_cache.schedules()))
    writer = OutcomeWriter()
    pending = [
        _Pending(c, [Attempt(c.decided.decision.model, input_tokens=10, output_tokens=5).report()],
                 "ok")
        for c in calls
    ]  # fmt: skip
    with django_assert_max_num_queries(12):
        writer._write(pending)
    assert [p.error for p in pending] == [None] * 25  # every one stored
    stored = {o.decision_id: o for o in DecisionOutcome.objects.all()}
    assert len(stored) == 25
    for p in pending:
        outcome = stored[p.call.decided.decision_id]
        # Charged at the price the x-switchyard-cost-usd header quotes.
        made = Attempt(p.call.decided.decision.model, input_tokens=10, output_tokens=5)
        header_cost = _cost(p.call, [made])
        assert outcome.cost_usd == Decimal(header_cost) > 0 and outcome.output_tokens == 5


def test_a_client_that_leaves_mid_stream_stops_the_upstream_call(gateway_url: str) -> None:
    with fleet_start(latency_scale=4.0) as slow:  # the answer streams over ≈ 2 s
        fleet_registry = registry_create(f"{slow.url}/v1")
        body = {"model": "auto", "messages": ASK, "stream": True}
        headers = {"Authorization": f"Bearer {fleet_registry['secret']}", **SUPPORT}
        with httpx.stream(
            "POST", f"{gateway_url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            decision_id = response.headers["x-switchyard-decision-id"]
            for line in response.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break  # the first words arrived: hang up
        deadline = time.monotonic() + 10
        while not DecisionOutcome.objects.filter(decision_id=decision_id).exists():
            assert time.monotonic() < deadline, "the abandoned stream was not recorded"
            time.sleep(0.05)
        attempt = outcome_of(decision_id).attempts[0]
        assert attempt["status"] == "error"
        assert attempt["escalation_reason"] == "mid-stream: client disconnected"
        # Estimated from what was relayed before the upstream call was stopped: less than
        # the whole answer (which the upstream reports in its usage chunk at the end).
        full = httpx.post(
            f"{slow.url}/v1/chat/completions",
            json={"model": "mistral-small-hosted", "messages": ASK, "max_tokens": 24},
        ).json()["usage"]["completion_tokens"]
        assert 0 < attempt["output_tokens"] < full


def test_a_route_that_does_not_escalate_on_errors_is_obeyed(
    fleet_registry: dict[str, Any], gateway_url: str, fleet: RunningFleet
) -> None:
    draft = services.routing_version_draft_create()
    services.route_set(
        version=draft,
        task_class=TaskClass.objects.get(slug="support"),
        primary=fleet_registry["mid"],
        fallbacks=["gpt-4o"],
        escalate_on_error=False,
    )
    services.routing_version_activate(version=draft)
    registry_cache.invalidate()
    fleet.state.configure("mistral-small-hosted", fail_rate=None, down=True)
    client = client_for(gateway_url, fleet_registry["secret"])
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(
                model="auto", messages=ASK, extra_headers=SUPPORT, stream=stream
            )
        assert failed.value.status_code == 502
        outcome = outcome_of(failed.value.response.headers["x-switchyard-decision-id"])
        assert outcome.attempt_count == 1 and outcome.final_model == "mistral-small-hosted"
    assert fleet.state.stats()["models"]["gpt-4o"]["requests"] == 0  # type: ignore[index]


def test_recording_before_the_answer_when_configured(
    fleet_registry: dict[str, Any], gateway_url: str, settings: Any
) -> None:
    settings.SWITCHYARD_GATEWAY_RECORD_BEFORE_ANSWER = True
    client = client_for(gateway_url, fleet_registry["secret"])
    for stream in (False, True):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=ASK, extra_headers=SUPPORT, stream=stream
        )
        if stream:
            list(raw.parse())  # the stream's last event comes after the outcome's COMMIT
        decision_id = raw.headers["x-switchyard-decision-id"]
        outcome = DecisionOutcome.objects.get(decision_id=decision_id)  # no waiting
        assert outcome.final_status == "ok"
