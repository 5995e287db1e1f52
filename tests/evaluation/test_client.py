"""The model client over real HTTP: retries, Retry-After, timeouts, statuses, SSRF refusals."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.test import override_settings

from evaluation.client import ModelTarget, chat_complete, http_client
from evaluation.fleet import FleetModel, RunningFleet, fleet_start

MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]


def target(url: str, slug: str = "gpt-4o", **extra: Any) -> ModelTarget:
    return ModelTarget(slug=slug, base_url=f"{url}/v1", provider_model=slug, **extra)


def test_ok_reads_content_and_usage(eval_fleet: RunningFleet) -> None:
    result = chat_complete(target(eval_fleet.url), MESSAGES)
    assert result.status == "ok" and result.http_status == 200
    assert "5" in result.content
    assert result.input_tokens > 0 and result.output_tokens > 0
    assert result.attempts == 1 and result.finish_reason == "stop"


def test_provider_model_alias_is_answered(eval_fleet: RunningFleet) -> None:
    alias = ModelTarget(
        slug="llama-3.1-8b-local",
        base_url=f"{eval_fleet.url}/v1",
        provider_model="meta-llama/Llama-3.1-8B-Instruct",
    )
    assert chat_complete(alias, MESSAGES).status == "ok"


def test_one_pooled_client_per_process() -> None:
    assert http_client() is http_client()
    assert http_client().follow_redirects is False


@override_settings(SWITCHYARD_EVAL_BACKOFF_S=0.01)
def test_retries_429_and_5xx_until_success() -> None:
    flaky = FleetModel("flaky", 0.9, 10.0, 20.0, 50.0, fail_rate=0.5)
    with fleet_start(models=[flaky], latency_scale=0.0) as fleet:
        results = [
            chat_complete(
                target(fleet.url, "flaky"), [{"role": "user", "content": f"q{i}"}], retries=8
            )
            for i in range(30)
        ]
        stats = fleet.state.stats()
    assert all(r.status == "ok" for r in results)
    assert max(r.attempts for r in results) > 1
    assert stats["models"]["flaky"]["errors"] > 0  # type: ignore[index]


@override_settings(SWITCHYARD_EVAL_BACKOFF_S=0.01)
def test_gives_up_after_retries_with_error_status() -> None:
    down = FleetModel("down", 0.9, 10.0, 20.0, 50.0, fail_rate=1.0)
    with fleet_start(models=[down], latency_scale=0.0) as fleet:
        result = chat_complete(target(fleet.url, "down"), MESSAGES, retries=2)
    assert result.status == "error" and result.attempts == 3
    assert result.http_status in {429, 500}


class _Scripted(BaseHTTPRequestHandler):
    """Answers from a script: status codes, headers, bodies, delays."""

    script: list[tuple[int, dict[str, str], bytes, float]] = []
    seen: list[float] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append(time.monotonic())
        status, headers, body, delay = type(self).script.pop(0)
        time.sleep(delay)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[_Scripted]]]:
    handler = type("Handler", (_Scripted,), {"script": [], "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


OK_BODY = (
    b'{"choices":[{"message":{"role":"assistant","content":"{\\"answer\\": 1, '
    b'\\"confidence\\": 0.2}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,'
    b'"completion_tokens":3}}'
)


@override_settings(SWITCHYARD_EVAL_BACKOFF_S=0.001)
def test_retry_after_is_honoured(scripted: tuple[str, type[_Scripted]]) -> None:
    url, handler = scripted
    handler.script = [(429, {"Retry-After": "1"}, b"{}", 0.0), (200, {}, OK_BODY, 0.0)]
    result = chat_complete(target(url), MESSAGES)
    assert result.status == "ok" and result.attempts == 2
    assert handler.seen[1] - handler.seen[0] >= 0.95
    assert (result.input_tokens, result.output_tokens) == (7, 3)


def test_low_confidence_and_invalid_output(scripted: tuple[str, type[_Scripted]]) -> None:
    url, handler = scripted
    handler.script = [(200, {}, OK_BODY, 0.0), (200, {}, b'{"choices": []}', 0.0)]
    assert chat_complete(target(url), MESSAGES, min_confidence=0.5).status == "low_confidence"
    assert chat_complete(target(url), MESSAGES).status == "invalid_output"


def test_timeout_status(scripted: tuple[str, type[_Scripted]]) -> None:
    url, handler = scripted
    handler.script = [(200, {}, OK_BODY, 1.0)]
    result = chat_complete(target(url, timeout_s=0.2), MESSAGES)
    assert result.status == "timeout"


def test_redirects_are_not_followed(scripted: tuple[str, type[_Scripted]]) -> None:
    url, handler = scripted
    handler.script = [(302, {"Location": "http://169.254.169.254/latest/meta-data"}, b"", 0.0)]
    result = chat_complete(target(url), MESSAGES)
    assert result.status == "error" and result.error == "redirect refused"
    assert len(handler.seen) == 1


def test_metadata_address_is_refused_at_call_time() -> None:
    result = chat_complete(
        ModelTarget(slug="evil", base_url="http://169.254.169.254/v1", provider_model="x"),
        MESSAGES,
    )
    assert result.status == "error" and result.attempts == 0
    assert "metadata" in result.error


@override_settings(SWITCHYARD_MODEL_URL_HOSTS=["metadata.internal.test"])
def test_allowlisted_name_resolving_to_metadata_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS can change after registration: the resolved address is checked at every call."""

    def fake_getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    result = chat_complete(
        ModelTarget(slug="m", base_url="http://metadata.internal.test/v1", provider_model="x"),
        MESSAGES,
    )
    assert result.status == "error" and "169.254.169.254" in result.error


def test_host_off_the_allowlist_is_refused() -> None:
    result = chat_complete(
        ModelTarget(slug="m", base_url="http://10.1.2.3/v1", provider_model="x"), MESSAGES
    )
    assert result.status == "error" and "allowlist" in result.error


class _Headers(_Scripted):
    authorization: list[str | None] = []

    def do_POST(self) -> None:
        type(self).authorization.append(self.headers.get("Authorization"))
        super().do_POST()


def test_sends_the_models_key_and_no_header_without_one() -> None:
    handler = type("Handler", (_Headers,), {"script": [], "seen": [], "authorization": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        handler.script = [(200, {}, OK_BODY, 0.0), (200, {}, OK_BODY, 0.0)]
        assert chat_complete(target(url, api_key="sk-provider"), MESSAGES).status == "ok"
        assert chat_complete(target(url), MESSAGES).status == "ok"
        assert handler.authorization == ["Bearer sk-provider", None]
    finally:
        server.shutdown()
        server.server_close()
