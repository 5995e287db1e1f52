"""DRF permissions: API keys need a scope; signed-in people need a role."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from controlplane.authentication import ApiPrincipal
from controlplane.roles import ADMIN, OPERATOR, VIEWER, user_has_role

# The role a signed-in person needs for what a key does with each scope.
ROLE_FOR_SCOPE = {"read": VIEWER, "decide": OPERATOR, "report": OPERATOR, "admin": ADMIN}


def scope_required(scope: str, role: str | None = None) -> type[BasePermission]:
    """Permission class: an API key with ``scope``, or a person with the matching role."""
    needed_role = role or ROLE_FOR_SCOPE[scope]

    class _ScopeOrRole(BasePermission):
        message = f"This needs the {scope!r} scope (API key) or the {needed_role} role."

        def has_permission(self, request: Request, view: Any) -> bool:
            user = request.user
            if isinstance(user, ApiPrincipal):
                return scope in user.scopes or "admin" in user.scopes
            return user_has_role(user, needed_role)

    _ScopeOrRole.__name__ = f"Scope_{scope}"
    return _ScopeOrRole
