"""Output checks: run the task class's policy on an output, store the result with the
decision, and answer what a failure calls for (escalate to the next model, or hand off).

The rules themselves are plain Python in ``routing.output_checks``; the per-class policy is
``OutputCheckPolicy`` (plus the task class's own ``output_schema``).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.utils import timezone

from controlplane.models import TaskClass
from evaluation.models import Handoff, HandoffSource, OutputCheck, OutputCheckAction
from evaluation.models import OutputCheckPolicy as PolicyRow
from evaluation.services.handoffs import HandoffConflict, HandoffSubmission, handoff_submit
from routing.output_checks import CheckPolicy, output_check, policy_build
from telemetry.models import DecisionRecord


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    checks: CheckPolicy
    on_failure: str
    handoff_sla_minutes: int | None


def class_policy(task_class: str) -> ClassPolicy:
    """The task class's check policy (defaults when none is set: personal data and schema
    checked, a failure only recorded)."""
    row = PolicyRow.objects.select_related("task_class").filter(task_class__slug=task_class)
    found = row.first()
    schema = None
    if found is not None:
        schema = found.task_class.output_schema
    else:
        schema = TaskClass.objects.filter(slug=task_class).values_list("output_schema", flat=True)
        schema = next(iter(schema), None)
    if found is None:
        return ClassPolicy(policy_build(output_schema=schema), OutputCheckAction.NONE, None)
    checks = policy_build(
        check_personal_data=found.check_personal_data,
        forbidden_terms=found.forbidden_terms,
        regex_rules=found.regex_rules,
        max_chars=found.max_chars,
        min_chars=found.min_chars,
        output_schema=schema if found.check_schema else None,
    )
    return ClassPolicy(checks, found.on_failure, found.handoff_sla_minutes)


def next_model(record: DecisionRecord, served_by: str) -> str:
    """The model after ``served_by`` in the decision's chain (primary, then fallbacks)."""
    chain = [record.model, *[f.get("model", "") for f in (record.path or {}).get("fallbacks", [])]]
    if served_by in chain:
        rest = chain[chain.index(served_by) + 1 :]
        return rest[0] if rest else ""
    return ""


def _input_text(record: DecisionRecord, given: str | None) -> str | None:
    if given is not None:
        return given
    if record.prompt is not None and (
        record.prompt_expires_at is None or record.prompt_expires_at > timezone.now()
    ):
        return record.prompt
    return None


def output_check_run(
    *, record: DecisionRecord, output: str, input_text: str | None = None, model: str = ""
) -> OutputCheck:
    """Check ``output`` locally, store the result; a failure escalates (naming the next model;
    with none left, it hands off) or hands off, as the task class says."""
    policy = class_policy(record.task_class)
    served_by = model or record.model
    result = output_check(output, policy.checks, input_text=_input_text(record, input_text))
    action = OutputCheckAction.NONE
    following = ""
    handoff: Handoff | None = None
    if not result.passed and policy.on_failure == OutputCheckAction.ESCALATE:
        following = next_model(record, served_by)
        action = OutputCheckAction.ESCALATE if following else OutputCheckAction.HANDOFF
    elif not result.passed and policy.on_failure == OutputCheckAction.HANDOFF:
        action = OutputCheckAction.HANDOFF
    if action == OutputCheckAction.HANDOFF:
        submission = HandoffSubmission(
            draft=output or "(empty output)",
            context={"failed_checks": ", ".join(result.rules), "model": served_by},
            sla_minutes=policy.handoff_sla_minutes,
        )
        try:
            handoff, _ = handoff_submit(
                record=record, submission=submission, source=HandoffSource.OUTPUT_CHECK
            )
        except HandoffConflict:  # the decision already has one: the check points at it
            handoff = Handoff.objects.filter(decision_id=record.id).first()
    return OutputCheck.objects.create(
        decision_id=record.id,
        decision_created_at=record.created_at,
        application_id=record.application_id,
        task_class=record.task_class,
        team=record.team,
        model=served_by,
        passed=result.passed,
        findings=[f.as_dict() for f in result.findings],
        rules=result.rules,
        action=action,
        next_model=following,
        handoff=handoff,
        output_chars=len(output),
    )
