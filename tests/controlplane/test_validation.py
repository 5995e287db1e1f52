"""Each registry validation failure names its field and saves nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from controlplane import services
from controlplane.models import ModelEndpoint, ModelPrice, Route, RoutingTableVersion
from tests import factories

pytestmark = pytest.mark.django_db


def _fields(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, list[str]]:
    return exc.value.message_dict


def test_negative_price_is_refused_and_nothing_saved() -> None:
    with pytest.raises(ValidationError) as exc:
        factories.model_create(slug="neg", input_usd_per_mtok="-1")
    assert "input_usd_per_mtok" in _fields(exc)
    assert not ModelEndpoint.objects.filter(slug="neg").exists()


def test_missing_price_is_refused() -> None:
    model = factories.model_create()
    with pytest.raises(ValidationError) as exc:
        services.model_price_add(
            model=model,
            input_usd_per_mtok="1",
            output_usd_per_mtok=None,
            effective_from=timezone.now(),
        )
    assert "output_usd_per_mtok" in _fields(exc)
    assert model.prices.count() == 1


def test_unknown_tier_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        factories.model_create(slug="t4", tier=4)
    assert "tier" in _fields(exc)
    assert not ModelEndpoint.objects.filter(slug="t4").exists()


def _draft(registry: dict[str, Any]) -> RoutingTableVersion:
    return services.routing_version_draft_create()


def test_fallback_chain_containing_primary_is_refused(registry: dict[str, Any]) -> None:
    draft = _draft(registry)
    with pytest.raises(ValidationError) as exc:
        services.route_set(
            version=draft,
            task_class=registry["triage"],
            primary=registry["mid"],
            fallbacks=["mid-cloud"],
        )
    assert "primary" in " ".join(_fields(exc)["fallbacks"])


def test_fallback_chain_repeating_a_model_is_refused(registry: dict[str, Any]) -> None:
    draft = _draft(registry)
    with pytest.raises(ValidationError) as exc:
        services.route_set(
            version=draft,
            task_class=registry["triage"],
            primary=registry["local"],
            fallbacks=["mid-cloud", "mid-cloud"],
        )
    assert "twice" in " ".join(_fields(exc)["fallbacks"])


def test_fallback_chain_with_disabled_model_is_refused(registry: dict[str, Any]) -> None:
    services.model_endpoint_set_status(model=registry["big"], status="disabled")
    draft = _draft(registry)
    with pytest.raises(ValidationError) as exc:
        services.route_set(
            version=draft,
            task_class=registry["triage"],
            primary=registry["local"],
            fallbacks=["big-cloud"],
        )
    assert "disabled" in " ".join(_fields(exc)["fallbacks"])


def test_output_cap_above_model_maximum_is_refused(registry: dict[str, Any]) -> None:
    draft = _draft(registry)
    with pytest.raises(ValidationError) as exc:
        services.route_set(
            version=draft,
            task_class=registry["triage"],
            primary=registry["local"],
            fallbacks=[],
            output_cap=999_999,
        )
    assert "output_cap" in _fields(exc)
    route = Route.objects.get(version=draft, task_class=registry["triage"])
    assert route.output_cap is None  # the copied route is unchanged


def test_cloud_model_for_local_only_class_is_refused(registry: dict[str, Any]) -> None:
    draft = _draft(registry)
    with pytest.raises(ValidationError) as exc:
        services.route_set(
            version=draft, task_class=registry["redact"], primary=registry["big"], fallbacks=[]
        )
    assert "primary" in _fields(exc)
    with pytest.raises(ValidationError) as exc:
        services.route_set(
            version=draft,
            task_class=registry["redact"],
            primary=registry["local"],
            fallbacks=["mid-cloud"],
        )
    assert "cloud" in " ".join(_fields(exc)["fallbacks"])


def test_version_missing_a_route_for_an_active_class_cannot_activate(
    registry: dict[str, Any],
) -> None:
    factories.task_class_create(slug="new-class")
    draft = _draft(registry)
    with pytest.raises(ValidationError) as exc:
        services.routing_version_activate(version=draft)
    assert "new-class" in " ".join(_fields(exc)["routes"])
    draft.refresh_from_db()
    assert draft.status == "draft"
    assert RoutingTableVersion.objects.get(status="active") == registry["version"]


def test_activating_a_draft_whose_model_is_disabled_is_refused(registry: dict[str, Any]) -> None:
    draft = _draft(registry)
    services.model_endpoint_set_status(model=registry["local"], status="disabled")
    with pytest.raises(ValidationError) as exc:
        services.routing_version_activate(version=draft)
    assert any("disabled" in " ".join(v) for v in _fields(exc).values())
    assert RoutingTableVersion.objects.get(status="active") == registry["version"]


def test_model_url_must_be_allowlisted() -> None:
    with pytest.raises(ValidationError) as exc:
        factories.model_create(slug="evil", base_url="http://169.254.169.254/latest/meta-data")
    assert "base_url" in _fields(exc)
    with pytest.raises(ValidationError):
        factories.model_create(slug="other", base_url="https://attacker.example.net/v1")
    with pytest.raises(ValidationError):
        factories.model_create(slug="ftp", base_url="ftp://127.0.0.1/v1")
    assert not ModelEndpoint.objects.filter(slug__in=["evil", "other", "ftp"]).exists()
    assert ModelPrice.objects.count() == 0
