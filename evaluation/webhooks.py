"""Webhook signatures: how Switchyard signs, and the reference verifier for receivers.

Plain Python (standard library only): copy :func:`webhook_verify` into the receiving service.

Every delivery is a POST with a JSON body and three headers::

    X-Switchyard-Delivery:  <delivery id; the same on every retry of one event>
    X-Switchyard-Timestamp: <Unix seconds when this attempt was signed>
    X-Switchyard-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

A receiver must

1. compute the HMAC over the *raw* body bytes exactly as received (not re-encoded JSON),
   and compare it in constant time (:func:`hmac.compare_digest`);
2. refuse a timestamp further than the tolerance (300 s) from its own clock: a captured
   request replayed later fails, because changing the timestamp breaks the signature;
3. within the window, refuse a delivery id it has already processed (a replay inside the
   window, or Switchyard retrying after a lost 2xx): answer 2xx without acting twice.

Each attempt is signed anew with its own timestamp, so a retry after hours still verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping

SIGNATURE_HEADER = "X-Switchyard-Signature"
TIMESTAMP_HEADER = "X-Switchyard-Timestamp"
DELIVERY_HEADER = "X-Switchyard-Delivery"
TOLERANCE_S = 300
VERSION = "v1"


class WebhookRefused(ValueError):
    """The request is not a valid, fresh Switchyard delivery; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{VERSION}={mac.hexdigest()}"


def webhook_headers(
    secret: str, body: bytes, delivery_id: str, now: float | None = None
) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        "Content-Type": "application/json",
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: webhook_signature(secret, timestamp, body),
    }


def webhook_verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = TOLERANCE_S,
    now: float | None = None,
    seen: Callable[[str], bool] | None = None,
) -> str:
    """The delivery id of a valid, fresh delivery, or :class:`WebhookRefused`.

    ``headers`` is looked up case-insensitively. ``seen(delivery_id)`` — optional — answers
    whether this delivery was already processed (and records it); a True refuses a replay
    inside the tolerance window.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    raw_timestamp = lower.get(TIMESTAMP_HEADER.lower(), "")
    signature = lower.get(SIGNATURE_HEADER.lower(), "")
    delivery_id = lower.get(DELIVERY_HEADER.lower(), "")
    if not raw_timestamp.isdigit() or not signature or not delivery_id:
        raise WebhookRefused("missing or malformed signature headers")
    timestamp = int(raw_timestamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookRefused("timestamp outside the tolerance window (replay?)")
    expected = webhook_signature(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise WebhookRefused("signature mismatch")
    if seen is not None and seen(delivery_id):
        raise WebhookRefused("delivery already processed (replay)")
    return delivery_id


def backoff_delay(attempt: int, base_s: float, cap_s: float, rand: Callable[[], float]) -> float:
    """Seconds before retry ``attempt`` (1 = the first retry): exponential, capped, with
    "equal jitter" (half fixed, half random) so failing receivers are not hit in lockstep."""
    ceiling = min(cap_s, base_s * (2 ** (attempt - 1)))
    return ceiling / 2 + rand() * ceiling / 2
