"""Control characters in any string of a decision or outcome body are refused at the edge.

A NUL that reached PostgreSQL would fail the whole group-commit batch (everyone's
decisions, 503) or the request (500). Each string field with a NUL → 400 ``invalid``
naming the field, in the one error shape, with nothing stored; good requests sent in the
same moment are answered 201 and stored.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connections
from django.test import Client

from routing.snapshot import registry_cache
from telemetry.models import DecisionIdempotency, DecisionOutcome, DecisionRecord

pytestmark = pytest.mark.django_db(transaction=True)

NUL = "\x00"


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    registry_cache.invalidate()


def _post(client: Client, secret: str, path: str, body: Any) -> Any:
    return client.post(
        path, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )


def _decision(**fields: Any) -> dict[str, Any]:
    return {"task_class": "triage", **fields}


# (body, the field the 400 names)
DECISION_CASES = [
    (_decision(task_class=f"tri{NUL}age"), "task_class"),
    (_decision(prompt=f"hello{NUL}"), "prompt"),
    (_decision(team=f"team-a{NUL}"), "team"),
    (_decision(end_user=f"user{NUL}1"), "end_user"),
    (_decision(request_id=f"req{NUL}1"), "request_id"),
    (_decision(prompt_template={"id": f"t{NUL}", "version": "1"}), "prompt_template.id"),
    (_decision(prompt_template={"id": "t", "version": f"1{NUL}"}), "prompt_template.version"),
    (_decision(retrieval={"query": f"q{NUL}"}), "retrieval.query"),
    (_decision(retrieval={"document_ids": ["ok", f"kb{NUL}2"]}), "retrieval.document_ids"),
    (_decision(metadata={f"ke{NUL}y": "v"}), "metadata"),
    (_decision(metadata={"key": f"v{NUL}"}), "metadata"),
]


@pytest.mark.parametrize(
    ("body", "field"), DECISION_CASES, ids=[f"{f}-{i}" for i, (_, f) in enumerate(DECISION_CASES)]
)
def test_a_nul_in_any_decision_field_is_a_400_naming_it(
    api_key: str, client: Client, body: dict[str, Any], field: str
) -> None:
    response = _post(client, api_key, "/api/v1/decisions", body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["status"] == 400
    assert list(error["fields"]) == [field], error
    assert error["message"].startswith(f"{field}: control characters")
    assert DecisionRecord.objects.count() == 0 and DecisionIdempotency.objects.count() == 0


@pytest.mark.parametrize("char", ["\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f"])
def test_other_c0_control_characters_are_refused(api_key: str, client: Client, char: str) -> None:
    response = _post(client, api_key, "/api/v1/decisions", _decision(end_user=f"a{char}b"))
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["end_user"]


def test_tab_newline_and_carriage_return_are_text(
    api_key: str, client: Client, registry: dict[str, Any]
) -> None:
    # The class keeps free text for a week, so the stored row shows what was accepted.
    triage = registry["triage"]
    triage.prompt_retention_days = 7
    triage.save()
    response = _post(
        client,
        api_key,
        "/api/v1/decisions",
        _decision(prompt="line one\r\nline\ttwo\n", metadata={"note": "a\tb"}),
    )
    assert response.status_code == 201, response.content
    stored = DecisionRecord.objects.get()
    assert stored.metadata == {"note": "a\tb"}
    assert stored.prompt == "line one\r\nline\ttwo\n"


def _attempt(**fields: Any) -> dict[str, Any]:
    return {
        "model": "small-local",
        "status": "ok",
        "latency_ms": 10,
        "input_tokens": 5,
        "output_tokens": 7,
        **fields,
    }


def _outcome(**fields: Any) -> dict[str, Any]:
    return {"attempts": [_attempt()], "final_status": "ok", **fields}


OUTCOME_CASES = [
    (_outcome(attempts=[_attempt(model=f"small{NUL}")]), "attempts.model"),
    (_outcome(attempts=[_attempt(escalation_reason=f"x{NUL}")]), "attempts.escalation_reason"),
    (_outcome(user_feedback=f"up{NUL}"), "user_feedback"),
    (_outcome(validation={f"sch{NUL}ema": True}), "validation"),
    (_outcome(validation={"schema": f"ok{NUL}"}), "validation"),
    (_outcome(validation={"errors": ["fine", f"bad{NUL}"]}), "validation"),
    (_outcome(validation={"detail": {"path": f"$.x{NUL}"}}), "validation"),
    (_outcome(retrieval_document_ids=[f"kb{NUL}"]), "retrieval_document_ids"),
]


@pytest.mark.parametrize(
    ("body", "field"), OUTCOME_CASES, ids=[f"{f}-{i}" for i, (_, f) in enumerate(OUTCOME_CASES)]
)
def test_a_nul_in_any_outcome_field_is_a_400_naming_it(
    api_key: str, client: Client, body: dict[str, Any], field: str
) -> None:
    decision_id = _post(client, api_key, "/api/v1/decisions", _decision()).json()["decision_id"]
    path = f"/api/v1/decisions/{decision_id}/outcome"
    response = _post(client, api_key, path, body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and list(error["fields"]) == [field], error
    assert DecisionOutcome.objects.count() == 0
    # The same report without the NUL is accepted: only the bad string was refused.
    assert _post(client, api_key, path, _outcome(validation={"schema": "ok"})).status_code == 200


def test_bad_requests_do_not_disturb_good_ones_sent_in_the_same_moment(api_key: str) -> None:
    """Good and NUL-carrying requests interleaved from many threads: each good one is
    answered 201 and stored, each bad one 400, and no batch fails."""
    rounds = 6
    bad_bodies = [body for body, _ in DECISION_CASES]
    results: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(bad_bodies) + rounds)

    def call(kind: str, body: dict[str, Any]) -> None:
        client = Client()
        try:
            barrier.wait(timeout=30)
            response = _post(client, api_key, "/api/v1/decisions", body)
            decision_id = response.json().get("decision_id", "")
            with lock:
                results.append((kind, response.status_code, decision_id))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=call, args=("bad", body)) for body in bad_bodies]
    threads += [
        threading.Thread(target=call, args=("good", _decision(request_id=f"good-{n}")))
        for n in range(rounds)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    good = [r for r in results if r[0] == "good"]
    bad = [r for r in results if r[0] == "bad"]
    assert [status for _, status, _ in good] == [201] * rounds, results
    assert [status for _, status, _ in bad] == [400] * len(bad_bodies), results
    stored = {str(i) for i in DecisionRecord.objects.values_list("id", flat=True)}
    assert stored == {decision_id for _, _, decision_id in good}
