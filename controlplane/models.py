"""Registry: models and their prices, task classes, routing tables, budgets, teams, keys, audit."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from routing.enums import (
    BudgetPeriod,
    BudgetScope,
    DataPolicy,
    HardAction,
    LatencyClass,
    Locality,
    ModelStatus,
    Risk,
    RouteStrategy,
    Tier,
    choices,
)
from routing.pricing import price_cost_usd, price_in_force, price_schedule

MODEL_SLUG_VALIDATOR = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]*$", "Use lowercase letters, digits, dots, hyphens or underscores."
)


class ModelEndpoint(models.Model):
    slug = models.CharField(max_length=64, unique=True, validators=[MODEL_SLUG_VALIDATOR])
    provider = models.CharField(max_length=64)
    base_url = models.URLField(max_length=300, help_text="OpenAI-compatible base URL (…/v1)")
    provider_model = models.CharField(max_length=128, help_text="Model id sent to the provider")
    version = models.CharField(max_length=64, blank=True)
    tier = models.PositiveSmallIntegerField(choices=choices(Tier))
    locality = models.CharField(max_length=8, choices=choices(Locality))
    context_window = models.PositiveIntegerField(validators=[MinValueValidator(256)])
    max_output_tokens = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    status = models.CharField(max_length=12, choices=choices(ModelStatus), default="active")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tier", "slug"]
        constraints = [
            models.CheckConstraint(
                condition=Q(tier__in=[t.value for t in Tier]), name="model_tier_valid"
            ),
            models.CheckConstraint(
                condition=Q(locality__in=[v.value for v in Locality]), name="model_locality_valid"
            ),
            models.CheckConstraint(
                condition=Q(status__in=[v.value for v in ModelStatus]),
                name="model_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        from controlplane.services import model_url_validate

        if self.base_url:
            model_url_validate(self.base_url)

    def price_at(self, when: datetime) -> ModelPrice | None:
        """The price in force at ``when`` (routing.pricing.price_in_force, the one rule)."""
        return price_in_force(price_schedule(self.prices.all()), when)


class ModelPrice(models.Model):
    """A dated price: a past request's cost never changes when a new price is added."""

    model = models.ForeignKey(ModelEndpoint, on_delete=models.CASCADE, related_name="prices")
    input_usd_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, validators=[MinValueValidator(Decimal("0"))]
    )
    output_usd_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, validators=[MinValueValidator(Decimal("0"))]
    )
    effective_from = models.DateTimeField()
    is_example = models.BooleanField(
        default=False, help_text="Demo price for illustration, not a quoted list price"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "effective_from"], name="price_unique_per_instant"
            ),
            models.CheckConstraint(
                condition=Q(input_usd_per_mtok__gte=0) & Q(output_usd_per_mtok__gte=0),
                name="price_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} from {self.effective_from:%Y-%m-%d}"

    def cost_usd(self, input_tokens: int, output_tokens: int) -> Decimal:
        return price_cost_usd(self, input_tokens, output_tokens)


class TaskClass(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    risk = models.CharField(max_length=8, choices=choices(Risk), default="normal")
    data_policy = models.CharField(max_length=12, choices=choices(DataPolicy), default="any")
    default_output_cap = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    output_schema = models.JSONField(null=True, blank=True, help_text="JSON Schema of the output")
    latency_class = models.CharField(
        max_length=12, choices=choices(LatencyClass), default="interactive"
    )
    quality_target = models.DecimalField(
        max_digits=4,
        decimal_places=3,
        default=Decimal("0.950"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("1"))],
    )
    prompt_retention_days = models.PositiveIntegerField(
        default=0, help_text="Days to keep request prompts; 0 = never store prompts"
    )
    answer_cache_ttl_s = models.PositiveIntegerField(
        default=0,
        validators=[MaxValueValidator(30 * 86400)],
        help_text="Gateway answer cache: seconds an answer is reused for the same normalised "
        "request; 0 = not cacheable",
    )
    answer_cache_personal_data = models.BooleanField(
        default=False,
        help_text="Also cache answers to requests with personal (or confidential) data",
    )
    condense_above_tokens = models.PositiveIntegerField(
        default=0,
        help_text="Gateway: a request sent to a frontier model with more context than this "
        "(estimated tokens) has it condensed by a local model first; 0 = never",
    )
    local_when_down = models.BooleanField(
        default=False,
        help_text="When every model of its route is unavailable (open circuits), answer with "
        "a local model (degraded but working while offline)",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        verbose_name_plural = "task classes"

    def __str__(self) -> str:
        return self.slug


class VersionStatus(models.TextChoices):
    DRAFT = "draft", "draft"
    ACTIVE = "active", "active"
    RETIRED = "retired", "retired"


class RoutingTableVersion(models.Model):
    """An immutable set of routes once activated. Exactly one version is active."""

    number = models.PositiveIntegerField(unique=True)
    status = models.CharField(max_length=8, choices=VersionStatus.choices, default="draft")
    based_on = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    activated_at = models.DateTimeField(null=True, blank=True)
    activated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["status"], condition=Q(status="active"), name="one_active_routing_table"
            ),
        ]

    def __str__(self) -> str:
        return f"v{self.number} ({self.status})"

    @property
    def is_editable(self) -> bool:
        """Only drafts change; an activated version (active or retired) is immutable."""
        return self.status == VersionStatus.DRAFT


class Route(models.Model):
    version = models.ForeignKey(
        RoutingTableVersion, on_delete=models.CASCADE, related_name="routes"
    )
    task_class = models.ForeignKey(TaskClass, on_delete=models.PROTECT, related_name="routes")
    primary = models.ForeignKey(ModelEndpoint, on_delete=models.PROTECT, related_name="+")
    fallbacks = ArrayField(
        models.CharField(max_length=64), default=list, blank=True, help_text="Ordered model slugs"
    )
    # Escalation triggers: move to the next model in the chain when…
    escalate_confidence_below = models.DecimalField(
        max_digits=4,
        decimal_places=3,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("1"))],
    )
    escalate_on_invalid_output = models.BooleanField(default=True)
    escalate_on_error = models.BooleanField(default=True, help_text="error or timeout")
    # Optional conditions under which the primary applies.
    max_context_tokens = models.PositiveIntegerField(null=True, blank=True)
    max_latency_budget_ms = models.PositiveIntegerField(null=True, blank=True)
    data_classifications = ArrayField(models.CharField(max_length=16), default=list, blank=True)
    teams = ArrayField(models.SlugField(max_length=64), default=list, blank=True)
    output_cap = models.PositiveIntegerField(
        null=True, blank=True, help_text="Overrides the task class's default output cap"
    )
    # How the route decides (routing.enums.RouteStrategy); without its router, by the rule.
    strategy = models.CharField(
        max_length=10, choices=choices(RouteStrategy), default=RouteStrategy.RULE.value
    )

    class Meta:
        ordering = ["task_class__slug"]
        constraints = [
            models.UniqueConstraint(fields=["version", "task_class"], name="one_route_per_class"),
            models.CheckConstraint(
                condition=Q(strategy__in=[s.value for s in RouteStrategy]),
                name="route_strategy_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_class_id} → {self.primary_id}"

    def clean(self) -> None:
        from controlplane.services import route_validate

        if self.version_id and not self.version.is_editable:
            raise ValidationError({"version": "An activated version is immutable; edit a draft."})
        if self.primary_id and self.task_class_id:
            route_validate(self)

    def escalation_triggers(self) -> list[str]:
        triggers = []
        if self.escalate_confidence_below is not None:
            triggers.append(f"confidence_below:{self.escalate_confidence_below}")
        if self.escalate_on_invalid_output:
            triggers.append("invalid_output")
        if self.escalate_on_error:
            triggers.append("error_timeout")
        return triggers


class Team(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Application(models.Model):
    """A calling service; it belongs to a team and holds API keys."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="applications")
    acts_for_teams = models.ManyToManyField(
        Team,
        blank=True,
        related_name="delegated_applications",
        help_text=(
            "Other teams this application may name in a decision request's 'team' field "
            "(their budgets and route conditions then apply, and they are charged). "
            "Without an entry here a request naming another team is refused with 403."
        ),
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Budget(models.Model):
    name = models.CharField(max_length=120, unique=True)
    scope = models.CharField(max_length=12, choices=choices(BudgetScope))
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE)
    application = models.ForeignKey(Application, null=True, blank=True, on_delete=models.CASCADE)
    task_class = models.ForeignKey(TaskClass, null=True, blank=True, on_delete=models.CASCADE)
    period = models.CharField(max_length=6, choices=choices(BudgetPeriod))
    limit_usd = models.DecimalField(
        max_digits=14, decimal_places=4, validators=[MinValueValidator(Decimal("0.0001"))]
    )
    soft_limit_pct = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=Decimal("80"),
        validators=[MinValueValidator(Decimal("1")), MaxValueValidator(Decimal("100"))],
        help_text="Above this share of the limit, requests are downgraded one tier",
    )
    hard_action = models.CharField(max_length=12, choices=choices(HardAction), default="block")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(
                        scope="global",
                        team__isnull=True,
                        application__isnull=True,
                        task_class__isnull=True,
                    )
                    | Q(
                        scope="team",
                        team__isnull=False,
                        application__isnull=True,
                        task_class__isnull=True,
                    )
                    | Q(
                        scope="application",
                        application__isnull=False,
                        team__isnull=True,
                        task_class__isnull=True,
                    )
                    | Q(
                        scope="task_class",
                        task_class__isnull=False,
                        team__isnull=True,
                        application__isnull=True,
                    )
                ),
                name="budget_scope_target_matches",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def scope_key(self) -> str | None:
        if self.scope == BudgetScope.TEAM and self.team is not None:
            return self.team.slug
        if self.scope == BudgetScope.APPLICATION and self.application is not None:
            return self.application.slug
        if self.scope == BudgetScope.TASK_CLASS and self.task_class is not None:
            return self.task_class.slug
        return None

    def period_start(self, when: datetime) -> datetime:
        return budget_period_start(self.period, when)


def budget_period_start(period: str, when: datetime) -> datetime:
    """Start (UTC) of the budget period ("day" or "month") that contains ``when``."""
    when = when.astimezone(UTC)
    start = when.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == BudgetPeriod.MONTH:
        start = start.replace(day=1)
    return start


class BudgetSpend(models.Model):
    """What a budget has spent in one period, and what in-flight decisions hold reserved.

    ``spent_usd`` grows with charged outcomes (atomic ``SET spent = spent + x``);
    ``reserved_usd`` is what this period's ``BudgetLease`` rows still hold (see
    telemetry/budgets.py): raised when a lease is taken, lowered when its holder gives back
    what it did not use, when an outcome settles a decision's hold, and when a lease
    expires."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="spends")
    period_start = models.DateTimeField()
    spent_usd = models.DecimalField(max_digits=16, decimal_places=8, default=Decimal("0"))
    reserved_usd = models.DecimalField(max_digits=16, decimal_places=8, default=Decimal("0"))
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start"], name="one_spend_per_period"),
        ]

    def __str__(self) -> str:
        return f"{self.budget_id} {self.period_start:%Y-%m-%d}: {self.spent_usd}"


class BudgetLease(models.Model):
    """A slice of a budget's headroom held by one process's decision recorder.

    Taken in one short transaction (``spent + reserved + amount <= limit`` for a hard limit,
    then ``reserved += amount``); the recorder then admits decisions against it in memory
    and writes, with each decision, the holds it carved out of it (``budget_holds``). So a
    batch of decisions reserves without touching the budget rows, and ``reserved_usd`` of a
    period is the sum over its leases of ``amount - unused - settled``:

    - the holder *closes* a lease after ``SWITCHYARD_BUDGET_LEASE_S`` (or when it runs out)
      and gives back what it did not admit (``unused_usd``);
    - a decision's first outcome *settles* its hold (``settled_usd``), replacing it by the
      real cost;
    - at ``expires_at`` (closing time + ``SWITCHYARD_RESERVATION_TTL_S``) what is still held
      is released and the lease deleted (telemetry.budgets.budget_leases_expire) - including
      a crashed holder's unused part.
    """

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="leases")
    period_start = models.DateTimeField()
    amount_usd = models.DecimalField(max_digits=16, decimal_places=8)
    unused_usd = models.DecimalField(max_digits=16, decimal_places=8, null=True)
    settled_usd = models.DecimalField(max_digits=16, decimal_places=8, default=Decimal("0"))
    holder = models.CharField(max_length=128)
    created_at = models.DateTimeField(default=timezone.now)
    closes_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["expires_at"], name="budget_lease_expiry")]

    def __str__(self) -> str:
        return f"lease {self.pk} on {self.budget_id}: {self.amount_usd}"

    @property
    def held_usd(self) -> Decimal:
        """What the lease still holds against its budget."""
        return self.amount_usd - (self.unused_usd or Decimal(0)) - self.settled_usd


class ApiScope(models.TextChoices):
    DECIDE = "decide", "decide"
    REPORT = "report", "report"
    READ = "read", "read"
    ADMIN = "admin", "admin"


API_SCOPES = tuple(ApiScope.values)


class ApiKey(models.Model):
    """An application's API key. Only a SHA-256 hash of the secret is stored.

    Secrets are 256-bit random tokens, so a fast hash is safe here (nothing to brute-force)
    and keeps authentication cheap on the decision hot path.
    """

    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=120, blank=True)
    prefix = models.CharField(max_length=16, unique=True, help_text="Visible part of the key")
    secret_hash = models.CharField(max_length=64, unique=True)
    scopes = ArrayField(models.CharField(max_length=8, choices=ApiScope.choices))
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaces"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.application_id})"

    @staticmethod
    def hash_secret(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    def is_usable(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now


class AuditLog(models.Model):
    """Who changed what, when: before/after JSON of every registry change."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=150, help_text="username, api key prefix or system")
    action = models.CharField(max_length=32)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    comment = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_label} {self.action} {self.object_repr}"

    def changed_fields(self) -> list[str]:
        before: dict[str, Any] = self.before or {}
        after: dict[str, Any] = self.after or {}
        return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
