"""The WSGI fast path answers POST /api/v1/decisions before Django, like the DRF view."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from routing.snapshot import registry_cache
from telemetry.models import DecisionRecord

pytestmark = pytest.mark.django_db(transaction=True)


def call(
    method: str, path: str, body: bytes = b"", **headers: str
) -> tuple[str, dict[str, str], bytes]:
    from controlplane.wsgi import application

    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
        "wsgi.errors": io.StringIO(),
        "QUERY_STRING": "",
        **headers,
    }
    captured: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        captured["status"], captured["headers"] = status, dict(response_headers)

    chunks = b"".join(application(environ, start_response))
    return captured["status"], captured["headers"], chunks


def test_fast_path_decides_records_and_sets_security_headers(
    registry: dict[str, Any], api_key: str
) -> None:
    registry_cache.invalidate()
    status, headers, body = call(
        "POST",
        "/api/v1/decisions",
        json.dumps({"task_class": "triage"}).encode(),
        HTTP_AUTHORIZATION=f"Bearer {api_key}",
    )
    assert status == "201 Created"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Type"] == "application/json"
    decision = json.loads(body)
    assert DecisionRecord.objects.filter(id=decision["decision_id"]).exists()


def test_fast_path_errors_use_the_one_shape(
    registry: dict[str, Any], api_key: str, settings: Any
) -> None:
    status, headers, body = call("GET", "/api/v1/decisions")
    assert status.startswith("405") and headers["Allow"] == "POST"
    assert json.loads(body)["error"]["code"] == "method_not_allowed"
    status, _, body = call("POST", "/api/v1/decisions", b"{}")
    assert status.startswith("401") and json.loads(body)["error"]["status"] == 401
    settings.SWITCHYARD_MAX_BODY_BYTES = 10
    status, _, body = call(
        "POST",
        "/api/v1/decisions",
        b'{"task_class": "triage"}',
        HTTP_AUTHORIZATION=f"Bearer {api_key}",
    )
    assert status.startswith("413") and json.loads(body)["error"]["code"] == "too_large"


def test_other_paths_go_to_django(registry: dict[str, Any]) -> None:
    status, _, body = call("GET", "/healthz")
    assert status.startswith("200") and json.loads(body) == {"status": "ok"}
