"""The gateway's answer cache (routing/answer_cache.py) over real HTTP: the official openai
client in front, the replay fleet behind, Redis (the broker's server) as the store, decisions
and outcomes in PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
import redis
from django.conf import settings
from django.db.models import Sum
from django.test import Client
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from controlplane.generation import generation_bump
from controlplane.models import TaskClass
from evaluation.fleet import RunningFleet, fleet_start
from routing.gateway import StreamedAnswer, answer_cache, completion_events
from routing.snapshot import registry_cache
from telemetry.models import DecisionRecord, HourlyRollup
from telemetry.rollups import rollups_rebuild
from tests import factories
from tests.routing.gateway_support import (
    ASK,
    SUPPORT,
    client_for,
    outcome_of,
    registry_create,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _cacheable(ttl_s: int, *, personal: bool = False) -> None:
    TaskClass.objects.filter(slug="support").update(
        answer_cache_ttl_s=ttl_s, answer_cache_personal_data=personal
    )
    generation_bump()
    registry_cache.invalidate()


def _fleet_calls(fleet: RunningFleet) -> int:
    stats = httpx.get(f"{fleet.url}/admin/stats").json()
    return sum(m["requests"] for m in stats["models"].values())


def _cache_clear() -> None:
    store = redis.Redis.from_url(settings.SWITCHYARD_ANSWER_CACHE_URL)
    for key in store.scan_iter("sy:answer:*"):
        store.delete(key)
    answer_cache.close()


@pytest.fixture
def fleet_registry(fleet: RunningFleet) -> dict[str, Any]:
    fleet.state.reset()
    _cache_clear()
    return registry_create(f"{fleet.url}/v1")


def test_a_repeated_request_is_answered_from_the_cache_and_recorded_as_a_hit(
    fleet_registry: dict[str, Any],
    gateway_url: str,
    fleet: RunningFleet,
) -> None:
    _cacheable(600)
    client = client_for(gateway_url, fleet_registry["secret"])
    first = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT
    )
    assert first.headers["x-switchyard-cache"] == "miss"
    calls = _fleet_calls(fleet)
    # The same request, normalised: surrounding spaces, another end user, metadata.
    padded: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": f"  {ASK[0]['content']}\n"}
    ]
    second = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=padded,
        extra_headers=SUPPORT,
        user="someone-else",
        metadata={"trace": "x"},
    )
    assert second.headers["x-switchyard-cache"] == "hit"
    assert _fleet_calls(fleet) == calls, "a hit calls no model"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.headers["x-switchyard-model"] == first.headers["x-switchyard-model"]
    assert Decimal(second.headers["x-switchyard-cost-usd"]) == 0
    # Both calls are decided and recorded; the hit's outcome says what it saved.
    first_id = first.headers["x-switchyard-decision-id"]
    hit_id = second.headers["x-switchyard-decision-id"]
    assert DecisionRecord.objects.filter(id__in=[first_id, hit_id]).count() == 2
    paid, hit = outcome_of(first_id), outcome_of(hit_id)
    assert paid.cost_usd > 0 and paid.validation["cache"] == "miss"
    assert hit.final_status == "ok" and hit.cost_usd == 0
    assert hit.validation["cache"] == "hit"
    assert Decimal(hit.validation["saved_usd"]) == paid.cost_usd
    assert hit.attempts[0]["input_tokens"] == hit.attempts[0]["output_tokens"] == 0
    assert hit.attempts[0]["latency_ms"] < paid.attempts[0]["latency_ms"] + 1000
    # Another question or another temperature: not the cached answer.
    other: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "How do I reset my password?"}
    ]
    for kwargs in ({"messages": other}, {"messages": ASK, "temperature": 0.2}):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", extra_headers=SUPPORT, **kwargs
        )
        assert raw.headers["x-switchyard-cache"] == "miss"
    # The entry lives as long as the class says.
    store = redis.Redis.from_url(settings.SWITCHYARD_ANSWER_CACHE_URL)
    ttls = [store.ttl(k) for k in store.scan_iter("sy:answer:*")]
    assert ttls and all(500 < t <= 600 for t in ttls)


def test_classes_not_marked_cacheable_are_never_cached(
    fleet_registry: dict[str, Any],
    gateway_url: str,
    fleet: RunningFleet,
) -> None:
    client = client_for(gateway_url, fleet_registry["secret"])
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=ASK, extra_headers=SUPPORT
        )
        assert raw.headers["x-switchyard-cache"] == "miss"
    assert _fleet_calls(fleet) == 2
    assert "cache" not in outcome_of(raw.headers["x-switchyard-decision-id"]).validation


def test_personal_data_is_cached_only_where_the_class_allows_it(
    fleet_registry: dict[str, Any],
    gateway_url: str,
    fleet: RunningFleet,
) -> None:
    _cacheable(600)
    client = client_for(gateway_url, fleet_registry["secret"])
    personal: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Please call me back at jane.doe@example.com"}
    ]
    declared = {**SUPPORT, "X-Switchyard-Data-Classification": "personal"}
    for messages, headers in ((personal, SUPPORT), (ASK, declared)):
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=messages, extra_headers=headers
            )
            assert raw.headers["x-switchyard-cache"] == "miss"
    assert _fleet_calls(fleet) == 4
    _cacheable(600, personal=True)
    for expected in ("miss", "hit"):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=personal, extra_headers=SUPPORT
        )
        assert raw.headers["x-switchyard-cache"] == expected
    assert raw.headers["x-switchyard-tier"] == "1", "personal data still stays local"


def test_the_dashboard_shows_the_spend_the_cache_saved(
    fleet_registry: dict[str, Any],
    gateway_url: str,
) -> None:
    _cacheable(600)
    client = client_for(gateway_url, fleet_registry["secret"])
    ids = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=ASK, extra_headers=SUPPORT
        )
        ids.append(raw.headers["x-switchyard-decision-id"])
    saved = sum((Decimal(outcome_of(i).validation.get("saved_usd", "0")) for i in ids), Decimal())
    assert saved > 0
    rollups_rebuild()  # the dashboards read rollups (Celery beat refreshes them)
    viewer = Client()
    viewer.force_login(factories.user_create("Viewer"))
    html = viewer.get("/?range=24h").content.decode()
    assert 'data-kpi="cache-saved"' in html
    assert "2 answers reused" in html


def _streamed_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_streamed_requests_hit_the_cache_and_fill_it(
    fleet_registry: dict[str, Any],
    gateway_url: str,
    fleet: RunningFleet,
) -> None:
    _cacheable(600)
    client = client_for(gateway_url, fleet_registry["secret"])
    # A streamed miss: relayed from the model, and its answer, put back together, cached.
    first = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT, stream=True
    )
    streamed = list(first.parse())
    assert first.headers["x-switchyard-cache"] == "miss"
    calls = _fleet_calls(fleet)
    paid = outcome_of(first.headers["x-switchyard-decision-id"])
    assert paid.cost_usd > 0 and paid.validation == {"gateway": "stream", "cache": "miss"}
    # The same request, plain: answered from the entry the stream filled.
    plain = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT
    )
    assert plain.headers["x-switchyard-cache"] == "hit"
    completion = plain.parse()
    assert completion.choices[0].message.content == _streamed_text(streamed)
    assert completion.choices[0].finish_reason == streamed[-1].choices[0].finish_reason
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    # Streamed again, with usage asked for: a hit, sent as an SSE stream of the same answer.
    again = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=ASK,
        extra_headers=SUPPORT,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert again.headers["x-switchyard-cache"] == "hit"
    assert again.headers["content-type"].startswith("text/event-stream")
    chunks = list(again.parse())
    assert _streamed_text(chunks) == _streamed_text(streamed)
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert _fleet_calls(fleet) == calls, "hits call no model"
    for raw in (plain, again):
        hit = outcome_of(raw.headers["x-switchyard-decision-id"])
        assert hit.final_status == "ok" and hit.cost_usd == 0
        assert hit.validation["cache"] == "hit"
        assert Decimal(hit.validation["saved_usd"]) == paid.cost_usd
    streamed_hit = outcome_of(again.headers["x-switchyard-decision-id"])
    assert streamed_hit.validation["gateway"] == "stream"
    assert streamed_hit.attempts[0]["ttft_ms"] >= 0
    assert DecisionRecord.objects.count() == 3


def test_a_stream_that_fails_is_not_cached(gateway_url: str) -> None:
    with fleet_start(latency_scale=4.0) as slow:  # the answer streams over ≈ 2 s
        _cache_clear()
        fleet_registry = registry_create(f"{slow.url}/v1")
        _cacheable(600)
        body = {"model": "auto", "messages": ASK, "stream": True}
        headers = {"Authorization": f"Bearer {fleet_registry['secret']}", **SUPPORT}
        with httpx.stream(
            "POST", f"{gateway_url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            assert response.headers["x-switchyard-cache"] == "miss"
            for line in response.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break  # the first words arrived: hang up
        outcome_of(response.headers["x-switchyard-decision-id"])
        store = redis.Redis.from_url(settings.SWITCHYARD_ANSWER_CACHE_URL)
        assert list(store.scan_iter("sy:answer:*")) == []


def test_savings_count_only_what_the_gateway_observed(
    fleet_registry: dict[str, Any],
    gateway_url: str,
) -> None:
    _cacheable(600)
    client = client_for(gateway_url, fleet_registry["secret"])
    ids = [
        client.chat.completions.with_raw_response.create(
            model="auto", messages=ASK, extra_headers=SUPPORT
        ).headers["x-switchyard-decision-id"]
        for _ in range(2)
    ]
    paid, hit = outcome_of(ids[0]), outcome_of(ids[1])
    saved = Decimal(hit.validation["saved_usd"])
    assert saved == paid.cost_usd > 0
    api = Client()
    # The caller reports on its own decision: forging a bigger saving is refused ...
    url = f"/api/v1/decisions/{ids[1]}/outcome"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {fleet_registry['secret']}"}
    attempts = [
        {k: a[k] for k in ("model", "status", "latency_ms", "input_tokens", "output_tokens")}
        for a in hit.attempts
    ]
    for forged in ({"saved_usd": "1000"}, {"cache": "hit"}, {"condensed": {"saved_usd": 9}}):
        body = {"attempts": attempts, "final_status": "ok", "validation": forged}
        refused = api.post(url, body, content_type="application/json", **auth)
        assert refused.status_code == 400, refused.content
        assert list(refused.json()["error"]["fields"]) == [f"validation.{next(iter(forged))}"]
    # ... and a report of its own grades keeps the gateway's account as it was.
    body = {"attempts": attempts, "final_status": "ok", "validation": {"valid": True}}
    kept = api.post(url, body, content_type="application/json", **auth)
    assert kept.status_code == 200, kept.content
    hit.refresh_from_db()
    assert hit.validation["valid"] is True
    assert Decimal(hit.validation["saved_usd"]) == saved and hit.validation["cache"] == "hit"
    rollups_rebuild()
    rolled = HourlyRollup.objects.aggregate(hits=Sum("cache_hits"), saved=Sum("cache_saved_usd"))
    assert rolled == {"hits": 1, "saved": saved}


TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "lookup_ticket",
            "description": "Find the customer's support ticket.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
]


def _tool_calls(message: Any) -> list[tuple[str, str, str, str]]:
    return [(c.id, c.type, c.function.name, c.function.arguments) for c in message.tool_calls or ()]


def _streamed_tool_calls(chunks: list[Any]) -> list[tuple[str, str, str, str]]:
    """Tool calls put together from stream chunks as a client does it: by index, the id,
    type and name from the first piece, the arguments joined."""
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for part in choice.delta.tool_calls or ():
                call = calls.setdefault(part.index, ["", "", "", ""])
                call[0] = part.id or call[0]
                call[1] = part.type or call[1]
                if part.function is not None:
                    call[2] += part.function.name or ""
                    call[3] += part.function.arguments or ""
    return [(c[0], c[1], c[2], c[3]) for _, c in sorted(calls.items())]


def test_answers_with_tool_calls_are_cached_and_replayed_as_the_same_calls(
    fleet_registry: dict[str, Any],
    gateway_url: str,
    fleet: RunningFleet,
) -> None:
    _cacheable(600)
    client = client_for(gateway_url, fleet_registry["secret"])
    # A streamed miss with a tool call: relayed, put back together and cached.
    first = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, tools=TOOLS, extra_headers=SUPPORT, stream=True
    )
    assert first.headers["x-switchyard-cache"] == "miss"
    streamed = list(first.parse())
    expected = _streamed_tool_calls(streamed)
    assert len(expected) == 1
    call_id, kind, name, arguments = expected[0]
    assert call_id.startswith("call_") and (kind, name) == ("function", "lookup_ticket")
    assert orjson.loads(arguments) == {"query": ASK[0]["content"]}
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    paid = outcome_of(first.headers["x-switchyard-decision-id"])
    assert paid.final_status == "ok" and paid.cost_usd > 0
    assert paid.attempts[0]["ttft_ms"] >= 0 and paid.output_tokens > 0
    calls = _fleet_calls(fleet)
    # Plain: a hit with the same tool call, as a plain completion.
    plain = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, tools=TOOLS, extra_headers=SUPPORT
    )
    assert plain.headers["x-switchyard-cache"] == "hit"
    choice = plain.parse().choices[0]
    assert _tool_calls(choice.message) == expected
    assert choice.message.content is None and choice.finish_reason == "tool_calls"
    # Streamed: a hit sent as OpenAI's tool-call chunks ...
    again = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, tools=TOOLS, extra_headers=SUPPORT, stream=True
    )
    assert again.headers["x-switchyard-cache"] == "hit"
    chunks = list(again.parse())
    assert _streamed_tool_calls(chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # ... that the SDK's own stream helper puts back together as the same calls.
    with client.chat.completions.stream(
        model="auto", messages=ASK, tools=TOOLS, extra_headers=SUPPORT
    ) as stream:
        final = stream.get_final_completion()
    assert _tool_calls(final.choices[0].message) == expected
    assert final.choices[0].finish_reason == "tool_calls"
    assert _fleet_calls(fleet) == calls, "hits call no model"
    # Without the tools it is another request: not the cached tool call.
    text = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK, extra_headers=SUPPORT
    )
    assert text.headers["x-switchyard-cache"] == "miss"
    assert text.parse().choices[0].message.tool_calls is None
    for raw in (plain, again):
        hit = outcome_of(raw.headers["x-switchyard-decision-id"])
        assert hit.cost_usd == 0 and hit.validation["cache"] == "hit"
        assert Decimal(hit.validation["saved_usd"]) == paid.cost_usd


def test_a_plain_tool_call_answer_fills_the_cache_for_streams(
    fleet_registry: dict[str, Any],
    gateway_url: str,
    fleet: RunningFleet,
) -> None:
    _cacheable(600)
    client = client_for(gateway_url, fleet_registry["secret"])
    choice = {"type": "function", "function": {"name": "lookup_ticket"}}
    first = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=ASK,
        tools=TOOLS,
        tool_choice=choice,
        extra_headers=SUPPORT,
    )
    assert first.headers["x-switchyard-cache"] == "miss"
    expected = _tool_calls(first.parse().choices[0].message)
    assert expected and expected[0][2] == "lookup_ticket"
    calls = _fleet_calls(fleet)
    streamed = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=ASK,
        tools=TOOLS,
        tool_choice=choice,
        extra_headers=SUPPORT,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert streamed.headers["x-switchyard-cache"] == "hit"
    chunks = list(streamed.parse())
    assert _streamed_tool_calls(chunks) == expected
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert _fleet_calls(fleet) == calls


def test_streamed_tool_calls_in_pieces_are_put_back_together() -> None:
    """Two parallel tool calls whose names and arguments arrive in pieces, interleaved: the
    assembled answer holds both whole, and its SSE events assemble back to the same."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    pieces = [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "get_", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "get_time", "arguments": '{"tz":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "weather",
                                                        "arguments": '{"city":"Oslo"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '"CET"}'}}]}),
        chunk({}, "tool_calls"),
    ]  # fmt: skip
    assembled = StreamedAnswer()
    for piece in pieces:
        assembled.add(piece)
    body = assembled.body()
    assert body is not None
    message = orjson.loads(body)["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_time", "arguments": '{"tz":"CET"}'}},
        ],
    }  # fmt: skip
    replayed = StreamedAnswer()
    events = completion_events(body, include_usage=False).decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    for event in events[:-2]:
        replayed.add(orjson.loads(event.removeprefix("data: ")))
    assert replayed.body() == body
    # A choice that never finished gives nothing to cache.
    unfinished = StreamedAnswer()
    for piece in pieces[:-1]:
        unfinished.add(piece)
    assert unfinished.body() is None
