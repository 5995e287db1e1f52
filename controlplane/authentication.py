"""API-key authentication: ``Authorization: Bearer <secret>``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from controlplane.models import ApiKey, Application
from controlplane.selectors import api_key_from_secret


@dataclass
class ApiPrincipal:
    """Who is calling through an API key: an application with scopes."""

    key_id: int
    key_prefix: str
    application: Application
    scopes: frozenset[str]
    is_authenticated: bool = True
    is_staff: bool = False
    is_superuser: bool = False
    groups: Any = field(default=None)

    def get_username(self) -> str:
        return f"key:{self.key_prefix}"

    @property
    def pk(self) -> None:
        return None


def bearer_secret(header: str) -> str | None:
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return secret.strip()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[ApiPrincipal, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        secret = bearer_secret(header)
        if secret is None:
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <api key>'.")
        key = api_key_from_secret(secret)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.")
        principal = ApiPrincipal(
            key_id=key.pk,
            key_prefix=key.prefix,
            application=key.application,
            scopes=frozenset(key.scopes),
        )
        return principal, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="switchyard"'


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """Documents API-key auth in the OpenAPI schema as an HTTP bearer scheme."""

    target_class = "controlplane.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "Switchyard API key"}
