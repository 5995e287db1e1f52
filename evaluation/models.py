"""Evaluation: graders, judge prompts, shadow candidates, sweep runs, samples and proposals.

Sweeps measure whether a task class can move to a cheaper tier (or needs a stronger one);
their evidence becomes a :class:`Proposal` that a Reviewer approves before a new routing-table
version goes live.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from controlplane.models import ModelEndpoint, RoutingTableVersion, TaskClass


class GraderKind(models.TextChoices):
    EXACT = "exact", "exact match"
    NORMALISED = "normalised", "normalised match"
    NUMERIC = "numeric", "numeric final answer"
    JSON_SCHEMA = "json_schema", "JSON Schema validity"
    REGEX = "regex", "regular expression"
    SIMILARITY = "similarity", "similarity to the reference"
    LLM_JUDGE = "llm_judge", "LLM as judge"


class JudgePrompt(models.Model):
    """A stored, versioned judge prompt: a new wording is a new version, never an edit."""

    slug = models.SlugField(max_length=64)
    version = models.PositiveIntegerField(default=1)
    template = models.TextField(
        help_text="Placeholders: {prompt}, {answer}, {reference}. The judge must end with "
        "'VERDICT: PASS' or 'VERDICT: FAIL' (or a line 'Score: 0..1')."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["slug", "version"], name="judge_prompt_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.slug} v{self.version}"


class GraderConfig(models.Model):
    """How the answers of one task class are graded."""

    task_class = models.OneToOneField(TaskClass, on_delete=models.CASCADE, related_name="grader")
    kind = models.CharField(max_length=16, choices=GraderKind.choices)
    params = models.JSONField(
        default=dict,
        blank=True,
        help_text="Kind-specific: pattern (regex), threshold (similarity, judge), "
        "tolerance (numeric), schema (json_schema; defaults to the task class's output schema)",
    )
    judge_model = models.ForeignKey(
        ModelEndpoint, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    judge_prompt = models.ForeignKey(
        JudgePrompt, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["task_class__slug"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(kind="llm_judge")
                | (Q(judge_model__isnull=False) & Q(judge_prompt__isnull=False)),
                name="judge_grader_has_model_and_prompt",
            )
        ]

    def __str__(self) -> str:
        return f"{self.task_class_id}: {self.kind}"

    def clean(self) -> None:
        from controlplane.models import DataPolicy, Locality
        from evaluation.graders import GraderSpec, grader_build

        if self.kind == GraderKind.LLM_JUDGE and (
            self.judge_model_id is None or self.judge_prompt_id is None
        ):
            raise ValidationError({"judge_model": "An LLM judge needs a judge model and prompt."})
        if (
            self.judge_model is not None
            and self.task_class.data_policy == DataPolicy.LOCAL_ONLY
            and self.judge_model.locality == Locality.CLOUD
        ):
            raise ValidationError({"judge_model": "A local-only class needs a local judge."})
        if self.kind != GraderKind.LLM_JUDGE:
            try:
                grader_build(
                    GraderSpec(
                        kind=self.kind,
                        params=self.params or {},
                        output_schema=self.task_class.output_schema,
                    )
                )
            except (ValueError, TypeError) as exc:
                raise ValidationError({"params": str(exc)}) from exc


class PromptTemplate(models.Model):
    """A versioned prompt template a shadow sweep can try: ``{input}`` is the request text."""

    slug = models.SlugField(max_length=64)
    version = models.CharField(max_length=32)
    system_prompt = models.TextField(blank=True)
    user_template = models.TextField(default="{input}")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["slug", "version"], name="prompt_template_unique")
        ]

    def __str__(self) -> str:
        return f"{self.slug}@{self.version}"


class ShadowConfig(models.Model):
    """A candidate (model and/or prompt template) run in the shadow of a class's live traffic."""

    task_class = models.ForeignKey(TaskClass, on_delete=models.CASCADE, related_name="shadows")
    candidate_model = models.ForeignKey(
        ModelEndpoint, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    candidate_template = models.ForeignKey(
        PromptTemplate, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    sample_rate = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        default=Decimal("0.05"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("1"))],
    )
    max_samples = models.PositiveIntegerField(default=200)
    window_hours = models.PositiveIntegerField(default=24)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["task_class__slug", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(candidate_model__isnull=False) | Q(candidate_template__isnull=False),
                name="shadow_has_candidate",
            ),
            models.CheckConstraint(
                condition=Q(sample_rate__gte=0) & Q(sample_rate__lte=1), name="shadow_rate_valid"
            ),
        ]

    def __str__(self) -> str:
        candidate = self.candidate_model_id or "primary"
        if self.candidate_template_id:
            candidate = f"{candidate} + {self.candidate_template}"
        return f"{self.task_class_id} shadow {candidate}"


class SweepKind(models.TextChoices):
    TIER_DOWNGRADE = "tier_downgrade", "tier downgrade"
    SHADOW = "shadow", "shadow traffic"
    ESCALATION_MONITOR = "escalation_monitor", "escalation-rate monitor"
    CONDENSE = "condense", "condensed vs full context"


class SweepStatus(models.TextChoices):
    PENDING = "pending", "pending"
    RUNNING = "running", "running"
    COMPLETED = "completed", "completed"
    FAILED = "failed", "failed"


class SweepRun(models.Model):
    """One execution of a sweep. ``key`` makes a scheduled slot (or a request) run once."""

    key = models.CharField(max_length=160, unique=True)
    kind = models.CharField(max_length=20, choices=SweepKind.choices)
    task_class = models.ForeignKey(
        TaskClass, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    shadow_config = models.ForeignKey(
        ShadowConfig, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=10, choices=SweepStatus.choices, default=SweepStatus.PENDING
    )
    # Claiming: a worker owns the run while its token is set and its heartbeat is fresh.
    claim_token = models.UUIDField(null=True, blank=True)
    claims = models.PositiveIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    samples_planned = models.PositiveIntegerField(default=0)
    samples_done = models.PositiveIntegerField(default=0)
    samples_failed = models.PositiveIntegerField(default=0)
    samples_skipped = models.PositiveIntegerField(
        default=0, help_text="Excluded by data policy (personal data never goes to the cloud)"
    )
    errors = models.JSONField(default=list, blank=True)
    error_message = models.TextField(blank=True)
    summary = models.JSONField(default=dict, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["pending", "running", "completed", "failed"]),
                name="sweep_status_valid",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} ({self.status})"

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class SweepSample(models.Model):
    """One replayed request: the candidate's answer beside the current primary's.

    Prompts and outputs are personal-data bearing inputs: they are kept only until
    ``expires_at`` (the decision's prompt expiry) and blanked afterwards.
    """

    run = models.ForeignKey(SweepRun, on_delete=models.CASCADE, related_name="samples")
    task_class = models.CharField(max_length=64)
    decision_id = models.UUIDField()
    decision_created_at = models.DateTimeField()
    prompt = models.TextField(null=True, blank=True)  # noqa: DJ001 (NULL = purged)
    reference = models.TextField(null=True, blank=True)  # noqa: DJ001 (NULL = purged)
    reference_source = models.CharField(max_length=12, blank=True)  # reference | primary | none
    expires_at = models.DateTimeField(null=True, blank=True)
    candidate_model = models.CharField(max_length=64)
    candidate_status = models.CharField(max_length=16)
    candidate_success = models.BooleanField(null=True)
    candidate_score = models.FloatField(null=True)
    candidate_output = models.TextField(null=True, blank=True)  # noqa: DJ001 (NULL = purged)
    candidate_latency_ms = models.FloatField(null=True)
    candidate_input_tokens = models.IntegerField(default=0)
    candidate_output_tokens = models.IntegerField(default=0)
    primary_model = models.CharField(max_length=64, blank=True)
    primary_status = models.CharField(max_length=16, blank=True)
    primary_success = models.BooleanField(null=True)
    primary_output = models.TextField(null=True, blank=True)  # noqa: DJ001 (NULL = purged)
    primary_latency_ms = models.FloatField(null=True)
    primary_input_tokens = models.IntegerField(default=0)
    primary_output_tokens = models.IntegerField(default=0)
    # A condensing sweep (kind ``condense``): the candidate is the model with its context
    # condensed, the primary the same model with the full context; what the local
    # condensing call did (model, estimated context tokens before/after, its tokens, error).
    condensed = models.JSONField(default=dict, blank=True)
    detail = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "task_class", "decision_id", "candidate_model"],
                name="one_sample_per_request_and_candidate",
            )
        ]
        indexes = [models.Index(fields=["expires_at"])]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.decision_id} {self.candidate_model} {self.candidate_status}"


class ProposalChange(models.TextChoices):
    DOWNGRADE = "downgrade", "move down a tier"
    UPGRADE = "upgrade", "move up a tier"
    SWITCH = "switch", "switch primary model"
    LEARNED = "learned", "route by a learned router"


class ProposalStatus(models.TextChoices):
    PROPOSED = "proposed", "proposed"
    APPROVED = "approved", "approved"
    REJECTED = "rejected", "rejected"
    APPLIED = "applied", "applied"
    ROLLED_BACK = "rolled_back", "rolled back"
    SUPERSEDED = "superseded", "superseded"


OPEN_PROPOSAL_STATUSES = (ProposalStatus.PROPOSED, ProposalStatus.APPROVED)


class Proposal(models.Model):
    """A routing-table change with its evidence, applied only after a Reviewer approves it."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    change = models.CharField(max_length=10, choices=ProposalChange.choices)
    status = models.CharField(
        max_length=12, choices=ProposalStatus.choices, default=ProposalStatus.PROPOSED
    )
    task_class = models.ForeignKey(TaskClass, on_delete=models.PROTECT, related_name="proposals")
    from_model = models.ForeignKey(ModelEndpoint, on_delete=models.PROTECT, related_name="+")
    to_model = models.ForeignKey(ModelEndpoint, on_delete=models.PROTECT, related_name="+")
    new_fallbacks = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    based_on_version = models.PositiveIntegerField(
        help_text="Number of the routing-table version active when the proposal was made"
    )
    sweep_run = models.ForeignKey(
        SweepRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="proposals"
    )
    title = models.CharField(max_length=200)
    evidence = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    review_comment = models.TextField(blank=True)
    applied_version = models.ForeignKey(
        RoutingTableVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    applied_at = models.DateTimeField(null=True, blank=True)
    applied_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    rolled_back_at = models.DateTimeField(null=True, blank=True)
    rolled_back_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            # A retried sweep never proposes twice for the same class.
            models.UniqueConstraint(
                fields=["sweep_run", "task_class"],
                condition=Q(sweep_run__isnull=False),
                name="one_proposal_per_run_and_class",
            ),
            # Reviewers decide one change per task class at a time.
            models.UniqueConstraint(
                fields=["task_class"],
                condition=Q(status__in=["proposed", "approved"]),
                name="one_open_proposal_per_class",
            ),
            models.CheckConstraint(
                condition=Q(
                    status__in=[
                        "proposed",
                        "approved",
                        "rejected",
                        "applied",
                        "rolled_back",
                        "superseded",
                    ]
                ),
                name="proposal_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_PROPOSAL_STATUSES

    @property
    def is_manual(self) -> bool:
        return self.sweep_run_id is None and self.created_by_id is not None


class GradedCount(models.Model):
    """Graded trials of one model on one task class over the recent window: what each
    decision's ``confidence`` is estimated from (``routing.confidence``). Recomputed whole
    by ``evaluation.services.calibration.graded_counts_refresh`` (Celery beat), never
    incremented; the decision API reads it with the snapshot, off the request path."""

    task_class = models.CharField(max_length=64)
    model = models.CharField(max_length=64)
    successes = models.PositiveIntegerField(default=0)
    trials = models.PositiveIntegerField(default=0)
    live_trials = models.PositiveIntegerField(default=0, help_text="Graded live outcomes")
    sweep_trials = models.PositiveIntegerField(default=0, help_text="Graded sweep samples")
    window_start = models.DateTimeField()
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["task_class", "model"]
        constraints = [
            models.UniqueConstraint(
                fields=["task_class", "model"], name="one_graded_count_per_pair"
            ),
            models.CheckConstraint(
                condition=Q(successes__lte=models.F("trials")), name="graded_successes_le_trials"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_class} {self.model}: {self.successes}/{self.trials}"


class LearnedRouterStatus(models.TextChoices):
    CANDIDATE = "candidate", "candidate"  # trained, not serving
    ACTIVE = "active", "active"  # serving the class (when its route's strategy is learned)
    RETIRED = "retired", "retired"


class LearnedRouterRule(models.TextChoices):
    """How the threshold picks a model (``routing.learned.RULES``, ``learned_choice``)."""

    SUCCESS = "success", "predicted success at least the threshold"
    GAIN = "gain", "predicted loss against the best at most the threshold"


class LearnedRouter(models.Model):
    """One trained version of a task class's learned router, as inspectable data: per model
    the logistic-regression coefficients (JSON floats, never a pickle), the feature-hashing
    settings, the class threshold, the training window and sample sizes, and the held-out
    metrics. ``routing.learned`` turns it into the engine's router; a version starts as a
    candidate and serves only after a Reviewer approves its proposal (``Proposal`` with
    change ``learned``)."""

    task_class = models.ForeignKey(TaskClass, on_delete=models.CASCADE, related_name="+")
    version = models.PositiveIntegerField()
    status = models.CharField(
        max_length=10, choices=LearnedRouterStatus.choices, default=LearnedRouterStatus.CANDIDATE
    )
    hashing = models.JSONField(help_text="routing.learned.HashingSpec.as_dict()")
    # {model slug: {"intercept": float, "weights": [float, …], "tier": int}}
    coefficients = models.JSONField()
    threshold = models.FloatField(
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="rule success: route to the cheapest model whose predicted success is at "
        "least this; rule gain: the cheapest predicted to lose at most this against the best",
    )
    rule = models.CharField(
        max_length=10, choices=LearnedRouterRule.choices, default=LearnedRouterRule.SUCCESS
    )
    l2 = models.FloatField(help_text="L2 penalty of the fit")
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    # {model slug: {"train": n, "heldout": n, "successes": n}}
    samples = models.JSONField(default=dict)
    # {model slug: {"brier", "brier_base", "log_loss", "auc", "base_rate", "ece"}, plus
    #  "routing": the share of held-out requests each model would get at the threshold}
    metrics = models.JSONField(default=dict)
    based_on = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The version whose coefficients this one reuses (a threshold change)",
    )  # fmt: skip
    created_at = models.DateTimeField(default=timezone.now)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["task_class__slug", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["task_class", "version"], name="one_learned_router_version"
            ),
            models.UniqueConstraint(
                fields=["task_class"],
                condition=Q(status="active"),
                name="one_active_learned_router_per_class",
            ),
            models.CheckConstraint(
                condition=Q(threshold__gte=0) & Q(threshold__lte=1),
                name="learned_router_threshold_valid",
            ),
            models.CheckConstraint(
                condition=Q(rule__in=["success", "gain"]), name="learned_router_rule_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_class_id} learned v{self.version} ({self.status})"


class ThresholdTargetKind(models.TextChoices):
    STRONG_SHARE = "strong_share", "share of traffic on the strongest model"
    QUALITY = "quality", "expected success at least"


class LearnedThresholdTarget(models.Model):
    """What a class's learned-router threshold is calibrated to, on the deployment's own
    recent graded traffic (``evaluation.services.thresholds``, Celery beat). A threshold
    that moved by at least ``min_change`` becomes a proposal with its evidence."""

    task_class = models.OneToOneField(
        TaskClass, on_delete=models.CASCADE, related_name="threshold_target"
    )
    kind = models.CharField(max_length=16, choices=ThresholdTargetKind.choices)
    target = models.FloatField(
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="A share (strong_share) or a success probability (quality), 0–1",
    )
    window_days = models.PositiveIntegerField(default=7)
    min_requests = models.PositiveIntegerField(
        default=200, help_text="Recent graded requests needed before calibrating"
    )
    min_change = models.FloatField(
        default=0.02, help_text="Smaller threshold moves are not proposed"
    )
    enabled = models.BooleanField(default=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_result = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["task_class__slug"]
        constraints = [
            models.CheckConstraint(
                condition=Q(target__gte=0) & Q(target__lte=1), name="threshold_target_valid"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["strong_share", "quality"]),
                name="threshold_target_kind_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_class_id}: {self.kind} {self.target:g}"


# --- the reviewers' desk: human handoffs, output checks, webhooks ---------------------------


class HandoffStatus(models.TextChoices):
    PENDING = "pending", "pending"
    APPROVED = "approved", "approved"
    EDITED = "edited", "edited and approved"
    REJECTED = "rejected", "rejected"


class HandoffSource(models.TextChoices):
    API = "api", "submitted by the service"
    OUTPUT_CHECK = "output_check", "failed output check"


class Handoff(models.Model):
    """A model's draft held for a person: approved (maybe edited) or rejected with a reason.

    One handoff per decision. The decision table is partitioned, so the decision is named by
    id and creation time (its partition), not by a foreign key; the application, team and
    task class are copied from it so the queue filters without touching the decisions.
    """

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    decision_id = models.UUIDField()
    decision_created_at = models.DateTimeField()
    application_id = models.BigIntegerField()
    application = models.CharField(max_length=64)
    team = models.CharField(max_length=64, blank=True)
    task_class = models.CharField(max_length=64)
    source = models.CharField(max_length=16, choices=HandoffSource.choices)
    idempotency_key = models.CharField(max_length=128, blank=True)
    body_sha256 = models.CharField(max_length=64, blank=True)
    draft = models.TextField()
    context = models.JSONField(default=dict, blank=True)
    sla_minutes = models.PositiveIntegerField()
    due_at = models.DateTimeField()
    status = models.CharField(
        max_length=10, choices=HandoffStatus.choices, default=HandoffStatus.PENDING
    )
    # Claim lock: a reviewer works the item while claimed_by is set and the claim has not
    # expired; an abandoned claim simply runs out (no sweeper needed).
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    final_text = models.TextField(blank=True)
    diff = models.TextField(blank=True, help_text="Unified diff from the draft to the final text")
    reject_reason = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["decision_id"], name="one_handoff_per_decision"),
            models.UniqueConstraint(
                fields=["application_id", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="one_handoff_per_idempotency_key",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "approved", "edited", "rejected"]),
                name="handoff_status_valid",
            ),
            models.CheckConstraint(
                condition=~Q(status="rejected") | ~Q(reject_reason=""),
                name="handoff_rejection_has_reason",
            ),
        ]
        indexes = [
            models.Index(
                fields=["created_at"], condition=Q(status="pending"), name="handoff_pending_age"
            ),
        ]

    def __str__(self) -> str:
        return f"handoff {self.public_id} ({self.status})"

    @property
    def is_pending(self) -> bool:
        return self.status == HandoffStatus.PENDING


class OutputCheckAction(models.TextChoices):
    NONE = "none", "only record the result"
    ESCALATE = "escalate", "escalate to the next model"
    HANDOFF = "handoff", "hand off to a reviewer"


class OutputCheckPolicy(models.Model):
    """What a task class's outputs are checked for, and what a failure answers.

    The JSON Schema is the task class's own ``output_schema``; everything else is here.
    """

    task_class = models.OneToOneField(
        TaskClass, on_delete=models.CASCADE, related_name="output_check_policy"
    )
    check_personal_data = models.BooleanField(
        default=True, help_text="Personal data in the output that was not in the input fails"
    )
    check_schema = models.BooleanField(
        default=True, help_text="Validate against the task class's output schema, if it has one"
    )
    forbidden_terms = ArrayField(
        models.CharField(max_length=200), default=list, blank=True,
        help_text="Case-insensitive, on normalised text (look-alikes and invisible "
        "characters do not hide a term)",
    )  # fmt: skip
    regex_rules = models.JSONField(
        default=list,
        blank=True,
        help_text='[{"name": "no-refund-promise", "pattern": "…", "must_match": false}]; '
        "matched case-insensitively on normalised text (NFKC, look-alikes and dashes mapped, "
        "invisible characters removed, whitespace collapsed)",
    )
    max_chars = models.PositiveIntegerField(null=True, blank=True)
    min_chars = models.PositiveIntegerField(null=True, blank=True)
    on_failure = models.CharField(
        max_length=10, choices=OutputCheckAction.choices, default=OutputCheckAction.NONE
    )
    handoff_sla_minutes = models.PositiveIntegerField(default=60)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["task_class__slug"]
        verbose_name_plural = "output check policies"

    def __str__(self) -> str:
        return f"{self.task_class_id}: {self.on_failure}"

    def clean(self) -> None:
        from routing.output_checks import PolicyError, policy_build

        try:
            policy_build(
                forbidden_terms=self.forbidden_terms or [],
                regex_rules=self.regex_rules or [],
                max_chars=self.max_chars,
                min_chars=self.min_chars,
                output_schema=None,
            )
        except PolicyError as exc:
            raise ValidationError({exc.field: str(exc)}) from exc


class OutputCheck(models.Model):
    """One check of one output: the findings, and what the failure answered."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    decision_id = models.UUIDField(db_index=True)
    decision_created_at = models.DateTimeField()
    application_id = models.BigIntegerField()
    task_class = models.CharField(max_length=64)
    team = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=64, blank=True)
    passed = models.BooleanField()
    # [{rule, kind, message}] — never the personal data itself.
    findings = models.JSONField(default=list, blank=True)
    rules = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    action = models.CharField(max_length=10, choices=OutputCheckAction.choices)
    next_model = models.CharField(max_length=64, blank=True)
    handoff = models.ForeignKey(
        Handoff, null=True, blank=True, on_delete=models.SET_NULL, related_name="checks"
    )
    output_chars = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"check {self.decision_id} {'pass' if self.passed else 'fail'}"


class WebhookEndpoint(models.Model):
    """Where an application learns its handoffs' results; signed with ``secret``."""

    application = models.OneToOneField(
        "controlplane.Application", on_delete=models.CASCADE, related_name="webhook"
    )
    url = models.URLField(max_length=300)
    secret = models.CharField(
        max_length=128, help_text="Shared HMAC-SHA256 secret (the receiver verifies with it)"
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["application__slug"]

    def __str__(self) -> str:
        return f"{self.application_id} → {self.url}"

    def clean(self) -> None:
        from evaluation.services.handoffs import webhook_url_validate

        if self.url:
            webhook_url_validate(self.url)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "pending"
    DELIVERED = "delivered", "delivered"
    FAILED = "failed", "failed"


class WebhookDelivery(models.Model):
    """One event for one endpoint: its body is signed anew on each attempt."""

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    handoff = models.ForeignKey(Handoff, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32)
    body = models.TextField()
    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    log = models.JSONField(default=list, blank=True, help_text="[{at, status_code, error}]")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event} → {self.endpoint_id} ({self.status})"
