from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from controlplane import services
from tests import factories

pytestmark = pytest.mark.django_db


def test_cost_at_a_time_uses_the_price_effective_then() -> None:
    start = timezone.now() - timedelta(days=10)
    model = factories.model_create(
        input_usd_per_mtok="1.00", output_usd_per_mtok="2.00", price_effective_from=start
    )
    change = start + timedelta(days=5)
    services.model_price_add(
        model=model, input_usd_per_mtok="3.00", output_usd_per_mtok="4.00", effective_from=change
    )
    before = model.price_at(change - timedelta(seconds=1))
    after = model.price_at(change + timedelta(seconds=1))
    assert before is not None and after is not None
    assert before.cost_usd(1_000_000, 1_000_000) == Decimal("3.00")
    assert after.cost_usd(1_000_000, 1_000_000) == Decimal("7.00")
    assert model.price_at(start - timedelta(days=1)) is None
    # Adding a later price never changes what an earlier request cost.
    services.model_price_add(
        model=model,
        input_usd_per_mtok="9",
        output_usd_per_mtok="9",
        effective_from=timezone.now() + timedelta(days=1),
    )
    again = model.price_at(change - timedelta(seconds=1))
    assert again is not None and again.cost_usd(1_000_000, 1_000_000) == Decimal("3.00")
