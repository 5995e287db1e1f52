from __future__ import annotations

from typing import Any

import pytest

from controlplane.demo import demo_registry_load, demo_users_load
from telemetry.demo_traffic import demo_traffic_load


@pytest.fixture
def demo_world(db: Any) -> dict[str, Any]:
    """The demo registry with three days of demo traffic (through the real ingestion path)."""
    demo_registry_load()
    demo_users_load()
    result = demo_traffic_load(decisions=1500, days=3, seed=11)
    assert not result["skipped"]
    return result
