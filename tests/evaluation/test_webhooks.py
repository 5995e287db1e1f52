"""Webhooks: the reference verifier, backoff, the allowlist, and the whole handoff flow over
real HTTP with a real Celery worker delivering to a local receiver that fails twice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.test import Client

from evaluation.models import DeliveryStatus, Handoff, WebhookDelivery
from evaluation.services import handoffs
from evaluation.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookRefused,
    backoff_delay,
    webhook_headers,
    webhook_verify,
)
from tests import factories
from tests.evaluation.conftest import Worker, wait_for

# Decisions are stored by the recorder on its own connection (committed): flush after.
pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "s3cret-for-tests"
BODY = b'{"event":"handoff.approved","handoff":{"id":"x"}}'


def test_reference_verifier_accepts_a_fresh_signed_delivery() -> None:
    headers = webhook_headers(SECRET, BODY, "whd_1", now=1_800_000_000)
    assert webhook_verify(SECRET, headers, BODY, now=1_800_000_100) == "whd_1"
    lower = {k.lower(): v for k, v in headers.items()}  # header names are case-insensitive
    assert webhook_verify(SECRET, lower, BODY, now=1_800_000_000) == "whd_1"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda h, b: (h, b + b" "), "signature mismatch"),
        (lambda h, b: (h, b.replace(b"approved", b"rejected")), "signature mismatch"),
        (lambda h, b: ({**h, SIGNATURE_HEADER: h[SIGNATURE_HEADER][:-1] + "0"}, b), "signature"),
        (lambda h, b: ({**h, TIMESTAMP_HEADER: str(int(h[TIMESTAMP_HEADER]) + 1)}, b), "signature"),
        (lambda h, b: ({k: v for k, v in h.items() if k != SIGNATURE_HEADER}, b), "missing"),
        (lambda h, b: ({**h, TIMESTAMP_HEADER: "1e9"}, b), "missing"),
        (lambda h, b: ({**h, DELIVERY_HEADER: ""}, b), "missing"),
    ],
    ids=[
        "body-grew",
        "body-changed",
        "signature-changed",
        "timestamp-moved",
        "no-sig",
        "bad-ts",
        "no-id",
    ],
)
def test_reference_verifier_refuses_tampering(change: Any, reason: str) -> None:
    headers = webhook_headers(SECRET, BODY, "whd_1", now=1_800_000_000)
    headers, body = change(headers, BODY)
    with pytest.raises(WebhookRefused, match=reason):
        webhook_verify(SECRET, headers, body, now=1_800_000_000)
    with pytest.raises(WebhookRefused):
        webhook_verify("another-secret", webhook_headers(SECRET, BODY, "w", 0), BODY, now=0)


def test_reference_verifier_refuses_replays() -> None:
    headers = webhook_headers(SECRET, BODY, "whd_7", now=1_800_000_000)
    for late in (1_800_000_301, 1_800_003_600, 1_799_999_699):  # too old, far too old, future
        with pytest.raises(WebhookRefused, match="tolerance"):
            webhook_verify(SECRET, headers, BODY, now=late)
    processed: set[str] = set()

    def seen(delivery_id: str) -> bool:
        if delivery_id in processed:
            return True
        processed.add(delivery_id)
        return False

    assert webhook_verify(SECRET, headers, BODY, now=1_800_000_010, seen=seen) == "whd_7"
    with pytest.raises(WebhookRefused, match="already processed"):  # inside the window
        webhook_verify(SECRET, headers, BODY, now=1_800_000_020, seen=seen)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    assert backoff_delay(1, 2.0, 600, lambda: 0.0) == 1.0
    assert backoff_delay(1, 2.0, 600, lambda: 1.0) == 2.0
    assert backoff_delay(4, 2.0, 600, lambda: 0.0) == 8.0
    assert backoff_delay(4, 2.0, 600, lambda: 1.0) == 16.0
    assert backoff_delay(30, 2.0, 600, lambda: 1.0) == 600.0
    assert backoff_delay(30, 2.0, 600, lambda: 0.0) == 300.0


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://evil.example.com/hook",
        "file:///etc/passwd",
        "http://user:pw@127.0.0.1/hook",
        "http://[fd00:ec2::254]/",
    ],
)
def test_webhook_targets_pass_the_model_url_allowlist(db: Any, url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        handoffs.webhook_url_validate(url)
    assert "url" in caught.value.message_dict


# --- the whole flow, real HTTP and a real worker -----------------------------------------


class Receiver:
    """A local HTTP receiver that verifies each delivery; the first ``failures`` answer 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.accepted: list[dict[str, Any]] = []
        self.refusals: list[str] = []
        self.processed: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = dict(self.headers.items())
                receiver.requests.append((headers, body))
                if len(receiver.requests) <= receiver.failures:
                    self.send_response(500)
                    self.end_headers()
                    return
                try:
                    webhook_verify(SECRET, headers, body, seen=receiver.seen)
                except WebhookRefused as exc:
                    receiver.refusals.append(exc.reason)
                    # Already processed: acknowledge without acting twice. Anything else: 401.
                    self.send_response(200 if "already processed" in exc.reason else 401)
                    self.end_headers()
                    return
                receiver.accepted.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/switchyard-hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def seen(self, delivery_id: str) -> bool:
        if delivery_id in self.processed:
            return True
        self.processed.add(delivery_id)
        return False


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(failures=2)
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture
def worker_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "SWITCHYARD_WEBHOOK_BACKOFF_S": "0.3"}


@pytest.mark.slow
def test_handoff_flow_over_http_with_a_receiver_that_fails_twice(
    transactional_db: Any,
    live_server: Any,
    registry: dict[str, Any],
    api_key: str,
    receiver: Receiver,
    celery_worker_process: Worker,
) -> None:
    from tests.browser import roles_ensure

    roles_ensure()
    handoffs.webhook_endpoint_set(application=registry["app"], url=receiver.url, secret=SECRET)
    auth = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=live_server.url, headers=auth, timeout=10) as api:
        decided = api.post("/api/v1/decisions", json={"task_class": "triage", "prompt": "Angry!"})
        assert decided.status_code == 201, decided.text
        decision_id = decided.json()["decision_id"]
        body = {"decision_id": decision_id, "draft": "We are sorry.\n", "idempotency_key": "t-1"}
        created = api.post("/api/v1/handoffs", json=body)
        assert created.status_code == 201, created.text
        handoff_id = created.json()["id"]
        assert api.post("/api/v1/handoffs", json=body).json()["id"] == handoff_id

        handoff = Handoff.objects.get(public_id=handoff_id)
        rita = factories.user_create("Reviewer")
        assert handoffs.handoff_claim(handoff=handoff, user=rita)
        handoffs.handoff_approve(handoff=handoff, user=rita, final_text="We are very sorry.\n")

        delivery = wait_for(
            lambda: WebhookDelivery.objects.filter(status=DeliveryStatus.DELIVERED).first(),
            timeout=60,
        )
        polled = api.get(f"/api/v1/handoffs/{handoff_id}").json()
    assert polled["status"] == "edited" and polled["final_text"] == "We are very sorry.\n"
    assert "+We are very sorry." in polled["diff"]

    assert len(receiver.requests) == 3 and delivery.attempts == 3
    assert [entry["status_code"] for entry in delivery.log] == [500, 500, 204]
    assert receiver.accepted == [json.loads(delivery.body)]
    assert receiver.accepted[0]["handoff"]["status"] == "edited"
    # Every attempt is signed anew, under the same delivery id.
    ids = {headers[DELIVERY_HEADER] for headers, _ in receiver.requests}
    assert ids == {f"whd_{delivery.pk}"}
    stamps = [int(headers[TIMESTAMP_HEADER]) for headers, _ in receiver.requests]
    assert stamps == sorted(stamps)

    # A captured delivery replayed: not acted on inside the window (already processed) ...
    headers, raw = receiver.requests[-1]
    replay = httpx.post(receiver.url, content=raw, headers=headers)
    assert replay.status_code == 200 and len(receiver.accepted) == 1
    assert receiver.refusals == ["delivery already processed (replay)"]
    signed = {k: v for k, v in headers.items() if k.lower().startswith("x-switchyard-")}
    forged = httpx.post(receiver.url, content=raw + b" ", headers=signed)
    assert forged.status_code == 401 and receiver.refusals[-1] == "signature mismatch"
    # ... and outside it by the timestamp, even with a fresh delivery id.
    with pytest.raises(WebhookRefused, match="tolerance"):
        webhook_verify(SECRET, headers, raw, now=int(headers[TIMESTAMP_HEADER]) + 301)

    # An Operator sends it again: a fresh round, logged after the first; the receiver knows
    # the delivery id and acknowledges without acting twice.
    handoffs.webhook_resend(delivery=delivery)
    again = wait_for(
        lambda: WebhookDelivery.objects.filter(
            pk=delivery.pk, attempts=1, status="delivered"
        ).first(),
        timeout=30,
    )
    assert len(again.log) == 4 and len(receiver.requests) == 6 and len(receiver.accepted) == 1


# --- attempts without a worker: give-up, SSRF at send time, lost messages, the log page --


def _delivery(registry: dict[str, Any], url: str) -> WebhookDelivery:
    from evaluation.models import WebhookEndpoint
    from tests.evaluation.test_handoffs import _decide, _handoff

    # Created directly: the admin and webhook_endpoint_set would refuse a bad URL up front.
    endpoint = WebhookEndpoint.objects.create(application=registry["app"], url=url, secret=SECRET)
    return WebhookDelivery.objects.create(
        endpoint=endpoint,
        handoff=_handoff(_decide(Client(), registry["secret"])),
        event="handoff.approved",
        body="{}",
    )


@pytest.fixture
def reg(registry: dict[str, Any], api_key: str) -> dict[str, Any]:
    return {**registry, "secret": api_key}


def test_attempts_back_off_then_give_up(reg: dict[str, Any], settings: Any) -> None:
    settings.SWITCHYARD_WEBHOOK_MAX_ATTEMPTS = 3
    from tests.live_server import free_port

    delivery = _delivery(reg, f"http://127.0.0.1:{free_port()}/nobody-listens")
    delays = [handoffs.webhook_delivery_attempt(delivery.pk) for _ in range(3)]
    assert delays[0] is not None and delays[1] is not None and delays[2] is None
    assert 1.0 <= delays[0] <= 2.0 and 2.0 <= delays[1] <= 4.0  # base 2 s, doubling, jitter
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 3
    assert all(entry["error"].startswith("ConnectError") for entry in delivery.log)
    assert handoffs.webhook_delivery_attempt(delivery.pk) is None  # failed: nothing more


def test_a_target_is_rechecked_at_send_time(reg: dict[str, Any]) -> None:
    delivery = _delivery(reg, "http://169.254.169.254/latest/meta-data/")
    handoffs.webhook_delivery_attempt(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.last_status_code is None and "metadata" in delivery.last_error
    assert delivery.status == DeliveryStatus.PENDING  # retried, and refused each time


def test_lost_retry_messages_are_picked_up(
    reg: dict[str, Any], django_capture_on_commit_callbacks: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    delivery = _delivery(reg, "http://127.0.0.1:9/hook")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=timezone.now() - timedelta(minutes=5)
    )
    with transaction.atomic():  # a transactional test: hold the on-commit send back
        with django_capture_on_commit_callbacks() as sent:
            assert handoffs.webhook_deliveries_due() == [delivery.pk]
        transaction.set_rollback(True)  # captured, not enqueued
    assert len(sent) == 1


def test_the_delivery_log_is_for_operators(reg: dict[str, Any], role_client: Any) -> None:
    delivery = _delivery(reg, "http://127.0.0.1:9/hook")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.FAILED, attempts=8, last_error="HTTP 500", last_status_code=500
    )
    operator = role_client("Operator")
    page = operator.get("/webhooks/deliveries/?status=failed").content.decode()
    assert "handoff.approved" in page and "HTTP 500" in page and "Send again" in page
    assert role_client("Reviewer").get("/webhooks/deliveries/").status_code == 403
    assert (
        role_client("Reviewer").post(f"/webhooks/deliveries/{delivery.pk}/resend").status_code
        == 403
    )
    response = operator.post(f"/webhooks/deliveries/{delivery.pk}/resend")
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts == 0
    assert delivery.last_error == "HTTP 500"  # the last answer stays until the next attempt
