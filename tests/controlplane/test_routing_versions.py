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


def test_route_strategy_is_the_one_enumeration_everywhere(registry: dict[str, Any]) -> None:
    """Route.strategy takes routing.enums.RouteStrategy (llm included): the model's choices,
    the form validation, the database constraint and the engine's snapshot check agree."""
    from django.db import IntegrityError, transaction

    from routing.engine import ModelInfo, RouteInfo, TaskClassInfo, snapshot_build
    from routing.enums import RouteStrategy, values
    from routing.serializers import DecisionOutputSerializer

    field = Route._meta.get_field("strategy")
    assert [value for value, _ in field.choices] == ["rule", "learned", "semantic", "llm"]
    assert set(DecisionOutputSerializer().fields["strategy"].choices) >= values(RouteStrategy)
    draft = services.routing_version_draft_create(note="llm for triage")
    route = services.route_set(
        version=draft,
        task_class=registry["triage"],
        primary=registry["big"],
        fallbacks=["mid-cloud", "small-local"],
        strategy=RouteStrategy.LLM,
    )
    assert Route.objects.get(pk=route.pk).strategy == "llm"
    with pytest.raises(ValidationError) as exc:
        services.route_set(
            version=draft, task_class=registry["triage"], primary=registry["big"], strategy="gpt"
        )
    assert "strategy" in exc.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        Route.objects.filter(pk=route.pk).update(strategy="gpt")  # a draft: only the check
    model = ModelInfo(
        slug="m", provider="p", base_url="http://127.0.0.1:1/v1", provider_model="m",
        version="1", tier=1, locality="local", context_window=1000, max_output_tokens=10,
        status="active", input_usd_per_mtok=0.0, output_usd_per_mtok=0.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="strategy of route 't'"):
        snapshot_build(
            version=1,
            models=[model],
            task_classes=[TaskClassInfo(slug="t")],
            routes=[RouteInfo(task_class="t", primary="m", strategy="gpt")],
        )
