"""A registry generation number: bumped after any registry change commits.

Deciders keep an in-memory snapshot of the registry and compare this number (one cheap
query) to know when to reload, instead of reloading on every request.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.db.models import Model
from django.db.models.signals import m2m_changed, post_delete, post_save

SEQUENCE = "controlplane_registry_generation"


def generation_current() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT last_value FROM {SEQUENCE}")  # noqa: S608 (constant name)
        return int(cursor.fetchone()[0])


def generation_bump() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT nextval('{SEQUENCE}')")


def _bump_after_commit(sender: type[Model], **kwargs: Any) -> None:
    from controlplane.audit import AUDITED

    if sender in AUDITED and not kwargs.get("raw"):
        # After commit: a reader that sees the new number also sees the new rows.
        transaction.on_commit(generation_bump)


post_save.connect(_bump_after_commit, dispatch_uid="registry-generation-save")
post_delete.connect(_bump_after_commit, dispatch_uid="registry-generation-delete")


def _bump_after_m2m_commit(sender: type[Model], action: str, **kwargs: Any) -> None:
    # Which teams an application may act for (Application.acts_for_teams) is cached with
    # its API keys: a change must reach every decider like any other registry change.
    from controlplane.models import Application

    if sender is Application.acts_for_teams.through and action.startswith("post_"):
        transaction.on_commit(generation_bump)


m2m_changed.connect(_bump_after_m2m_commit, dispatch_uid="registry-generation-m2m")
