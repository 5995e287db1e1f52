"""The dashboard filters, validated at the edge: every page reads them from the URL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.utils import timezone

from telemetry.figures import STACKS
from telemetry.selectors import DEFAULT_RANGE, RANGES, DashboardFilters, bucket_for_span

RANGE_CHOICES = [(key, key) for key in RANGES] + [("custom", "custom")]
TIER_CHOICES = [("", "any tier"), ("1", "tier 1"), ("2", "tier 2"), ("3", "tier 3")]
FILTER_FIELDS = ("range", "start", "end", "team", "application", "task_class", "model", "tier")
_SLUG = r"^[a-z0-9][a-z0-9._-]*$"


class DashboardFilterForm(forms.Form):
    range = forms.ChoiceField(choices=RANGE_CHOICES, required=False)
    start = forms.DateTimeField(
        required=False, input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]
    )
    end = forms.DateTimeField(
        required=False, input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]
    )
    team = forms.RegexField(regex=_SLUG, max_length=64, required=False)
    application = forms.RegexField(regex=_SLUG, max_length=64, required=False)
    task_class = forms.RegexField(regex=_SLUG, max_length=64, required=False)
    model = forms.RegexField(regex=_SLUG, max_length=64, required=False)
    tier = forms.TypedChoiceField(
        choices=TIER_CHOICES, coerce=int, empty_value=None, required=False
    )
    stack = forms.ChoiceField(choices=[(k, v) for k, v in STACKS.items()], required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("range") == "custom":
            start, end = data.get("start"), data.get("end")
            if start is None:
                self.add_error("start", "A custom range needs a start.")
            elif end is not None and end <= start:
                self.add_error("end", "The end must be after the start.")
            elif start < timezone.now() - timedelta(days=400):
                self.add_error("start", "At most 400 days back.")
        return data

    def filters(self, **fixed: Any) -> DashboardFilters:
        """The validated filters (defaults when the form is invalid); ``fixed`` wins."""
        data = self.cleaned_data if self.is_valid() else {}
        range_key = data.get("range") or DEFAULT_RANGE
        dims: dict[str, Any] = {
            "team": data.get("team") or "",
            "application": data.get("application") or "",
            "task_class": data.get("task_class") or "",
            "model": data.get("model") or "",
            "tier": data.get("tier"),
        }
        dims.update(fixed)
        if range_key == "custom" and data.get("start"):
            start = _aware(data["start"])
            end = _aware(data["end"]) if data.get("end") else timezone.now()
            return DashboardFilters(
                start=start,
                end=end,
                bucket=bucket_for_span(end - start),
                range_key="custom",
                **dims,
            )
        return DashboardFilters.for_range(range_key, **dims)

    def stack_choice(self) -> str:
        data = self.cleaned_data if self.is_valid() else {}
        return data.get("stack") or "model"


def _aware(value: datetime) -> datetime:
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


def filters_query(filters: DashboardFilters, **overrides: Any) -> str:
    """The URL query of these filters (for links that keep the current view)."""
    params: dict[str, Any] = {"range": filters.range_key}
    if filters.range_key == "custom":
        params["start"] = filters.start.strftime("%Y-%m-%dT%H:%M")
        params["end"] = filters.end.strftime("%Y-%m-%dT%H:%M")
    for name, value in filters.dimension_items():
        params[name] = value
    params.update(overrides)
    return urlencode({k: v for k, v in params.items() if v not in ("", None)})
