"""Decision records and outcomes: two time-partitioned tables (daily partitions).

Both tables are created by hand-written migrations (PostgreSQL declarative partitioning);
Django sees ``id`` / ``decision_id`` as the primary key, while in the database the key also
holds the partition column, as PostgreSQL requires. Registry rows are referenced by id and
slug without foreign keys: the hot path inserts without lookups, and history stays readable
after a model or application is renamed or removed.
"""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models

from routing.enums import AttemptStatus, choices


class DecisionRecord(models.Model):
    id = models.UUIDField(primary_key=True)  # UUIDv7; created_at is derived from it
    created_at = models.DateTimeField()
    request_id = models.CharField(max_length=128, blank=True)
    application_id = models.BigIntegerField()
    application = models.CharField(max_length=64)
    team = models.CharField(max_length=64, blank=True)
    task_class = models.CharField(max_length=64)
    model = models.CharField(max_length=64)
    provider_model = models.CharField(max_length=128)
    tier = models.SmallIntegerField()
    locality = models.CharField(max_length=8)
    strategy = models.CharField(max_length=12)
    confidence = models.FloatField()
    reason = models.TextField()
    routing_table_version = models.IntegerField()
    handoff_required = models.BooleanField(default=False)
    data_classification = models.CharField(max_length=16, blank=True)
    pii_types = ArrayField(models.CharField(max_length=32), default=list)
    input_tokens = models.IntegerField()
    context_tokens = models.IntegerField()
    max_output_tokens = models.IntegerField()
    latency_budget_ms = models.IntegerField(null=True)
    max_cost_usd = models.FloatField(null=True)
    decision_us = models.IntegerField()
    end_user = models.CharField(max_length=128, blank=True)
    prompt = models.TextField(null=True)  # noqa: DJ001 (NULL = not kept, unlike "")
    # kept only when the task class's retention allows
    prompt_expires_at = models.DateTimeField(null=True)
    prompt_template_id = models.CharField(max_length=128, blank=True)
    prompt_template_version = models.CharField(max_length=64, blank=True)
    retrieval_query = models.TextField(blank=True)
    retrieval_document_ids = ArrayField(models.CharField(max_length=256), default=list)
    metadata = models.JSONField(default=dict)
    # The decision path: candidates and why each was rejected, fallbacks, policy, budgets.
    path = models.JSONField(default=dict)
    # The response body exactly as sent, replayed for a repeated request_id.
    response = models.JSONField(default=dict)
    # What the decision holds against budgets until its outcome: [[lease id, "amount"], ...]
    # (controlplane.BudgetLease; telemetry/budgets.py).
    budget_holds = models.JSONField(default=list)

    class Meta:
        managed = True
        db_table = "telemetry_decision"

    def __str__(self) -> str:
        return f"{self.id} {self.task_class} → {self.model}"


class DecisionIdempotency(models.Model):
    """(application, request_id) → decision: one decision per idempotency key, for
    SWITCHYARD_IDEMPOTENCY_WINDOW_HOURS after it was made (then purged or taken over)."""

    application_id = models.BigIntegerField()
    request_id = models.CharField(max_length=128)
    decision_id = models.UUIDField()
    created_at = models.DateTimeField(db_index=True)
    # sha256 of the canonical request body (keys sorted): a replay must carry the same body.
    # Empty for keys stored before the hash was kept.
    body_sha256 = models.CharField(max_length=64, blank=True, default="", db_default="")

    class Meta:
        db_table = "telemetry_decision_idempotency"
        constraints = [
            models.UniqueConstraint(
                fields=["application_id", "request_id"], name="one_decision_per_request_id"
            )
        ]

    def __str__(self) -> str:
        return f"{self.application_id}:{self.request_id}"


class DecisionOutcome(models.Model):
    """What happened after a decision: attempts, cost, latency, quality."""

    decision_id = models.UUIDField(primary_key=True)
    decision_created_at = models.DateTimeField()
    reported_at = models.DateTimeField()
    application_id = models.BigIntegerField()
    application = models.CharField(max_length=64)
    team = models.CharField(max_length=64, blank=True)
    task_class = models.CharField(max_length=64)
    routed_model = models.CharField(max_length=64)
    routed_tier = models.SmallIntegerField()
    final_model = models.CharField(max_length=64)
    final_tier = models.SmallIntegerField()
    final_status = models.CharField(max_length=16, choices=choices(AttemptStatus))
    # [{model, tier, status, latency_ms, input_tokens, output_tokens, escalation_reason,
    #   cost_usd}], in the order tried.
    attempts = models.JSONField(default=list)
    attempt_count = models.SmallIntegerField()
    escalated = models.BooleanField()
    input_tokens = models.IntegerField()
    output_tokens = models.IntegerField()
    cost_usd = models.DecimalField(max_digits=16, decimal_places=8)
    latency_ms = models.IntegerField(help_text="Sum of attempt latencies")
    quality_score = models.FloatField(null=True)
    user_feedback = models.CharField(max_length=32, blank=True)
    validation = models.JSONField(default=dict)
    retrieval_document_ids = ArrayField(models.CharField(max_length=256), default=list)
    charged_attempts = models.SmallIntegerField(default=0)

    class Meta:
        db_table = "telemetry_outcome"

    def __str__(self) -> str:
        return f"{self.decision_id} {self.final_status}"


# Fixed latency-histogram bucket upper bounds (ms, exclusive): bucket i counts latencies in
# [LATENCY_BOUNDS_MS[i-1], LATENCY_BOUNDS_MS[i]); the last bucket is open-ended. Fixed bounds
# make histograms add up across rollup rows, so percentiles merge over any filter.
LATENCY_BOUNDS_MS: tuple[int, ...] = (
    25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000,
    7500, 10000, 15000, 30000, 60000,
)  # fmt: skip
LATENCY_BUCKET_FIELDS: tuple[str, ...] = tuple(
    f"lat_b{i:02d}" for i in range(len(LATENCY_BOUNDS_MS) + 1)
)


class RollupSums(models.Model):
    """The dimensions and sums every rollup row carries (see ``HourlyRollup``)."""

    team = models.CharField(max_length=64)
    application = models.CharField(max_length=64)
    task_class = models.CharField(max_length=64)
    model = models.CharField(max_length=64)
    tier = models.SmallIntegerField()
    # The model the router chose (differs from ``model`` when the request escalated).
    routed_model = models.CharField(max_length=64, default="")
    decisions = models.IntegerField(default=0)
    outcomes = models.IntegerField(default=0)
    successes = models.IntegerField(default=0)
    escalations = models.IntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=0)
    baseline_cost_usd = models.DecimalField(max_digits=18, decimal_places=8, default=0)
    quality_sum = models.FloatField(default=0)
    quality_count = models.IntegerField(default=0)
    latency_sum_ms = models.BigIntegerField(default=0)
    # What the OpenAI-compatible gateway saved (routing/gateway.py records it on the
    # outcome's validation): answers reused from its cache and what producing them had
    # cost; contexts condensed before a frontier call, the input tokens and net spend saved.
    cache_hits = models.IntegerField(default=0)
    cache_saved_usd = models.DecimalField(max_digits=18, decimal_places=8, default=0)
    condensed = models.IntegerField(default=0)
    condensed_tokens = models.BigIntegerField(default=0)
    condense_saved_usd = models.DecimalField(max_digits=18, decimal_places=8, default=0)

    class Meta:
        abstract = True


class HourlyRollup(RollupSums):
    """Per hour × team × application × task class × model × tier: what the dashboards read.

    ``model``/``tier`` are the model that served the request (the last attempt), or the
    routed model while no outcome has been reported. Cost includes every attempt.
    Rows are (re)computed whole per hour from the raw tables, never incremented, so a
    re-reported outcome or a late commit cannot be counted twice.
    """

    hour = models.DateTimeField()

    class Meta:
        db_table = "telemetry_rollup_hourly"
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "hour",
                    "team",
                    "application",
                    "task_class",
                    "model",
                    "tier",
                    "routed_model",
                ],
                name="one_hourly_rollup_per_dimensions",
            )
        ]
        indexes = [
            models.Index(fields=["task_class", "hour"], name="rollup_class_hour"),
            models.Index(fields=["model", "hour"], name="rollup_model_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.task_class} {self.model}"


class DailyRollup(RollupSums):
    """The hourly rollups of one UTC day summed: what charts with daily buckets read
    (30 and 90 days scan 24 times fewer rows). Recomputed from the hourly rows whenever
    an hour of the day is."""

    day = models.DateTimeField()

    class Meta:
        db_table = "telemetry_rollup_daily"
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "day",
                    "team",
                    "application",
                    "task_class",
                    "model",
                    "tier",
                    "routed_model",
                ],
                name="one_daily_rollup_per_dimensions",
            )
        ]

    def __str__(self) -> str:
        return f"{self.day:%Y-%m-%d} {self.task_class} {self.model}"


for _rollup in (HourlyRollup, DailyRollup):
    for _name in LATENCY_BUCKET_FIELDS:
        _rollup.add_to_class(_name, models.IntegerField(default=0))


class RollupWatermark(models.Model):
    """How far the incremental rollup has read: one row per rollup, claimed with FOR UPDATE."""

    name = models.CharField(max_length=32, unique=True)
    position = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "telemetry_rollup_watermark"

    def __str__(self) -> str:
        return f"{self.name} @ {self.position:%Y-%m-%d %H:%M:%S}"
