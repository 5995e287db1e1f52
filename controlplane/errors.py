"""One JSON error shape for every API error.

    {"error": {"status": 400, "code": "invalid", "message": "…", "fields": {"name": ["…"]}}}

``fields`` is present when the error is about specific input fields.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


def error_body(
    status_code: int, code: str, message: str, fields: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    error: dict[str, Any] = {"status": status_code, "code": code, "message": message}
    if fields:
        error["fields"] = fields
    error.update(extra)
    return {"error": error}


def error_response(
    status_code: int, code: str, message: str, fields: dict[str, Any] | None = None, **extra: Any
) -> JsonResponse:
    return JsonResponse(error_body(status_code, code, message, fields, **extra), status=status_code)


class ApiError(exceptions.APIException):
    """An API error with its own code and optional extra payload."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        fields: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message, code)
        self.status_code = status_code
        self.error_code = code
        self.message = message
        self.fields = fields
        self.extra = extra


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(v, dict | list) for v in detail):
            out[prefix or "non_field_errors"] = [str(v) for v in detail]
        else:
            for index, value in enumerate(detail):
                out.update(_flatten(value, f"{prefix}[{index}]"))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


def _message_for(fields: dict[str, list[str]]) -> str:
    first_field, messages = next(iter(fields.items()))
    if first_field == "non_field_errors":
        return messages[0]
    return f"{first_field}: {messages[0]}"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApiError):
        body = error_body(exc.status_code, exc.error_code, exc.message, exc.fields, **exc.extra)
        headers = {"Retry-After": "1"} if exc.status_code == 503 else None
        return Response(body, status=exc.status_code, headers=headers)
    if isinstance(exc, DjangoValidationError):
        fields = _flatten(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
        return Response(error_body(400, "invalid", _message_for(fields), fields), status=400)
    if isinstance(exc, OperationalError | InterfaceError):
        return Response(
            error_body(503, "database_unavailable", "The database is unreachable; retry."),
            status=503,
        )
    if isinstance(exc, Http404):
        return Response(error_body(404, "not_found", "Not found."), status=404)
    if isinstance(exc, PermissionDenied):
        return Response(error_body(403, "forbidden", str(exc) or "Forbidden."), status=403)
    response = exception_handler(exc, context)
    if response is None:
        if isinstance(exc, DatabaseError):
            return Response(
                error_body(503, "database_unavailable", "The database is unreachable; retry."),
                status=503,
            )
        return None
    code = "error"
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        return Response(error_body(400, "invalid", _message_for(fields), fields), status=400)
    if isinstance(exc, exceptions.ParseError):
        code = "malformed_json"
    elif isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        code = "unauthenticated"
        response.status_code = status.HTTP_401_UNAUTHORIZED
    elif isinstance(exc, exceptions.PermissionDenied):
        code = "forbidden"
    elif isinstance(exc, exceptions.NotFound):
        code = "not_found"
    elif isinstance(exc, exceptions.MethodNotAllowed):
        code = "method_not_allowed"
    elif isinstance(exc, exceptions.UnsupportedMediaType):
        code = "unsupported_media_type"
    elif isinstance(exc, exceptions.Throttled):
        code = "throttled"
    detail = getattr(exc, "detail", str(exc))
    message = str(detail) if not isinstance(detail, dict | list) else str(next(iter(detail)))
    response.data = error_body(response.status_code, code, message)
    return response


# Django-level handlers: API paths answer JSON, pages answer HTML.


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def handler404(request: HttpRequest, exception: Exception | None = None) -> Any:
    if _is_api(request):
        return error_response(404, "not_found", "Not found.")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


def handler403(request: HttpRequest, exception: Exception | None = None) -> Any:
    if _is_api(request):
        return error_response(403, "forbidden", "Forbidden.")
    from django.views.defaults import permission_denied

    return permission_denied(request, exception or PermissionDenied())


def handler400(request: HttpRequest, exception: Exception | None = None) -> Any:
    if _is_api(request):
        return error_response(400, "bad_request", "Bad request.")
    from django.views.defaults import bad_request

    return bad_request(request, exception or Exception())


def handler500(request: HttpRequest) -> Any:
    if _is_api(request):
        return error_response(500, "server_error", "Internal error; it has been logged.")
    from django.views.defaults import server_error

    return server_error(request)


class ErrorBodySerializer(serializers.Serializer[Any]):
    status = serializers.IntegerField()
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()), required=False
    )


class ErrorSerializer(serializers.Serializer[Any]):
    """The one error shape, for the OpenAPI schema."""

    error = ErrorBodySerializer()


_DESCRIPTIONS = {
    400: "Invalid input; the error names the field",
    401: "Missing, invalid, revoked or expired API key (or not signed in)",
    403: "The key lacks the scope, or the person lacks the role",
    404: "Not found (or not yours)",
    409: "Conflict with the current state",
    413: "Too large",
    422: "Valid but cannot be done",
    429: "Hard budget limit reached",
    503: "Database unreachable; retry",
}


def error_responses(*codes: int) -> dict[int, Any]:
    """OpenAPI responses for the given error status codes (plus 401/403/503 always)."""
    from drf_spectacular.utils import OpenApiResponse

    wanted = sorted({401, 403, 503, *codes})
    return {c: OpenApiResponse(ErrorSerializer, description=_DESCRIPTIONS[c]) for c in wanted}
