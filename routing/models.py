"""Routing configuration that is not part of the registry's versioned tables: semantic
routes (``routing.semantic``), defined by example utterances."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from controlplane.models import ModelEndpoint, TaskClass

DEFAULT_SEMANTIC_THRESHOLD = 0.3


class SemanticRoute(models.Model):
    """One semantic route of a task class: requests whose prompt is most similar to these
    utterances (cosine similarity at least ``threshold``) go to ``model`` — when the class's
    route has strategy ``semantic`` and the model is one of its eligible candidates.
    Audited; a change reaches every decider with the registry generation."""

    task_class = models.ForeignKey(
        TaskClass, on_delete=models.CASCADE, related_name="semantic_routes"
    )
    name = models.SlugField(max_length=64)
    model = models.ForeignKey(ModelEndpoint, on_delete=models.PROTECT, related_name="+")
    threshold = models.FloatField(
        default=DEFAULT_SEMANTIC_THRESHOLD,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Minimum similarity (0–1) of the best example for the route to apply",
    )
    utterances = ArrayField(
        models.TextField(max_length=2000), help_text="Example requests of this route"
    )
    is_active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["task_class__slug", "name"]
        constraints = [
            models.UniqueConstraint(fields=["task_class", "name"], name="one_semantic_route_name"),
            models.CheckConstraint(
                condition=Q(threshold__gte=0) & Q(threshold__lte=1),
                name="semantic_route_threshold_valid",
            ),
            models.CheckConstraint(
                condition=Q(utterances__len__gt=0), name="semantic_route_has_utterances"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_class_id}/{self.name} → {self.model_id}"

    def clean(self) -> None:
        texts = [u for u in self.utterances or [] if u.strip()]
        if not texts:
            raise ValidationError({"utterances": "Give at least one example utterance."})
        self.utterances = texts


class LlmRouter(models.Model):
    """A class decided by asking a small local model (``routing.llm_router``): after the
    engine's decision, the router model picks among the eligible candidates from their
    descriptions and the request, within ``timeout_ms`` (else the rule stands). Audited; a
    change reaches every decider with the registry generation."""

    task_class = models.OneToOneField(TaskClass, on_delete=models.CASCADE, related_name="+")
    router_model = models.ForeignKey(
        ModelEndpoint,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="A local model: the request text is sent to it",
    )
    timeout_ms = models.PositiveIntegerField(
        default=800, validators=[MinValueValidator(50), MaxValueValidator(10_000)]
    )
    descriptions = models.JSONField(
        default=dict, blank=True, help_text='What each candidate is good at: {"slug": "text"}'
    )
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["task_class__slug"]
        constraints = [
            models.CheckConstraint(
                condition=Q(timeout_ms__gte=50) & Q(timeout_ms__lte=10_000),
                name="llm_router_timeout_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_class_id}: LLM router {self.router_model_id}"

    def clean(self) -> None:
        if self.router_model_id and self.router_model.locality != "local":
            raise ValidationError(
                {"router_model": "The router model must be local: the request is sent to it."}
            )
        if not isinstance(self.descriptions, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.descriptions.items()
        ):
            raise ValidationError({"descriptions": 'A map of model slug to text: {"slug": "…"}.'})
