"""The gateway as `make run` serves it: gunicorn with 2 uvicorn workers (controlplane/asgi.py),
its own PostgreSQL with the demo registry, the replay fleet as upstream; the official
``openai`` client in front, the decision and its outcome read back through the web API."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from evaluation.fleet import fleet_start
from tests.live_server import LiveServer, live_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served() -> Iterator[LiveServer]:
    with (
        fleet_start(latency_scale=0.0) as fleet,
        live_server("gateway", {"FLEET_URL": f"{fleet.url}/v1"}, gateway=True) as server,
    ):
        yield server


def test_an_openai_client_only_changes_base_url_and_key(served: LiveServer) -> None:
    client = openai.OpenAI(
        base_url=f"{served.gateway_url}/v1", api_key=served.secret, max_retries=0, timeout=30
    )
    assert "ticket-triage" in {m.id for m in client.models.list()}
    messages = [{"role": "user", "content": "The printer on floor 3 is on fire. Queue?"}]
    plain = client.chat.completions.with_raw_response.create(
        model="ticket-triage", messages=messages
    )
    assert plain.parse().choices[0].message.content
    streamed = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=messages,
        stream=True,
        extra_headers={"X-Switchyard-Task-Class": "ticket-triage"},
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    assert text == plain.parse().choices[0].message.content
    for raw in (plain, streamed):
        decision_id = raw.headers["x-switchyard-decision-id"]
        deadline = time.monotonic() + 5  # the outcome is committed just after the answer
        while True:
            detail = httpx.get(
                f"{served.url}/api/v1/decisions/{decision_id}",
                headers={"Authorization": f"Bearer {served.secret}"},
            ).json()
            if detail.get("outcome") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert detail["outcome"]["final_status"] == "ok"
        assert detail["outcome"]["final_model"] == raw.headers["x-switchyard-model"]
        assert detail["outcome"]["output_tokens"] > 0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{served.gateway_url}/v1", api_key="sy_wrong", max_retries=0
        ).models.list()
