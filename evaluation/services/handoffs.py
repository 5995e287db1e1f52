"""Human handoffs: submit a draft, claim it, approve / edit and approve / reject, tell the
service by webhook (signed, retried with backoff and jitter, logged, re-sendable).

States: pending → approved | edited | rejected. Claiming is one conditional UPDATE (the row
is taken only while unclaimed, claim expired, or already the same reviewer's), so of two
reviewers racing for one item exactly one wins; an abandoned claim simply expires after
``SWITCHYARD_HANDOFF_CLAIM_S``. Resolving needs the caller's live claim, in the same
conditional UPDATE, so an expired claim cannot resolve an item someone else now holds.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from controlplane.services import model_url_validate
from evaluation.models import (
    DeliveryStatus,
    Handoff,
    HandoffSource,
    HandoffStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from evaluation.webhooks import backoff_delay, webhook_headers
from telemetry.models import DecisionRecord


class HandoffConflict(Exception):
    """The idempotency key or the decision already has a handoff with another body."""


class HandoffNotClaimed(Exception):
    """The caller does not hold a live claim on the (still pending) handoff."""


@dataclass(frozen=True, slots=True)
class HandoffSubmission:
    draft: str
    context: dict[str, Any]
    sla_minutes: int | None = None
    idempotency_key: str = ""


def _body_sha256(submission: HandoffSubmission) -> str:
    canonical = json.dumps(
        {"draft": submission.draft, "context": submission.context, "sla": submission.sla_minutes},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _existing(record: DecisionRecord, key: str) -> Handoff | None:
    found: Handoff | None = None
    if key:
        keyed = Handoff.objects.filter(application_id=record.application_id, idempotency_key=key)
        found = keyed.first()
    return found or Handoff.objects.filter(decision_id=record.id).first()


def handoff_submit(
    *, record: DecisionRecord, submission: HandoffSubmission, source: str = HandoffSource.API
) -> tuple[Handoff, bool]:
    """The decision's handoff and whether it was created now.

    Idempotent: the same idempotency key — or, without one, the same decision — with the same
    body answers the stored handoff; another body raises :class:`HandoffConflict`.
    """
    body_sha256 = _body_sha256(submission)
    existing = _existing(record, submission.idempotency_key)
    if existing is not None:
        return _same_or_conflict(existing, record, body_sha256)
    sla = submission.sla_minutes or settings.SWITCHYARD_HANDOFF_SLA_MINUTES
    now = timezone.now()
    handoff = Handoff(
        decision_id=record.id,
        decision_created_at=record.created_at,
        application_id=record.application_id,
        application=record.application,
        team=record.team,
        task_class=record.task_class,
        source=source,
        idempotency_key=submission.idempotency_key,
        body_sha256=body_sha256,
        draft=submission.draft,
        context=submission.context,
        sla_minutes=sla,
        due_at=now + timedelta(minutes=sla),
        created_at=now,
    )
    try:
        with transaction.atomic():
            handoff.save()
    except IntegrityError:  # a concurrent submission won the race
        existing = _existing(record, submission.idempotency_key)
        if existing is None:
            raise
        return _same_or_conflict(existing, record, body_sha256)
    return handoff, True


def _same_or_conflict(
    existing: Handoff, record: DecisionRecord, body_sha256: str
) -> tuple[Handoff, bool]:
    if existing.decision_id != record.id:
        raise HandoffConflict("This idempotency key was used for another decision.")
    if existing.body_sha256 != body_sha256:
        raise HandoffConflict("This decision already has a handoff with another draft.")
    return existing, False


def handoff_claim(*, handoff: Handoff, user: Any) -> bool:
    """Claim (or renew the caller's claim on) a pending handoff; False if someone else holds
    it or it is resolved. One conditional UPDATE: of concurrent claims exactly one wins."""
    now = timezone.now()
    taken = (
        Handoff.objects.filter(pk=handoff.pk, status=HandoffStatus.PENDING)
        .filter(
            Q(claimed_by__isnull=True) | Q(claim_expires_at__lte=now) | Q(claimed_by_id=user.pk)
        )
        .update(
            claimed_by_id=user.pk,
            claim_expires_at=now + timedelta(seconds=settings.SWITCHYARD_HANDOFF_CLAIM_S),
        )
    )
    if taken:
        handoff.refresh_from_db(fields=["claimed_by", "claim_expires_at"])
    return bool(taken)


def handoff_claim_next(*, user: Any, task_class: str = "", team: str = "") -> Handoff | None:
    """Claim the oldest pending unclaimed item (SKIP LOCKED: concurrent reviewers each get
    a different one)."""
    now = timezone.now()
    with transaction.atomic():
        rows = Handoff.objects.select_for_update(skip_locked=True).filter(
            Q(claimed_by__isnull=True) | Q(claim_expires_at__lte=now),
            status=HandoffStatus.PENDING,
        )
        if task_class:
            rows = rows.filter(task_class=task_class)
        if team:
            rows = rows.filter(team=team)
        handoff = rows.order_by("created_at", "pk").first()
        if handoff is None:
            return None
        handoff.claimed_by_id = user.pk
        handoff.claim_expires_at = now + timedelta(seconds=settings.SWITCHYARD_HANDOFF_CLAIM_S)
        handoff.save(update_fields=["claimed_by", "claim_expires_at"])
    return handoff


def handoff_release(*, handoff: Handoff, user: Any) -> bool:
    released = Handoff.objects.filter(
        pk=handoff.pk, status=HandoffStatus.PENDING, claimed_by_id=user.pk
    ).update(claimed_by=None, claim_expires_at=None)
    return bool(released)


def handoff_diff(draft: str, final: str) -> str:
    lines = difflib.unified_diff(
        draft.splitlines(keepends=True),
        final.splitlines(keepends=True),
        fromfile="draft",
        tofile="approved",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _resolve(handoff: Handoff, user: Any, **changes: Any) -> Handoff:
    now = timezone.now()
    with transaction.atomic():
        done = Handoff.objects.filter(
            pk=handoff.pk,
            status=HandoffStatus.PENDING,
            claimed_by_id=user.pk,
            claim_expires_at__gt=now,
        ).update(reviewed_by_id=user.pk, reviewed_at=now, claim_expires_at=None, **changes)
        if not done:
            raise HandoffNotClaimed("Claim the item first (your claim may have expired).")
        handoff.refresh_from_db()
        webhook_enqueue(handoff)
    return handoff


def handoff_approve(*, handoff: Handoff, user: Any, final_text: str | None = None) -> Handoff:
    """Approve the draft as is, or with the reviewer's edits (the diff is stored)."""
    final = handoff.draft if final_text is None else final_text.replace("\r\n", "\n")
    if not final.strip():
        raise ValidationError({"final_text": "The approved text cannot be empty."})
    if "\x00" in final:
        raise ValidationError({"final_text": "NUL characters are not allowed."})
    edited = final != handoff.draft
    return _resolve(
        handoff,
        user,
        status=HandoffStatus.EDITED if edited else HandoffStatus.APPROVED,
        final_text=final,
        diff=handoff_diff(handoff.draft, final) if edited else "",
    )


def handoff_reject(*, handoff: Handoff, user: Any, reason: str) -> Handoff:
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "Say why the draft is rejected."})
    if "\x00" in reason:
        raise ValidationError({"reason": "NUL characters are not allowed."})
    return _resolve(handoff, user, status=HandoffStatus.REJECTED, reject_reason=reason[:2000])


# --- webhooks --------------------------------------------------------------------------------


def webhook_url_validate(url: str, *, resolve: bool = False) -> None:
    """Webhook targets pass the model-URL allowlist (scheme, host, no metadata addresses)."""
    try:
        model_url_validate(url, resolve=resolve)
    except ValidationError as exc:
        messages = [m for errors in exc.message_dict.values() for m in errors]
        raise ValidationError({"url": messages}) from exc


def webhook_endpoint_set(*, application: Any, url: str, secret: str = "") -> WebhookEndpoint:
    webhook_url_validate(url)
    secret = secret or uuid.uuid4().hex + uuid.uuid4().hex
    endpoint, _ = WebhookEndpoint.objects.update_or_create(
        application=application, defaults={"url": url, "secret": secret, "is_active": True}
    )
    return endpoint


def handoff_event_body(handoff: Handoff, event: str) -> dict[str, Any]:
    return {
        "event": event,
        "handoff": {
            "id": str(handoff.public_id),
            "decision_id": str(handoff.decision_id),
            "status": handoff.status,
            "final_text": handoff.final_text,
            "edited": handoff.status == HandoffStatus.EDITED,
            "diff": handoff.diff,
            "reject_reason": handoff.reject_reason,
            "reviewed_at": handoff.reviewed_at.isoformat() if handoff.reviewed_at else None,
        },
    }


def webhook_enqueue(handoff: Handoff) -> WebhookDelivery | None:
    """Record a delivery of the handoff's result and send it after the commit."""
    endpoint = WebhookEndpoint.objects.filter(
        application_id=handoff.application_id, is_active=True
    ).first()
    if endpoint is None:
        return None
    event = f"handoff.{handoff.status}"
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint,
        handoff=handoff,
        event=event,
        body=json.dumps(handoff_event_body(handoff, event), sort_keys=True),
        next_attempt_at=timezone.now(),
    )
    _send_after_commit(delivery.pk)
    return delivery


def _send_after_commit(delivery_id: int) -> None:
    from evaluation import tasks

    transaction.on_commit(lambda: tasks.webhook_deliver.delay(delivery_id))


def webhook_resend(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """An Operator sends a delivery again (failed or delivered): a fresh round of retries."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=timezone.now()
    )
    _send_after_commit(delivery.pk)
    delivery.refresh_from_db()
    return delivery


def webhook_deliveries_due(*, grace_s: float = 60.0) -> list[int]:
    """Pending deliveries whose next attempt is overdue by ``grace_s`` — their task message
    was lost (a worker killed between its attempt and scheduling the next): send again."""
    cutoff = timezone.now() - timedelta(seconds=grace_s)
    due = list(
        WebhookDelivery.objects.filter(
            status=DeliveryStatus.PENDING, next_attempt_at__lt=cutoff
        ).values_list("pk", flat=True)[:500]
    )
    for delivery_id in due:
        _send_after_commit(delivery_id)
    return due


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
    try:
        webhook_url_validate(url, resolve=True)
    except ValidationError as exc:
        return None, "; ".join(exc.messages)[:300]
    try:
        with httpx.Client(timeout=settings.SWITCHYARD_WEBHOOK_TIMEOUT_S) as client:
            response = client.post(url, content=body, headers=headers, follow_redirects=False)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]
    if 200 <= response.status_code < 300:
        return response.status_code, ""
    return response.status_code, f"HTTP {response.status_code}"


def webhook_delivery_attempt(delivery_id: int) -> float | None:
    """One attempt; the seconds to wait before the next one, or None (delivered, given up, or
    not pending). The row is locked during the attempt, so two workers never send at once."""
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .select_related("endpoint")
            .filter(pk=delivery_id, status=DeliveryStatus.PENDING)
            .first()
        )
        if delivery is None:
            return None
        body = delivery.body.encode()
        headers = webhook_headers(delivery.endpoint.secret, body, f"whd_{delivery.pk}")
        status_code, error = _post(delivery.endpoint.url, body, headers)
        now = timezone.now()
        delivery.attempts += 1
        delivery.last_status_code = status_code
        delivery.last_error = error
        delivery.log = [
            *delivery.log[-49:],
            {"at": now.isoformat(), "status_code": status_code, "error": error},
        ]
        delay: float | None = None
        if not error:
            delivery.status = DeliveryStatus.DELIVERED
            delivery.delivered_at = now
            delivery.next_attempt_at = None
        elif delivery.attempts >= settings.SWITCHYARD_WEBHOOK_MAX_ATTEMPTS:
            delivery.status = DeliveryStatus.FAILED
            delivery.next_attempt_at = None
        else:
            delay = backoff_delay(
                delivery.attempts,
                settings.SWITCHYARD_WEBHOOK_BACKOFF_S,
                settings.SWITCHYARD_WEBHOOK_MAX_BACKOFF_S,
                random.random,
            )
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        delivery.save()
    return delay
