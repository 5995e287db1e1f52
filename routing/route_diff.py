"""Routing-table changes as a diff of routes (plain Python, no Django).

A route is compared field by field — primary, fallbacks, escalation triggers, conditions,
strategy — so a reviewer sees what changes for each task class instead of two tables side
by side. Used by the proposals (queue and detail) and by the routing-table comparison page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FIELDS: tuple[str, ...] = ("primary", "fallbacks", "triggers", "conditions", "strategy")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """What a route does, in the terms a reviewer compares."""

    primary: str
    fallbacks: tuple[str, ...] = ()
    triggers: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()
    strategy: str = "rule"


@dataclass(frozen=True, slots=True)
class FieldChange:
    name: str
    before: str
    after: str
    # For lists: what was removed and what was added (order changes show as both empty).
    removed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteChange:
    task_class: str
    kind: str  # added | removed | changed
    changes: tuple[FieldChange, ...] = field(default_factory=tuple)
    before: RouteSpec | None = None
    after: RouteSpec | None = None


def _text(value: Any) -> str:
    if isinstance(value, tuple | list):
        return " → ".join(value) if value else "none"
    return str(value) if value not in (None, "") else "none"


def spec_diff(before: RouteSpec, after: RouteSpec) -> tuple[FieldChange, ...]:
    changes = []
    for name in FIELDS:
        old, new = getattr(before, name), getattr(after, name)
        if old == new:
            continue
        if isinstance(old, tuple):
            removed = tuple(x for x in old if x not in new)
            added = tuple(x for x in new if x not in old)
            changes.append(FieldChange(name, _text(old), _text(new), removed, added))
        else:
            changes.append(FieldChange(name, _text(old), _text(new)))
    return tuple(changes)


def routes_diff(
    before: Mapping[str, RouteSpec], after: Mapping[str, RouteSpec]
) -> list[RouteChange]:
    """Per task class (sorted): added, removed or changed routes; unchanged ones left out."""
    out = []
    for slug in sorted(set(before) | set(after)):
        old, new = before.get(slug), after.get(slug)
        if old is None and new is not None:
            out.append(RouteChange(slug, "added", spec_diff(RouteSpec(primary=""), new), None, new))
        elif new is None and old is not None:
            out.append(RouteChange(slug, "removed", (), old, None))
        elif old is not None and new is not None and old != new:
            out.append(RouteChange(slug, "changed", spec_diff(old, new), old, new))
    return out


def conditions_text(
    *,
    max_context_tokens: int | None,
    max_latency_budget_ms: int | None,
    data_classifications: Sequence[str],
    teams: Sequence[str],
    output_cap: int | None,
) -> tuple[str, ...]:
    out = []
    if max_context_tokens:
        out.append(f"context ≤ {max_context_tokens}")
    if max_latency_budget_ms:
        out.append(f"latency ≤ {max_latency_budget_ms} ms")
    if data_classifications:
        out.append(f"data {'/'.join(data_classifications)}")
    if teams:
        out.append(f"teams {'/'.join(teams)}")
    if output_cap:
        out.append(f"output cap {output_cap}")
    return tuple(out)
