"""Audit trail for every registry change.

Changes are captured with model signals rather than in each service, so that edits made
through Django admin, the shell or a migration are audited exactly like service calls.
Who made the change comes from a context variable set by the middleware (web requests),
by ``audit_actor`` (services, commands, Celery tasks) or falls back to "system".
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.forms.models import model_to_dict

from controlplane import models as registry
from routing.models import LlmRouter, SemanticRoute

_actor: contextvars.ContextVar[tuple[Any, str] | None] = contextvars.ContextVar(
    "audit_actor", default=None
)
_comment: contextvars.ContextVar[str] = contextvars.ContextVar("audit_comment", default="")

AUDITED: tuple[type[models.Model], ...] = (
    registry.ModelEndpoint,
    registry.ModelPrice,
    registry.TaskClass,
    registry.RoutingTableVersion,
    registry.Route,
    registry.Budget,
    registry.Team,
    registry.Application,
    registry.ApiKey,
    SemanticRoute,  # part of how a class is routed (routing.semantic)
    LlmRouter,  # likewise (routing.llm_router)
)
# Never copied into the audit log.
_HIDDEN_FIELDS = {"secret_hash"}


@contextmanager
def audit_actor(user: Any = None, label: str | None = None, comment: str = "") -> Iterator[None]:
    """Attribute every change made inside the block to ``user`` (or ``label``)."""
    name = label or (getattr(user, "get_username", lambda: "")() if user is not None else "")
    token = _actor.set((user if getattr(user, "pk", None) else None, name or "system"))
    comment_token = _comment.set(comment)
    try:
        yield
    finally:
        _actor.reset(token)
        _comment.reset(comment_token)


def snapshot(instance: models.Model) -> dict[str, Any]:
    data = model_to_dict(instance)
    data = {k: v for k, v in data.items() if k not in _HIDDEN_FIELDS}
    data["id"] = instance.pk
    # Round-trip through JSON so Decimals, datetimes and model instances become plain values.
    result: dict[str, Any] = json.loads(json.dumps(data, cls=DjangoJSONEncoder, default=str))
    return result


def _write(instance: models.Model, action: str, before: Any, after: Any) -> None:
    actor = _actor.get()
    user, label = actor if actor is not None else (None, "system")
    registry.AuditLog.objects.create(
        actor=user,
        actor_label=label[:150],
        action=action,
        object_type=instance._meta.model_name or "",
        object_id=str(instance.pk),
        object_repr=str(instance)[:200],
        before=before,
        after=after,
        comment=_comment.get(),
    )


@receiver(pre_save)
def _remember_before(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    if sender not in AUDITED or kwargs.get("raw"):
        return
    before = None
    if instance.pk is not None:
        old = sender._default_manager.filter(pk=instance.pk).first()
        before = snapshot(old) if old is not None else None
    instance._audit_before = before  # type: ignore[attr-defined]


@receiver(post_save)
def _record_save(
    sender: type[models.Model], instance: models.Model, created: bool, **kwargs: Any
) -> None:
    if sender not in AUDITED or kwargs.get("raw"):
        return
    before = getattr(instance, "_audit_before", None)
    after = snapshot(instance)
    if before == after:
        return
    _write(instance, "create" if created else "update", before, after)


@receiver(post_delete)
def _record_delete(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    if sender not in AUDITED:
        return
    _write(instance, "delete", snapshot(instance), None)


def audit_event(instance: models.Model, action: str, comment: str = "") -> None:
    """Record a named action (activate, rollback, revoke, rotate) beside the field diff."""
    token = _comment.set(comment or _comment.get())
    try:
        _write(instance, action, None, snapshot(instance))
    finally:
        _comment.reset(token)
