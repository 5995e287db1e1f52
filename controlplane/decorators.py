from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from controlplane.roles import user_has_role

View = Callable[..., HttpResponse]


def role_required(role: str) -> Callable[[View], View]:
    """Signed-out visitors go to the login page; signed-in people without the role get 403."""

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not user_has_role(request.user, role):
                raise PermissionDenied(f"This page needs the {role} role.")
            return view(request, *args, **kwargs)

        wrapped.required_role = role  # type: ignore[attr-defined]  # read by the page tests
        return wrapped

    return decorator
