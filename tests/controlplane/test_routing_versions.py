from __future__ import annotations

import threading
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from controlplane import services
from controlplane.models import AuditLog, Route, RoutingTableVersion

pytestmark = pytest.mark.django_db


def test_activated_version_is_immutable(registry: dict[str, Any]) -> None:
    active = registry["version"]
    with pytest.raises(ValidationError) as exc:
        services.route_set(
            version=active, task_class=registry["triage"], primary=registry["mid"], fallbacks=[]
        )
    assert "version" in exc.value.message_dict
    route = Route.objects.get(version=active, task_class=registry["triage"])
    assert route.primary == registry["local"]


def test_edit_creates_a_draft_copy_and_activation_swaps_atomically(
    registry: dict[str, Any],
) -> None:
    old = registry["version"]
    draft = services.routing_version_draft_create(note="try mid")
    assert draft.status == "draft" and draft.routes.count() == 2
    services.route_set(
        version=draft,
        task_class=registry["triage"],
        primary=registry["mid"],
        fallbacks=["big-cloud"],
    )
    services.routing_version_activate(version=draft, comment="mid for triage")
    old.refresh_from_db()
    draft.refresh_from_db()
    assert (old.status, draft.status) == ("retired", "active")
    assert RoutingTableVersion.objects.filter(status="active").count() == 1
    entry = AuditLog.objects.filter(action="activate", object_id=str(draft.pk)).get()
    assert entry.comment == "mid for triage"


def test_rollback_reactivates_the_previous_version(registry: dict[str, Any]) -> None:
    first = registry["version"]
    draft = services.routing_version_draft_create()
    services.routing_version_activate(version=draft)
    rolled = services.routing_version_rollback()
    assert rolled.pk == first.pk
    first.refresh_from_db()
    draft.refresh_from_db()
    assert (first.status, draft.status) == ("active", "retired")
    assert AuditLog.objects.filter(action="activate", object_id=str(first.pk)).count() == 2


def test_rollback_without_history_is_refused(db: Any) -> None:
    with pytest.raises(ValidationError):
        services.routing_version_rollback()


@pytest.mark.django_db(transaction=True)
def test_concurrent_activations_leave_exactly_one_active(registry: dict[str, Any]) -> None:
    drafts = [services.routing_version_draft_create() for _ in range(4)]
    errors: list[BaseException] = []

    def activate(version: RoutingTableVersion) -> None:
        try:
            services.routing_version_activate(version=version)
        except BaseException as exc:  # recorded for the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=activate, args=(d,)) for d in drafts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert RoutingTableVersion.objects.filter(status="active").count() == 1
    assert RoutingTableVersion.objects.filter(status="retired").count() == 4


def test_registry_changes_are_audited_with_before_and_after(registry: dict[str, Any]) -> None:
    model = registry["mid"]
    services.model_endpoint_set_status(model=model, status="deprecated")
    entry = AuditLog.objects.filter(
        object_type="modelendpoint", object_id=str(model.pk), action="update"
    ).latest("at")
    assert entry.before["status"] == "active" and entry.after["status"] == "deprecated"
    assert entry.changed_fields() == ["status"]
    created = AuditLog.objects.filter(object_type="taskclass", action="create").count()
    assert created == 2
    assert AuditLog.objects.filter(object_type="modelprice", action="create").count() == 3


def test_database_refuses_changes_to_an_activated_versions_routes(
    registry: dict[str, Any],
) -> None:
    from django.db import IntegrityError, transaction

    active = registry["version"]
    with pytest.raises(IntegrityError), transaction.atomic():
        Route.objects.filter(version=active).update(fallbacks=[])
    with pytest.raises(IntegrityError), transaction.atomic():
        Route.objects.filter(version=active).delete()
    assert Route.objects.get(version=active, task_class=registry["triage"]).fallbacks == [
        "mid-cloud",
        "big-cloud",
    ]
