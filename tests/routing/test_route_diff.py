"""Routing changes as a diff of routes (plain Python)."""

from __future__ import annotations

from dataclasses import replace

from routing.route_diff import RouteSpec, routes_diff, spec_diff

BASE = RouteSpec(
    primary="small-local",
    fallbacks=("mid-cloud", "big-cloud"),
    triggers=("invalid_output", "error_timeout"),
    conditions=("context ≤ 8000",),
    strategy="rule",
)


def test_unchanged_routes_are_left_out() -> None:
    assert routes_diff({"triage": BASE}, {"triage": BASE}) == []


def test_each_field_is_compared() -> None:
    after = RouteSpec(
        primary="mid-cloud",
        fallbacks=("big-cloud", "small-local"),
        triggers=("confidence_below:0.700", "invalid_output", "error_timeout"),
        conditions=(),
        strategy="learned",
    )
    changes = {c.name: c for c in spec_diff(BASE, after)}
    assert list(changes) == ["primary", "fallbacks", "triggers", "conditions", "strategy"]
    assert (changes["primary"].before, changes["primary"].after) == ("small-local", "mid-cloud")
    assert changes["fallbacks"].removed == ("mid-cloud",)
    assert changes["fallbacks"].added == ("small-local",)
    assert changes["triggers"].added == ("confidence_below:0.700",)
    assert changes["triggers"].removed == ()
    assert changes["conditions"].after == "none"
    assert changes["strategy"].after == "learned"


def test_reordered_fallbacks_show_as_a_change_without_additions() -> None:
    after = replace(BASE, fallbacks=("big-cloud", "mid-cloud"))
    (change,) = spec_diff(BASE, after)
    assert change.name == "fallbacks" and change.removed == () and change.added == ()
    assert change.before == "mid-cloud → big-cloud" and change.after == "big-cloud → mid-cloud"


def test_added_and_removed_routes() -> None:
    diff = routes_diff({"triage": BASE, "legacy": BASE}, {"triage": BASE, "refunds": BASE})
    assert [(c.task_class, c.kind) for c in diff] == [("legacy", "removed"), ("refunds", "added")]
    added = diff[1]
    assert added.after == BASE and {f.name for f in added.changes} >= {"primary", "fallbacks"}
