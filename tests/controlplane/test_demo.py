from __future__ import annotations

from typing import Any

import pytest

from controlplane.demo import demo_load
from controlplane.models import (
    ApiKey,
    Budget,
    ModelEndpoint,
    RoutingTableVersion,
    TaskClass,
)


@pytest.mark.django_db
def test_demo_load_is_idempotent_and_complete(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr("controlplane.demo.CREDENTIALS_PATH", tmp_path / "creds.json")
    monkeypatch.setattr("controlplane.demo.VAR_DIR", tmp_path)
    first = demo_load()
    counts = (
        ModelEndpoint.objects.count(),
        TaskClass.objects.count(),
        RoutingTableVersion.objects.count(),
        Budget.objects.count(),
        ApiKey.objects.count(),
    )
    second = demo_load()
    assert counts == (
        ModelEndpoint.objects.count(),
        TaskClass.objects.count(),
        RoutingTableVersion.objects.count(),
        Budget.objects.count(),
        ApiKey.objects.count(),
    )
    assert first["api_key"]["secret"] == second["api_key"]["secret"]
    assert counts[0] == 6 and counts[1] == 10
    assert set(ModelEndpoint.objects.values_list("tier", flat=True)) == {1, 2, 3}
    assert TaskClass.objects.get(slug="customer-reply-draft").risk == "high"
    assert RoutingTableVersion.objects.filter(status="active").count() == 1
    assert Budget.objects.filter(scope="team").count() == 3
    assert all(p.is_example for m in ModelEndpoint.objects.all() for p in m.prices.all())
