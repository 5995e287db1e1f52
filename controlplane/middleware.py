from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse

from controlplane.audit import audit_actor
from controlplane.errors import error_response

logger = logging.getLogger(__name__)


class DatabaseUnavailableMiddleware:
    """A lost database answers 503 with a reason: JSON for the API, never an HTML 500."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            return self.get_response(request)
        except (OperationalError, InterfaceError) as exc:
            return self._unavailable(request, exc)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, OperationalError | InterfaceError):
            return self._unavailable(request, exception)
        return None

    def _unavailable(self, request: HttpRequest, exc: Exception) -> HttpResponse:
        logger.warning("database unavailable on %s: %s", request.path, exc)
        if request.path.startswith("/api/") or request.path in {"/metrics", "/readyz"}:
            response: HttpResponse = error_response(
                503, "database_unavailable", "The database is unreachable; retry."
            )
        else:
            response = HttpResponse(
                "<h1>Service unavailable</h1><p>The database is unreachable; retry shortly.</p>",
                status=503,
            )
        response["Retry-After"] = "1"
        return response


class AuditActorMiddleware:
    """Attribute registry changes made during a request to the signed-in person."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if (
            user is not None
            and getattr(user, "is_authenticated", False)
            and request.method in {"POST", "PUT", "PATCH", "DELETE"}
        ):
            with audit_actor(user):
                return self.get_response(request)
        return self.get_response(request)
