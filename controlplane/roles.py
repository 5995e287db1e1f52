"""Roles are Django groups; each role names the groups that hold it."""

from __future__ import annotations

from typing import Any

VIEWER, REVIEWER, OPERATOR, ADMIN = "Viewer", "Reviewer", "Operator", "Admin"
ROLE_NAMES = (VIEWER, REVIEWER, OPERATOR, ADMIN)

# A page that needs role X is open to members of these groups.
GRANTED_BY: dict[str, frozenset[str]] = {
    VIEWER: frozenset(ROLE_NAMES),
    REVIEWER: frozenset({REVIEWER, ADMIN}),
    OPERATOR: frozenset({OPERATOR, ADMIN}),
    ADMIN: frozenset({ADMIN}),
}


def user_groups(user: Any) -> frozenset[str]:
    cached: frozenset[str] | None = getattr(user, "_switchyard_groups", None)
    if cached is None:
        if not getattr(user, "is_authenticated", False) or not hasattr(user, "groups"):
            cached = frozenset()
        else:
            cached = frozenset(user.groups.values_list("name", flat=True))
        try:
            user._switchyard_groups = cached
        except AttributeError:
            pass
    return cached


def user_has_role(user: Any, role: str) -> bool:
    if not getattr(user, "is_authenticated", False):
        return False
    if getattr(user, "is_superuser", False):
        return True
    return bool(user_groups(user) & GRANTED_BY[role])
