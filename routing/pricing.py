"""The one rule for "the price in force at time t" (plain Python, no Django).

A model's prices are dated: each takes effect at its ``effective_from`` and stays in force
until the next one does. The price in force at ``t`` is the one with the latest
``effective_from`` at or before ``t``; before the first there is none. Everything that
prices tokens goes through :func:`price_in_force` (or :func:`price_ranges`, its SQL-join
form): the decision snapshot (which re-prices itself at :func:`next_price_change`, so a
future-dated price is picked up when it takes effect, without a registry change), outcome
charging, the sweeps' cost deltas and the dashboards' baseline.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Protocol

__all__ = [
    "DatedPrice",
    "next_price_change",
    "price_cost_usd",
    "price_in_force",
    "price_ranges",
    "price_schedule",
]

_MTOK = Decimal(1_000_000)


class DatedPrice(Protocol):
    """Anything with a start time and per-million-token prices (e.g. ``ModelPrice``)."""

    @property
    def effective_from(self) -> datetime: ...

    @property
    def input_usd_per_mtok(self) -> Decimal: ...

    @property
    def output_usd_per_mtok(self) -> Decimal: ...


def _start(price: DatedPrice) -> datetime:
    return price.effective_from


def price_schedule[P: DatedPrice](prices: Iterable[P]) -> list[P]:
    """One model's prices in the order :func:`price_in_force` expects (oldest first)."""
    return sorted(prices, key=_start)


def price_in_force[P: DatedPrice](schedule: Sequence[P], at: datetime) -> P | None:
    """The price in force at ``at``: the latest one effective at or before it, else None.

    ``schedule`` is one model's prices, oldest first (see :func:`price_schedule`)."""
    index = bisect.bisect_right(schedule, at, key=_start) - 1
    return schedule[index] if index >= 0 else None


def next_price_change[P: DatedPrice](
    schedules: Iterable[Sequence[P]], after: datetime
) -> datetime | None:
    """The first time after ``after`` at which some model's price in force changes."""
    upcoming = [
        s[i].effective_from
        for s in schedules
        if (i := bisect.bisect_right(s, after, key=_start)) < len(s)
    ]
    return min(upcoming, default=None)


def price_ranges[P: DatedPrice](
    schedule: Sequence[P],
) -> list[tuple[datetime, datetime | None, Decimal, Decimal]]:
    """The schedule as ``[from, until)`` ranges (``until`` None: still in force), for joining
    in SQL: a time in a range has that range's price in force, as :func:`price_in_force`."""
    out: list[tuple[datetime, datetime | None, Decimal, Decimal]] = []
    for i, price in enumerate(schedule):
        until = schedule[i + 1].effective_from if i + 1 < len(schedule) else None
        out.append(
            (price.effective_from, until, price.input_usd_per_mtok, price.output_usd_per_mtok)
        )
    return out


def price_cost_usd(price: DatedPrice | None, input_tokens: int, output_tokens: int) -> Decimal:
    """What the tokens cost at ``price`` (0 when there is no price)."""
    if price is None:
        return Decimal(0)
    return (
        Decimal(price.input_usd_per_mtok) * input_tokens
        + Decimal(price.output_usd_per_mtok) * output_tokens
    ) / _MTOK
