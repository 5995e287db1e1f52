"""Tests for the replay fleet (plain pytest, no Django): real HTTP against a started fleet."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.fleet import (
    DEFAULT_FLEET,
    SKILLS,
    AnswerEngine,
    FleetModel,
    RunningFleet,
    fleet_start,
    gsm8k_load,
    normalise_prompt,
    routellm_gsm8k_path,
    sample_latency_ms,
)
from evaluation.fleet.__main__ import load_config
from evaluation.fleet.stable import stable_unit
from evaluation.graders import DEFAULT_JUDGE_TEMPLATE
from evaluation.workload import (
    DEFAULT_SEED,
    INVOICE_SCHEMA,
    TASK_CLASSES,
    WorkloadItem,
    items_per_class,
    workload_item,
    workload_items,
)
from tests.evaluation.conftest import routellm_dir_write

REPO_ROOT = Path(__file__).resolve().parents[2]
WEAK = "llama-3.1-8b-local"
STRONG = "claude-sonnet"


def chat(client: httpx.Client, model: str, prompt: str, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    body.update(extra)
    return client.post("/v1/chat/completions", json=body)


def chat_ok(client: httpx.Client, model: str, prompt: str) -> httpx.Response:
    """Like a client with retries: a workload request may fail transiently (429/500)."""
    for _ in range(6):
        response = chat(client, model, prompt)
        if response.status_code == 200:
            return response
        assert response.status_code in (429, 500), response.text
    raise AssertionError(f"{model} kept failing on {prompt[:40]!r}")


def content_of(response: httpx.Response) -> str:
    value = response.json()["choices"][0]["message"]["content"]
    assert isinstance(value, str)
    return value


def assert_error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "code" in error
    return dict(error)


@pytest.fixture(scope="module")
def fleet() -> Iterator[RunningFleet]:
    with fleet_start(latency_scale=0.0) as running:
        yield running


@pytest.fixture(scope="module")
def client(fleet: RunningFleet) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fleet.url, timeout=10.0) as c:
        yield c


@pytest.fixture(scope="module")
def routellm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic recording in the RouteLLM layout, written by the test suite."""
    directory = tmp_path_factory.mktemp("routellm")
    routellm_dir_write(directory, rows=40)
    return directory


@pytest.fixture(scope="module")
def gsm8k_rows(routellm_dir: Path) -> dict[str, Any]:
    return dict(gsm8k_load(routellm_gsm8k_path(routellm_dir)))


@pytest.fixture(scope="module")
def gsm8k_client(routellm_dir: Path) -> Iterator[httpx.Client]:
    with (
        fleet_start(latency_scale=0.0, gsm8k_path=routellm_gsm8k_path(routellm_dir)) as running,
        httpx.Client(base_url=running.url, timeout=10.0) as c,
    ):
        yield c


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_models_list_shape(client: httpx.Client) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    payload = response.json()
    assert payload["object"] == "list"
    ids = [entry["id"] for entry in payload["data"]]
    assert ids == [m.slug for m in DEFAULT_FLEET]
    assert {
        "llama-3.1-8b-local",
        "qwen2.5-7b-local",
        "mistral-small-hosted",
        "gpt-4o",
        "claude-sonnet",
        "gpt-4o-mini",
    } == set(ids)
    for entry in payload["data"]:
        assert entry["object"] == "model"
        assert isinstance(entry["created"], int)
        assert isinstance(entry["owned_by"], str)
    one = client.get("/v1/models/gpt-4o")
    assert one.status_code == 200 and one.json()["id"] == "gpt-4o"
    assert_error_shape(client.get("/v1/models/nope"), 404)


def test_default_fleet_roles_and_quality() -> None:
    by_slug = {m.slug: m for m in DEFAULT_FLEET}
    assert by_slug["llama-3.1-8b-local"].role == "weak"
    assert by_slug["qwen2.5-7b-local"].role == "weak"
    assert by_slug["gpt-4o"].role == "strong"
    assert by_slug["claude-sonnet"].role == "strong"
    assert by_slug["mistral-small-hosted"].role is None
    assert by_slug["gpt-4o-mini"].role is None
    assert by_slug["llama-3.1-8b-local"].quality == pytest.approx(0.70)
    assert by_slug["claude-sonnet"].quality == pytest.approx(0.90)
    assert by_slug["llama-3.1-8b-local"].latency_ms_p50 == pytest.approx(180.0)
    assert by_slug["mistral-small-hosted"].latency_ms_p50 == pytest.approx(450.0)
    assert by_slug["gpt-4o"].latency_ms_p50 == pytest.approx(900.0)


def test_chat_completion_shape(client: httpx.Client) -> None:
    response = chat(client, "gpt-4o", "Explain how a hash map handles collisions.")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert int(response.headers["content-length"]) == len(response.content)
    payload = response.json()
    assert isinstance(payload["id"], str) and payload["id"].startswith("chatcmpl-")
    assert payload["object"] == "chat.completion"
    assert isinstance(payload["created"], int)
    assert payload["model"] == "gpt-4o"
    choice = payload["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = payload["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # completion tokens are estimated as ~chars/4
    assert usage["completion_tokens"] == pytest.approx(len(choice["message"]["content"]) / 4, abs=1)


def test_optional_request_fields_and_content_parts(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "What is 6 * 7?"}]},
            ],
            "max_tokens": 200,
            "temperature": 0.2,
            "response_format": {"type": "text"},
        },
    )
    assert response.status_code == 200
    assert "Answer:" in content_of(response)


def test_max_tokens_truncates_with_length_finish_reason(client: httpx.Client) -> None:
    prompt = "Describe the architecture of a distributed key-value store in detail."
    response = chat(client, STRONG, prompt, max_tokens=3)
    assert response.status_code == 200
    payload = response.json()
    assert payload["choices"][0]["finish_reason"] == "length"
    assert payload["usage"]["completion_tokens"] <= 3


def test_stream_sends_the_same_answer_as_server_sent_events(client: httpx.Client) -> None:
    prompt = "Summarise: the quarterly revenue grew while shipping costs fell."
    plain = chat(client, WEAK, prompt).json()
    response = chat(client, WEAK, prompt, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finals[-1] == plain["choices"][0]["finish_reason"] and finals[0] is None
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    # Without include_usage there is no usage chunk; a non-boolean stream is refused.
    bare = chat(client, WEAK, prompt, stream=True).text
    assert '"usage"' not in bare
    assert chat(client, WEAK, prompt, stream="yes").status_code == 400


def test_arithmetic_prompt_has_answer_line(client: httpx.Client) -> None:
    answers = [content_of(chat(client, m.slug, "What is 17 + 25?")) for m in DEFAULT_FLEET]
    for text in answers:
        assert text.splitlines()[-1].startswith("Answer: ")
    # the high-quality models overwhelmingly agree on the right value across many prompts
    right = 0
    for a in range(40):
        text = content_of(chat(client, STRONG, f"What is {a} + {a + 3}?"))
        right += text.endswith(f"Answer: {2 * a + 3}")
    assert right >= 28


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


def test_same_request_twice_is_identical(client: httpx.Client) -> None:
    for model in (WEAK, STRONG, "mistral-small-hosted"):
        prompt = "Summarise the benefits of connection pooling."
        first, second = chat(client, model, prompt), chat(client, model, prompt)
        assert first.status_code == second.status_code == 200
        assert content_of(first) == content_of(second)
        assert first.json()["usage"] == second.json()["usage"]


def test_determinism_across_server_instances(client: httpx.Client) -> None:
    prompts = [f"Give me advice about topic number {i} and its tradeoffs." for i in range(10)]
    expected = [content_of(chat(client, "gpt-4o-mini", p)) for p in prompts]
    with (
        fleet_start(latency_scale=0.0) as other,
        httpx.Client(base_url=other.url, timeout=10.0) as other_client,
    ):
        got = [content_of(chat(other_client, "gpt-4o-mini", p)) for p in prompts]
    assert got == expected


def test_answers_depend_on_model_and_prompt(client: httpx.Client) -> None:
    prompts = [f"Explain idea {i} about caching layers." for i in range(10)]
    weak = [content_of(chat(client, WEAK, p)) for p in prompts]
    strong = [content_of(chat(client, STRONG, p)) for p in prompts]
    assert len(set(weak)) > 1
    assert weak != strong


def test_latency_draw_is_deterministic_and_matches_percentiles() -> None:
    model = FleetModel("m", 0.5, 200.0, 600.0, 50.0)
    draws = [sample_latency_ms(model, f"prompt {i}") for i in range(4000)]
    assert draws[:50] == [sample_latency_ms(model, f"prompt {i}") for i in range(50)]
    assert statistics.median(draws) == pytest.approx(200.0, rel=0.06)
    p95 = statistics.quantiles(draws, n=100)[94]
    assert p95 == pytest.approx(600.0, rel=0.12)


@settings(max_examples=150, deadline=None)
@given(
    prompt=st.text(min_size=0, max_size=200),
    quality=st.floats(min_value=0.0, max_value=1.0),
    json_mode=st.booleans(),
)
def test_engine_is_pure_and_json_validity_matches_flag(
    prompt: str, quality: float, json_mode: bool
) -> None:
    model = FleetModel("prop-model", quality, 100.0, 200.0, 50.0)
    engine = AnswerEngine()
    first = engine.answer(model, prompt, json_mode=json_mode)
    assert first == AnswerEngine().answer(model, prompt, json_mode=json_mode)
    if json_mode:
        try:
            json.loads(first.content)
            parsed = True
        except json.JSONDecodeError:
            parsed = False
        assert parsed is first.correct


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_unknown_model_is_404_with_openai_error(client: httpx.Client) -> None:
    error = assert_error_shape(chat(client, "no-such-model", "hi"), 404)
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2, 3]",
        b"",
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
        json.dumps({"model": "gpt-4o"}).encode(),
        json.dumps({"model": "gpt-4o", "messages": "hi"}).encode(),
        json.dumps({"model": "gpt-4o", "messages": [{"content": "hi"}]}).encode(),
        json.dumps(
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}
        ).encode(),
        json.dumps(
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "yaml"},
            }
        ).encode(),
    ],
)
def test_malformed_body_is_400(client: httpx.Client, body: bytes) -> None:
    response = client.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error_shape(response, 400)


def test_unknown_route_is_404(client: httpx.Client) -> None:
    assert_error_shape(client.get("/v2/nothing"), 404)
    assert_error_shape(client.post("/v1/embeddings", json={}), 404)


def test_keep_alive_survives_errors(fleet: RunningFleet) -> None:
    conn = http.client.HTTPConnection(fleet.host, fleet.port, timeout=10)
    try:
        bodies = [
            json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "a"}]}),
            "{broken",
            json.dumps({"model": "nope", "messages": [{"role": "user", "content": "a"}]}),
            json.dumps({"model": WEAK, "messages": [{"role": "user", "content": "b"}]}),
        ]
        statuses = []
        for body in bodies:
            conn.request("POST", "/v1/chat/completions", body=body)
            response = conn.getresponse()
            payload = response.read()
            assert int(response.getheader("Content-Length", "-1")) == len(payload)
            assert response.version == 11
            statuses.append(response.status)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert statuses == [200, 400, 404, 200]


# --------------------------------------------------------------------------------------------
# GSM8K replay
# --------------------------------------------------------------------------------------------


def test_gsm8k_replay_returns_recorded_text(
    gsm8k_client: httpx.Client, gsm8k_rows: dict[str, Any]
) -> None:
    rows = list(gsm8k_rows.values())
    sample = rows[:3] + [r for r in rows if "\n" in r.weak_response][:2] + rows[-2:]
    for row in sample:
        for weak in ("llama-3.1-8b-local", "qwen2.5-7b-local"):
            response = chat(gsm8k_client, weak, row.prompt)
            assert response.status_code == 200
            assert content_of(response) == row.weak_response
            assert response.json()["x_fleet"]["correct"] is row.weak_correct
        for strong in ("gpt-4o", "claude-sonnet"):
            assert content_of(chat(gsm8k_client, strong, row.prompt)) == row.strong_response
        for other in ("mistral-small-hosted", "gpt-4o-mini"):
            text = content_of(chat(gsm8k_client, other, row.prompt))
            assert text in (row.weak_response, row.strong_response)


def test_gsm8k_prompt_matching_normalises_whitespace(
    gsm8k_client: httpx.Client, gsm8k_rows: dict[str, Any]
) -> None:
    row = next(iter(gsm8k_rows.values()))
    messy = "\n  " + row.prompt.replace(" ", "   \t") + "  \n"
    response = gsm8k_client.post(
        "/v1/chat/completions",
        json={
            "model": WEAK,
            "messages": [
                {"role": "system", "content": "Solve the maths problem."},
                {"role": "user", "content": "an earlier turn"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": messy},
            ],
        },
    )
    assert content_of(response) == row.weak_response


def test_gsm8k_recorded_correctness_rates(gsm8k_rows: dict[str, Any]) -> None:
    rows = list(gsm8k_rows.values())
    assert len(rows) == 40
    assert sum(r.weak_correct for r in rows) == 20  # even rows
    assert sum(r.strong_correct for r in rows) == 30  # all but every fourth
    assert all(normalise_prompt(r.prompt) == key for key, r in gsm8k_rows.items())
    assert all(r.reference_answer for r in rows)
    assert all("\n" in r.weak_response for r in rows)  # multi-line quoted fields survive


def test_gsm8k_roleless_models_track_quality(gsm8k_rows: dict[str, Any]) -> None:
    engine = AnswerEngine(gsm8k_rows)
    assert (engine.weak_rate, engine.strong_rate) == (0.5, 0.75)
    for slug in ("mistral-small-hosted", "gpt-4o-mini"):
        model = next(m for m in DEFAULT_FLEET if m.slug == slug)
        assert engine.strong_pick_probability(model) == 1.0  # quality above the strong rate
    middling = FleetModel("middling", 0.625, 100.0, 200.0, 50.0)
    assert engine.strong_pick_probability(middling) == pytest.approx(0.5)
    answers = [engine.answer(middling, r.prompt) for r in gsm8k_rows.values()]
    assert {a.source for a in answers} == {"gsm8k-weak", "gsm8k-strong"}


def test_routellm_directory_must_hold_the_gsm8k_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        routellm_gsm8k_path(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"gsm8k_responses\.csv"):
        routellm_gsm8k_path(tmp_path)


def test_gsm8k_loader_reads_multiline_fields(tmp_path: Path) -> None:
    path = tmp_path / "mini.csv"
    path.write_text(
        "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview,"
        "mistralai/Mixtral-8x7B-Instruct-v0.1_response,gpt-4-1106-preview_response,"
        "reference_answer\n"
        '"How many  apples?",True,False," two\nlines\n#### 2","three\n#### 3",2\n',
        encoding="utf-8",
    )
    rows = gsm8k_load(path)
    row = rows["How many apples?"]
    assert row.weak_correct is True and row.strong_correct is False
    assert row.weak_response == " two\nlines\n#### 2"
    assert row.strong_response == "three\n#### 3"
    assert row.reference_answer == "2"
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,other\nx,y\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column"):
        gsm8k_load(bad)


# --------------------------------------------------------------------------------------------
# JSON mode
# --------------------------------------------------------------------------------------------


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def test_json_mode_high_quality_model_mostly_valid(client: httpx.Client) -> None:
    prompts = [f"Extract the entities from sentence number {i}." for i in range(60)]
    results = [chat(client, STRONG, p, response_format={"type": "json_object"}) for p in prompts]
    valid = [_parses(content_of(r)) for r in results]
    assert sum(valid) / len(valid) >= 0.78
    assert not all(valid), "some malformed output is expected at quality 0.90"
    for response, ok in zip(results, valid, strict=True):
        assert response.json()["x_fleet"]["correct"] is ok


def test_json_mode_low_quality_model_mostly_invalid() -> None:
    poor = FleetModel("poor-json", 0.2, 10.0, 20.0, 50.0)
    with (
        fleet_start(models=[poor], latency_scale=0.0) as running,
        httpx.Client(base_url=running.url, timeout=10.0) as c,
    ):
        valid = [
            _parses(content_of(chat(c, "poor-json", f"Reply in JSON about item {i}.")))
            for i in range(60)
        ]
    assert sum(valid) / len(valid) <= 0.4


def test_prompt_mentioning_json_triggers_json_mode(client: httpx.Client) -> None:
    texts = [
        content_of(chat(client, STRONG, f'Return JSON with keys "name" and "age" for person {i}.'))
        for i in range(20)
    ]
    parsed = [json.loads(t) for t in texts if _parses(t)]
    assert len(parsed) >= 14
    assert all(set(obj) == {"name", "age"} for obj in parsed)


def test_json_schema_response_format(client: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "score": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "label": {"enum": ["good", "bad"]},
        },
        "required": ["title", "score", "tags", "label"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "review", "schema": schema}}
    objects = []
    for i in range(20):
        text = content_of(chat(client, STRONG, f"Review product {i}", response_format=fmt))
        if _parses(text):
            objects.append(json.loads(text))
    assert len(objects) >= 14
    for obj in objects:
        assert set(obj) == {"title", "score", "tags", "label"}
        assert isinstance(obj["score"], (int, float)) and isinstance(obj["tags"], list)
        assert obj["label"] in ("good", "bad")


# --------------------------------------------------------------------------------------------
# Failure injection and admin
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_client() -> Iterator[httpx.Client]:
    with (
        fleet_start(latency_scale=0.0) as running,
        httpx.Client(base_url=running.url, timeout=10.0) as c,
    ):
        yield c


def test_admin_outage_and_recovery(fresh_client: httpx.Client) -> None:
    c = fresh_client
    assert chat(c, "gpt-4o", "hello there").status_code == 200

    response = c.post("/admin/models/gpt-4o", json={"down": True})
    assert response.status_code == 200 and response.json()["down"] is True
    error = assert_error_shape(chat(c, "gpt-4o", "hello there"), 503)
    assert error["code"] == "model_unavailable"
    assert chat(c, "claude-sonnet", "hello there").status_code == 200  # others unaffected

    c.post("/admin/models/gpt-4o", json={"down": False, "fail_rate": 1.0})
    statuses = {chat(c, "gpt-4o", f"prompt {i}").status_code for i in range(20)}
    assert statuses <= {429, 500} and 500 in statuses

    response = c.post("/admin/models/gpt-4o", json={"fail_rate": 0.0})
    assert response.json() == {
        "slug": "gpt-4o",
        "down": False,
        "fail_rate": 0.0,
        "configured_fail_rate": 0.0,
    }
    assert chat(c, "gpt-4o", "hello there").status_code == 200

    stats = c.get("/admin/stats").json()
    gpt = stats["models"]["gpt-4o"]
    assert gpt["requests"] == 23
    assert gpt["ok"] == 2
    assert gpt["by_status"]["503"] == 1
    assert stats["models"]["claude-sonnet"]["requests"] == 1
    assert stats["models"]["qwen2.5-7b-local"]["requests"] == 0

    assert c.post("/admin/reset").status_code == 200
    assert c.get("/admin/stats").json()["total_requests"] == 0


def test_admin_validation(fresh_client: httpx.Client) -> None:
    assert_error_shape(fresh_client.post("/admin/models/nope", json={"down": True}), 404)
    assert_error_shape(fresh_client.post("/admin/models/gpt-4o", json={"fail_rate": 2}), 400)
    assert_error_shape(fresh_client.post("/admin/models/gpt-4o", json={"down": "yes"}), 400)
    assert_error_shape(fresh_client.post("/admin/models/gpt-4o", json={"bogus": 1}), 400)
    assert_error_shape(fresh_client.post("/admin/models/gpt-4o", content=b"{x"), 400)


def test_429_carries_retry_after_header() -> None:
    flaky = FleetModel("flaky", 0.9, 10.0, 20.0, 50.0, fail_rate=1.0)
    with (
        fleet_start(models=[flaky], latency_scale=0.0) as running,
        httpx.Client(base_url=running.url, timeout=10.0) as c,
    ):
        responses = [chat(c, "flaky", f"request {i}") for i in range(30)]
    by_status = {r.status_code for r in responses}
    assert by_status == {429, 500}
    for response in responses:
        if response.status_code == 429:
            assert response.headers["retry-after"] == "0"
            assert assert_error_shape(response, 429)["code"] == "rate_limit_exceeded"
        else:
            assert "retry-after" not in response.headers
            assert_error_shape(response, 500)


def test_fail_rate_is_deterministic_and_retries_can_succeed() -> None:
    flaky = FleetModel("flaky", 0.9, 10.0, 20.0, 50.0, fail_rate=0.5)

    def first_attempts_then_retries() -> tuple[list[int], list[int]]:
        with (
            fleet_start(models=[flaky], latency_scale=0.0) as running,
            httpx.Client(base_url=running.url, timeout=10.0) as c,
        ):
            first = [chat(c, "flaky", f"q{i}").status_code for i in range(40)]
            attempts = []
            for i in range(40):
                n = 1
                while chat(c, "flaky", f"retry-{i}").status_code != 200:
                    n += 1
                    assert n < 40, "a 50% fail rate should not fail 40 times in a row"
                attempts.append(n)
        return first, attempts

    first_a, attempts_a = first_attempts_then_retries()
    first_b, attempts_b = first_attempts_then_retries()
    assert first_a == first_b and attempts_a == attempts_b  # same sequence, same outcome
    assert 8 <= sum(s != 200 for s in first_a) <= 32
    assert max(attempts_a) > 1


# --------------------------------------------------------------------------------------------
# Concurrency and latency
# --------------------------------------------------------------------------------------------


def test_200_parallel_requests_all_succeed(fleet: RunningFleet) -> None:
    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=fleet.url, limits=limits, timeout=30.0) as c:
            models = [m.slug for m in DEFAULT_FLEET]

            async def one(i: int) -> int:
                response = await c.post(
                    "/v1/chat/completions",
                    json={
                        "model": models[i % len(models)],
                        "messages": [{"role": "user", "content": f"parallel prompt {i}"}],
                    },
                )
                assert response.json()["object"] == "chat.completion"
                return response.status_code

            return await asyncio.gather(*(one(i) for i in range(200)))

    started = time.perf_counter()
    statuses = asyncio.run(run())
    elapsed = time.perf_counter() - started
    assert statuses == [200] * 200
    assert elapsed < 10.0


def test_latency_sleeps_run_concurrently() -> None:
    slow = FleetModel("slow", 0.9, 200.0, 200.0, 50.0)  # p50 == p95: exactly 200 ms
    with fleet_start(models=[slow], latency_scale=1.0) as running:
        with httpx.Client(base_url=running.url, timeout=10.0) as c:
            started = time.perf_counter()
            assert chat(c, "slow", "one").status_code == 200
            assert time.perf_counter() - started >= 0.19

        def call(i: int) -> int:
            with httpx.Client(base_url=running.url, timeout=10.0) as c:
                return chat(c, "slow", f"concurrent {i}").status_code

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=40) as pool:
            statuses = list(pool.map(call, range(40)))
        elapsed = time.perf_counter() - started
    assert statuses == [200] * 40
    assert elapsed < 3.0  # serially this would take 8 s


def test_latency_scale_multiplies_latency() -> None:
    slow = FleetModel("slow", 0.9, 300.0, 300.0, 50.0)
    with (
        fleet_start(models=[slow], latency_scale=0.1) as running,
        httpx.Client(base_url=running.url, timeout=10.0) as c,
    ):
        started = time.perf_counter()
        response = chat(c, "slow", "scaled")
        elapsed = time.perf_counter() - started
    assert response.json()["x_fleet"]["latency_ms"] == pytest.approx(30.0)
    assert 0.025 <= elapsed < 1.0


# --------------------------------------------------------------------------------------------
# Lifecycle and CLI
# --------------------------------------------------------------------------------------------


def test_stop_is_idempotent_and_releases_port() -> None:
    running = fleet_start(latency_scale=0.0)
    url = running.url
    assert httpx.get(f"{url}/healthz").status_code == 200
    running.stop()
    running.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2.0)


def test_invalid_fleet_configuration_is_rejected() -> None:
    with pytest.raises(ValueError):
        FleetModel("bad", 1.5, 10.0, 20.0, 50.0)
    with pytest.raises(ValueError):
        FleetModel("bad", 0.5, 30.0, 20.0, 50.0)
    twin = FleetModel("twin", 0.5, 10.0, 20.0, 50.0)
    with pytest.raises(ValueError, match="duplicate"):
        fleet_start(models=[twin, twin])
    with pytest.raises(ValueError):
        fleet_start(latency_scale=-1.0)


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(
        json.dumps(
            {
                "models": [
                    {"slug": "a", "quality": 0.5, "latency_ms_p50": 10, "role": "weak"},
                    {
                        "slug": "b",
                        "quality": 0.9,
                        "latency_ms_p50": 20,
                        "latency_ms_p95": 40,
                        "tokens_per_s": 30,
                        "role": "strong",
                        "fail_rate": 0.1,
                        "tier": "tier3",
                    },
                ]
            }
        ),
        encoding="utf-8",
    )
    models = load_config(str(path))
    assert [m.slug for m in models] == ["a", "b"]
    assert models[1].fail_rate == pytest.approx(0.1) and models[1].role == "strong"
    path.write_text(json.dumps([{"slug": "a", "quality": 0.5, "bogus": 1}]), encoding="utf-8")
    with pytest.raises(ValueError, match="bogus"):
        load_config(str(path))


def test_cli_serves_and_exits_cleanly_on_sigterm() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "evaluation.fleet", "--port", "0", "--latency-scale", "0"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("fleet listening on http://127.0.0.1:"), line
        url = line.removeprefix("fleet listening on ")
        assert httpx.get(f"{url}/healthz", timeout=5.0).json()["status"] == "ok"
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            timeout=5.0,
        )
        assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _serve(command: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("fleet listening on http://127.0.0.1:"), (line, proc.stderr.read())
    return proc, line.removeprefix("fleet listening on ")


@pytest.mark.parametrize("via", ["flag", "setting"])
def test_run_fleet_replays_a_recording_the_user_points_at(routellm_dir: Path, via: str) -> None:
    """``manage.py run_fleet --data DIR`` (or SWITCHYARD_ROUTELLM_DIR) replays a RouteLLM
    recording besides the generated workload; without either, only the workload."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", DJANGO_SETTINGS_MODULE="controlplane.settings")
    command = [sys.executable, "manage.py", "run_fleet", "--port", "0", "--latency-scale", "0"]
    if via == "flag":
        command += ["--data", str(routellm_dir)]
    else:
        env["SWITCHYARD_ROUTELLM_DIR"] = str(routellm_dir)
    row = next(iter(gsm8k_load(routellm_gsm8k_path(routellm_dir)).values()))
    proc, url = _serve(command, env)
    try:
        health = httpx.get(f"{url}/healthz", timeout=5.0).json()
        assert health["gsm8k_rows"] == 40 and health["workload_items"] > 5000
        body = {"model": WEAK, "messages": [{"role": "user", "content": row.prompt}]}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=5.0)
        assert content_of(reply) == row.weak_response
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_run_fleet_without_recordings_and_with_a_wrong_directory(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", DJANGO_SETTINGS_MODULE="controlplane.settings")
    env.pop("SWITCHYARD_ROUTELLM_DIR", None)
    command = [sys.executable, "manage.py", "run_fleet", "--port", "0", "--latency-scale", "0"]
    proc, url = _serve(command, env)
    try:
        assert httpx.get(f"{url}/healthz", timeout=5.0).json()["gsm8k_rows"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    failed = subprocess.run(
        [*command, "--data", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert failed.returncode != 0
    assert "gsm8k_responses.csv" in failed.stderr and "RouteLLM layout" in failed.stderr


# --------------------------------------------------------------------------------------------
# The generated workload and the skill profiles
# --------------------------------------------------------------------------------------------


def test_workload_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    for task_class in TASK_CLASSES:
        items = [workload_item(task_class, i) for i in range(30)]
        assert items == [workload_item(task_class, i) for i in range(30)]
        ids = {item.id for item in workload_items(task_class)}
        unique = [item for item in items if item.id in ids]  # distinct prompts, in order
        assert unique == list(workload_items(task_class)[: len(unique)]) and len(unique) > 15
        other = [workload_item(task_class, i, seed=DEFAULT_SEED + 1) for i in range(30)]
        assert [i.prompt for i in other] != [i.prompt for i in items]
    digest = hashlib.sha256(
        "\n".join(workload_item("multi-step-reasoning", i).prompt for i in range(5)).encode()
    ).hexdigest()
    # Generated afresh in a new interpreter: the same text (no salted hash, no global state).
    script = (
        "import hashlib; from evaluation.workload import workload_item as w; print(hashlib."
        "sha256('\\n'.join(w('multi-step-reasoning', i).prompt for i in range(5)).encode())"
        ".hexdigest())"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONHASHSEED="123"),
    )
    assert fresh.stdout.strip() == digest


def test_every_item_knows_its_right_wrong_and_invalid_answers() -> None:
    for task_class in TASK_CLASSES:
        items = workload_items(task_class)
        size = items_per_class(task_class)  # 600; ticket-triage 3,000 (the demo learns it)
        assert len(items) == size and len({i.prompt for i in items}) == size  # all distinct
        drawn = [workload_item(task_class, i).difficulty for i in range(600)]
        assert 0.4 < drawn.count(1) / 600 < 0.6 and 0.08 < drawn.count(3) / 600 < 0.22
        share_easy = sum(i.difficulty == 1 for i in items) / len(items)
        assert {i.difficulty for i in items} == {1, 2, 3} and share_easy > 0.3
        for item in items:
            assert item.reference and item.answers and item.wrong and item.invalid
            assert all(item.is_correct(a) for a in item.answers), item.id
            assert not any(item.is_correct(a) for a in item.wrong + item.invalid), item.id


def test_invoice_answers_meet_the_schema_unless_invalid() -> None:
    validator = jsonschema.Draft202012Validator(INVOICE_SCHEMA)
    for item in workload_items("field-extraction")[:200]:
        for text in item.answers + item.wrong:
            assert not list(validator.iter_errors(json.loads(text))), text
        for text in item.invalid:
            try:
                errors = list(validator.iter_errors(json.loads(text)))
            except json.JSONDecodeError:
                continue
            assert errors, text


def test_skill_profiles_decide_answers_per_model_and_item(client: httpx.Client) -> None:
    items = workload_items("multi-step-reasoning")[:300]
    rates = {}
    for slug in ("llama-3.1-8b-local", "gpt-4o-mini", "mistral-small-hosted"):
        replies = [chat_ok(client, slug, item.prompt) for item in items]
        sources = [r.json()["x_fleet"]["source"] for r in replies]
        assert set(sources) <= {"workload-correct", "workload-wrong", "workload-invalid"}
        for item, reply in zip(items, replies, strict=True):
            assert item.is_correct(content_of(reply)) is reply.json()["x_fleet"]["correct"]
        rates[slug] = sources.count("workload-correct") / len(items)
        assert "workload-invalid" in sources and "workload-wrong" in sources
    # The profiles behind the demo: mini misses the 0.85 target, mistral clears it.
    assert rates["llama-3.1-8b-local"] == pytest.approx(0.70, abs=0.06)
    assert rates["gpt-4o-mini"] == pytest.approx(0.84, abs=0.05)
    assert rates["mistral-small-hosted"] == pytest.approx(0.95, abs=0.03)
    # Harder items are answered worse.
    engine, llama = AnswerEngine(), next(m for m in DEFAULT_FLEET if m.slug == WEAK)
    by_level = {
        level: [engine.answer(llama, i.prompt).correct for i in items if i.difficulty == level]
        for level in (1, 3)
    }
    assert sum(by_level[1]) / len(by_level[1]) > sum(by_level[3]) / len(by_level[3]) + 0.25
    # Same model, same item: the same answer, from any server.
    again = [content_of(chat_ok(client, "gpt-4o-mini", item.prompt)) for item in items[:20]]
    with (
        fleet_start(latency_scale=0.0) as other,
        httpx.Client(base_url=other.url, timeout=10.0) as other_client,
    ):
        assert again == [
            content_of(chat(other_client, "gpt-4o-mini", i.prompt)) for i in items[:20]
        ]


def test_judges_check_quoted_workload_answers_with_their_own_reliability(
    client: httpx.Client,
) -> None:
    items = workload_items("long-report-synthesis")[:80]

    def verdict(model: str, item: WorkloadItem, answer: str) -> str:
        prompt = DEFAULT_JUDGE_TEMPLATE.format(
            prompt=item.prompt, answer=answer, reference=item.reference
        )
        return content_of(chat_ok(client, model, prompt)).rsplit("Answer: ", 1)[-1]

    for judge, floor in (("gpt-4o", 0.9), ("llama-3.1-8b-local", 0.7)):
        right = [verdict(judge, i, i.answers[0]) for i in items]
        wrong = [verdict(judge, i, i.wrong[0]) for i in items]
        agree = (right.count("Yes") + wrong.count("No")) / (2 * len(items))
        assert agree >= floor, judge
    strict = [verdict("gpt-4o", i, i.answers[0]) == "Yes" for i in items]
    loose = [verdict("llama-3.1-8b-local", i, i.answers[0]) == "Yes" for i in items]
    assert sum(strict) > sum(loose)


def test_workload_errors_are_transient_and_stalls_time_out() -> None:
    """Profiles inject transient 5xx/429 (a retry usually succeeds) and stalls: a stalled
    request answers only after ``stall_s`` — past a short client timeout."""
    items = workload_items("ticket-triage")[:600]
    skill = SKILLS[WEAK]
    stalled = [i for i in items if stable_unit("stall", WEAK, i.id) < skill.timeout_rate][:1]
    assert stalled, "the profile stalls on a few items"
    with (
        fleet_start(latency_scale=0.0, stall_s=1.5) as running,
        httpx.Client(base_url=running.url, timeout=10.0) as c,
    ):
        statuses = [chat(c, WEAK, item.prompt).status_code for item in items]
        assert set(statuses) <= {200, 429, 500} and {429, 500} & set(statuses)
        assert 0.002 < sum(s != 200 for s in statuses) / len(statuses) < 0.05
        body = {"model": WEAK, "messages": [{"role": "user", "content": stalled[0].prompt}]}
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/chat/completions", json=body, timeout=0.5)
        started = time.perf_counter()
        assert chat(c, WEAK, stalled[0].prompt).status_code in {200, 429, 500}
        assert time.perf_counter() - started >= 1.4


# --------------------------------------------------------------------------------------------
# Provider aliases and judge prompts (used by evaluation sweeps)
# --------------------------------------------------------------------------------------------


def test_provider_model_ids_answer_as_their_fleet_model(client: httpx.Client) -> None:
    by_alias = chat(client, "meta-llama/Llama-3.1-8B-Instruct", "Name a colour.")
    by_slug = chat(client, "llama-3.1-8b-local", "Name a colour.")
    assert by_alias.status_code == 200
    assert by_alias.json()["model"] == "llama-3.1-8b-local"
    assert content_of(by_alias) == content_of(by_slug)


def test_judge_prompts_get_a_verdict_about_the_quoted_answer(client: httpx.Client) -> None:
    def judge(answer: str, reference: str, i: int) -> str:
        prompt = (
            f"Is the answer below correct?\n<request>\nWhat is {i} + {i}?\n</request>\n"
            f"<answer>\n{answer}\n</answer>\n<reference>\n{reference}\n</reference>\n\n"
            "Is the answer acceptable?"
        )
        return content_of(chat(client, STRONG, prompt)).rsplit("Answer: ", 1)[-1]

    right = [judge(f"Answer: {2 * i}", str(2 * i), i) for i in range(40)]
    wrong = [judge(f"Answer: {2 * i + 1}", str(2 * i), i) for i in range(40)]
    assert set(right + wrong) <= {"Yes", "No"}
    assert right.count("Yes") >= 30 and wrong.count("No") >= 30
