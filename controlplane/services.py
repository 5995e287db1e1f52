"""Writes to the registry. Each service validates, runs atomically and is audited."""

from __future__ import annotations

import ipaddress
import secrets
import socket
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from controlplane.audit import audit_actor, audit_event
from controlplane.models import (
    API_SCOPES,
    ApiKey,
    Application,
    Budget,
    DataPolicy,
    Locality,
    ModelEndpoint,
    ModelPrice,
    ModelStatus,
    Route,
    RoutingTableVersion,
    TaskClass,
    Team,
    VersionStatus,
)

KEY_PREFIX = "sy_"


# --- model URLs (SSRF guard) -------------------------------------------------------------


def model_url_validate(url: str, *, resolve: bool = False) -> None:
    """Refuse model URLs outside the admin-set allowlist, and any link-local/metadata address.

    1. The scheme must be allowlisted (http/https by default).
    2. The host must be allowlisted by name (SWITCHYARD_MODEL_URL_HOSTS).
    3. A literal IP must not be link-local, multicast, unspecified or reserved
       (169.254.169.254 and fd00:ec2::254 — cloud metadata — among them).
    4. With ``resolve``, every address the name resolves to is checked the same way,
       so an allowlisted name pointed at a metadata address is still refused.
    """
    parts = urlsplit(url)
    if parts.scheme not in settings.SWITCHYARD_MODEL_URL_SCHEMES:
        raise ValidationError({"base_url": f"Scheme {parts.scheme!r} is not allowed."})
    host = (parts.hostname or "").lower()
    if not host:
        raise ValidationError({"base_url": "The URL has no host."})
    if parts.username or parts.password:
        raise ValidationError({"base_url": "Credentials in model URLs are not allowed."})
    addresses: list[str] = []
    try:
        ipaddress.ip_address(host)
        addresses.append(host)
    except ValueError:
        if resolve:
            try:
                addresses.extend(str(info[4][0]) for info in socket.getaddrinfo(host, None))
            except OSError as exc:
                raise ValidationError({"base_url": f"Host {host!r} does not resolve."}) from exc
    for address in addresses:
        ip = ipaddress.ip_address(str(address).split("%")[0])
        if (
            ip.is_link_local
            or ip.is_multicast
            or ip.is_unspecified
            or ip.is_reserved
            or str(ip) in {"169.254.169.254", "fd00:ec2::254", "100.100.100.200"}
        ):
            raise ValidationError(
                {"base_url": f"Address {ip} is link-local, metadata or reserved: refused."}
            )
    if host not in [h.lower() for h in settings.SWITCHYARD_MODEL_URL_HOSTS]:
        raise ValidationError({"base_url": f"Host {host!r} is not on the model URL allowlist."})


# --- models and prices ---------------------------------------------------------------------


def model_endpoint_create(
    *,
    slug: str,
    provider: str,
    base_url: str,
    provider_model: str,
    tier: int,
    locality: str,
    context_window: int,
    max_output_tokens: int,
    version: str = "",
    status: str = ModelStatus.ACTIVE,
    input_usd_per_mtok: Decimal | str | None = None,
    output_usd_per_mtok: Decimal | str | None = None,
    price_effective_from: datetime | None = None,
    price_is_example: bool = False,
) -> ModelEndpoint:
    """Create a model and, when given, its first price, in one transaction."""
    model = ModelEndpoint(
        slug=slug,
        provider=provider,
        base_url=base_url,
        provider_model=provider_model,
        version=version,
        tier=tier,
        locality=locality,
        context_window=context_window,
        max_output_tokens=max_output_tokens,
        status=status,
    )
    model.full_clean()
    model_url_validate(base_url)
    with transaction.atomic():
        model.save()
        if input_usd_per_mtok is not None or output_usd_per_mtok is not None:
            model_price_add(
                model=model,
                input_usd_per_mtok=input_usd_per_mtok,
                output_usd_per_mtok=output_usd_per_mtok,
                effective_from=price_effective_from or timezone.now(),
                is_example=price_is_example,
            )
    return model


def _price(value: Decimal | str | float | None, field: str) -> Decimal:
    if value is None or value == "":
        raise ValidationError({field: "A price is required."})
    try:
        price = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValidationError({field: f"{value!r} is not a number."}) from exc
    if not price.is_finite() or price < 0:
        raise ValidationError({field: "A price cannot be negative."})
    return price


def model_price_add(
    *,
    model: ModelEndpoint,
    input_usd_per_mtok: Decimal | str | None,
    output_usd_per_mtok: Decimal | str | None,
    effective_from: datetime,
    is_example: bool = False,
) -> ModelPrice:
    """Add a dated price. Earlier prices stay, so past costs never change."""
    price = ModelPrice(
        model=model,
        input_usd_per_mtok=_price(input_usd_per_mtok, "input_usd_per_mtok"),
        output_usd_per_mtok=_price(output_usd_per_mtok, "output_usd_per_mtok"),
        effective_from=effective_from,
        is_example=is_example,
    )
    price.full_clean()
    price.save()
    return price


def model_endpoint_set_status(*, model: ModelEndpoint, status: str) -> ModelEndpoint:
    if status not in ModelStatus:
        raise ValidationError({"status": f"Unknown status {status!r}."})
    model.status = status
    model.save(update_fields=["status", "updated_at"])
    return model


# --- routing tables ------------------------------------------------------------------------


def route_validate(route: Route, models_by_slug: dict[str, ModelEndpoint] | None = None) -> None:
    """Check one route; raise ValidationError naming the offending field."""
    errors: dict[str, list[str]] = {}
    primary = route.primary
    task_class = route.task_class
    fallbacks = list(route.fallbacks or [])
    if models_by_slug is None:
        models_by_slug = {m.slug: m for m in ModelEndpoint.objects.filter(slug__in=fallbacks)}
    if primary.slug in fallbacks:
        errors.setdefault("fallbacks", []).append(
            f"The fallback chain contains the primary model {primary.slug!r}."
        )
    seen: set[str] = set()
    for slug in fallbacks:
        if slug in seen:
            errors.setdefault("fallbacks", []).append(f"Model {slug!r} appears twice.")
        seen.add(slug)
        model = models_by_slug.get(slug)
        if model is None:
            errors.setdefault("fallbacks", []).append(f"Unknown model {slug!r}.")
            continue
        if model.status == ModelStatus.DISABLED:
            errors.setdefault("fallbacks", []).append(f"Model {slug!r} is disabled.")
        if task_class.data_policy == DataPolicy.LOCAL_ONLY and model.locality == Locality.CLOUD:
            errors.setdefault("fallbacks", []).append(
                f"Task class {task_class.slug!r} is local-only; {slug!r} is a cloud model."
            )
    if primary.status == ModelStatus.DISABLED:
        errors.setdefault("primary", []).append(f"Model {primary.slug!r} is disabled.")
    if task_class.data_policy == DataPolicy.LOCAL_ONLY and primary.locality == Locality.CLOUD:
        errors.setdefault("primary", []).append(
            f"Task class {task_class.slug!r} is local-only; {primary.slug!r} is a cloud model."
        )
    cap = route.output_cap or task_class.default_output_cap
    if cap > primary.max_output_tokens:
        field = "output_cap" if route.output_cap else "task_class"
        errors.setdefault(field, []).append(
            f"Output cap {cap} is above {primary.slug!r}'s maximum of "
            f"{primary.max_output_tokens} tokens."
        )
    if errors:
        raise ValidationError(errors)


def routing_version_draft_create(
    *, based_on: RoutingTableVersion | None = None, note: str = "", user: Any = None
) -> RoutingTableVersion:
    """A new draft holding a copy of ``based_on``'s routes (default: the active version)."""
    with transaction.atomic():
        if based_on is None:
            based_on = RoutingTableVersion.objects.filter(status=VersionStatus.ACTIVE).first()
        last = RoutingTableVersion.objects.select_for_update().order_by("-number").first()
        draft = RoutingTableVersion.objects.create(
            number=(last.number + 1) if last else 1,
            based_on=based_on,
            note=note,
            created_by=user if getattr(user, "pk", None) else None,
        )
        if based_on is not None:
            copies = []
            for route in based_on.routes.all():
                route.pk = None
                route.version = draft
                copies.append(route)
            for route in copies:
                route.save()
    return draft


def route_set(
    *,
    version: RoutingTableVersion,
    task_class: TaskClass,
    primary: ModelEndpoint,
    fallbacks: Sequence[str] = (),
    **options: Any,
) -> Route:
    """Create or replace the route of one task class in a draft version."""
    if not version.is_editable:
        raise ValidationError(
            {"version": f"Version v{version.number} is {version.status}; edit a new draft."}
        )
    route = Route.objects.filter(version=version, task_class=task_class).first() or Route(
        version=version, task_class=task_class
    )
    route.primary = primary
    route.fallbacks = list(fallbacks)
    for name, value in options.items():
        if not hasattr(route, name):
            raise ValidationError({name: "Unknown route option."})
        setattr(route, name, value)
    route.full_clean(exclude=["version", "task_class"], validate_unique=False)
    route_validate(route)
    route.save()
    return route


def routing_version_validate(version: RoutingTableVersion) -> None:
    """Everything needed before activation: complete, and only usable models."""
    routes = list(version.routes.select_related("primary", "task_class"))
    slugs = {s for r in routes for s in r.fallbacks}
    models_by_slug = {m.slug: m for m in ModelEndpoint.objects.filter(slug__in=slugs)}
    errors: dict[str, list[str]] = {}
    routed = {r.task_class_id for r in routes}
    missing = TaskClass.objects.filter(is_active=True).exclude(pk__in=routed)
    names = sorted(missing.values_list("slug", flat=True))
    if names:
        errors["routes"] = [f"No route for active task class(es): {', '.join(names)}."]
    for route in routes:
        try:
            route_validate(route, models_by_slug)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                errors.setdefault(f"routes.{route.task_class.slug}.{field}", []).extend(messages)
    if errors:
        raise ValidationError(errors)


def routing_version_activate(
    *, version: RoutingTableVersion, user: Any = None, comment: str = ""
) -> RoutingTableVersion:
    """Make ``version`` the one active version, atomically.

    1. Lock every version row, so two activations serialise.
    2. Validate the version (complete, models enabled, policies respected).
    3. Retire the current active version and activate this one in the same transaction:
       the partial unique index guarantees there is never a second active version.
    4. Audit the activation; deciders pick up the new version on their next version check.
    """
    with transaction.atomic(), audit_actor(user, comment=comment):
        list(RoutingTableVersion.objects.select_for_update().order_by("pk"))
        version.refresh_from_db()
        if version.status == VersionStatus.ACTIVE:
            raise ValidationError({"version": f"v{version.number} is already active."})
        routing_version_validate(version)
        RoutingTableVersion.objects.filter(status=VersionStatus.ACTIVE).update(
            status=VersionStatus.RETIRED
        )
        version.status = VersionStatus.ACTIVE
        version.activated_at = timezone.now()
        version.activated_by = user if getattr(user, "pk", None) else None
        version.save(update_fields=["status", "activated_at", "activated_by"])
        audit_event(version, "activate", comment)
    return version


def routing_version_rollback(*, user: Any = None, comment: str = "") -> RoutingTableVersion:
    """Re-activate the version that was active before the current one."""
    with transaction.atomic():
        current = (
            RoutingTableVersion.objects.select_for_update()
            .filter(status=VersionStatus.ACTIVE)
            .first()
        )
        previous = (
            RoutingTableVersion.objects.filter(status=VersionStatus.RETIRED)
            .exclude(activated_at=None)
            .order_by("-activated_at")
            .first()
        )
        if previous is None:
            raise ValidationError({"version": "There is no earlier version to roll back to."})
        if current is not None and current.activated_at and previous.activated_at:
            previous = (
                RoutingTableVersion.objects.filter(
                    status=VersionStatus.RETIRED, activated_at__lt=current.activated_at
                )
                .order_by("-activated_at")
                .first()
            ) or previous
        return routing_version_activate(version=previous, user=user, comment=comment or "rollback")


# --- teams, applications, budgets -----------------------------------------------------------


def team_get_or_create(*, slug: str, name: str = "") -> Team:
    team, _ = Team.objects.get_or_create(slug=slug, defaults={"name": name or slug})
    return team


def application_get_or_create(*, slug: str, team: Team, name: str = "") -> Application:
    app, _ = Application.objects.get_or_create(
        slug=slug, defaults={"team": team, "name": name or slug}
    )
    return app


def budget_create(**fields: Any) -> Budget:
    budget = Budget(**fields)
    budget.full_clean()
    budget.save()
    return budget


# --- API keys -------------------------------------------------------------------------------


def _scopes_clean(scopes: Iterable[str]) -> list[str]:
    cleaned = sorted({s.strip() for s in scopes if s.strip()})
    unknown = [s for s in cleaned if s not in API_SCOPES]
    if unknown or not cleaned:
        raise ValidationError(
            {"scopes": f"Scopes must be among {', '.join(API_SCOPES)}; got {cleaned or 'none'}."}
        )
    return cleaned


def api_key_create(
    *,
    application: Application,
    scopes: Iterable[str],
    name: str = "",
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; the secret is returned once and only its hash is stored."""
    prefix = secrets.token_hex(4)
    secret = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        application=application,
        name=name,
        prefix=prefix,
        secret_hash=ApiKey.hash_secret(secret),
        scopes=_scopes_clean(scopes),
        expires_at=expires_at,
    )
    key.save()
    return key, secret


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_event(key, "revoke")
    return key


def api_key_rotate(*, key: ApiKey, grace: timedelta | None = None) -> tuple[ApiKey, str]:
    """Issue a new secret; the old one keeps working for the grace period, then expires."""
    if not key.is_usable():
        raise ValidationError({"key": "A revoked or expired key cannot be rotated."})
    if grace is None:
        grace = timedelta(hours=settings.SWITCHYARD_KEY_ROTATION_GRACE_HOURS)
    with transaction.atomic():
        new_key, secret = api_key_create(
            application=key.application,
            scopes=key.scopes,
            name=key.name,
            expires_at=key.expires_at,
        )
        grace_end = timezone.now() + grace
        key.expires_at = min(key.expires_at, grace_end) if key.expires_at else grace_end
        key.replaced_by = new_key
        key.save(update_fields=["expires_at", "replaced_by"])
        audit_event(key, "rotate")
    return new_key, secret
