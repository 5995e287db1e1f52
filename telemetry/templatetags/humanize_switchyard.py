"""Number formats of the dashboards: dollars, percentages, milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django import template

register = template.Library()


@register.filter
def usd(value: float | None) -> str:
    if value is None:
        return "—"
    amount = float(value)
    if abs(amount) >= 10_000:
        return f"${amount / 1000:,.1f}k"
    if abs(amount) >= 100:
        return f"${amount:,.0f}"
    return f"${amount:,.2f}"


@register.filter
def pct(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{float(value) * 100:.{int(digits)}f} %"


@register.filter
def ms(value: float | None) -> str:
    if value is None:
        return "—"
    amount = float(value)
    return f"{amount / 1000:.1f} s" if amount >= 1000 else f"{amount:.0f} ms"


@register.filter
def intcomma_plain(value: int | float | None) -> str:
    return "—" if value is None else f"{int(value):,}"


@register.filter
def duration_label(value: timedelta) -> str:
    hours = int(value.total_seconds() // 3600)
    if hours % 24 == 0:
        days = hours // 24
        return "1 day" if days == 1 else f"{days} days"
    return "1 hour" if hours == 1 else f"{hours} hours"


@register.filter
def epoch_time(value: float | None) -> str:
    """Seconds since the epoch as a UTC time of day (circuit transitions)."""
    if not value:
        return "—"
    return datetime.fromtimestamp(float(value), tz=UTC).strftime("%H:%M:%S UTC")
