"""The cascade call: judge a cheap attempt (routing.cascade) for a stored decision and
record the verdict on the decision's path (``path["cascade"]``, at most
``MAX_CASCADE_CHECKS`` entries; the answer text itself is never stored)."""

from __future__ import annotations

from typing import Any

import orjson
from django.db import connection
from django.utils import timezone

from controlplane.errors import ApiError
from controlplane.models import TaskClass
from evaluation.graders import GraderSpec, grader_build
from evaluation.selectors import grader_spec_for
from routing.cascade import DEFAULT_THRESHOLD, CascadeAttempt, Expects, cascade_judge
from routing.confidence import PRIOR_BY_TIER
from routing.schemas import CascadeInput
from routing.snapshot import registry_cache
from telemetry.models import DecisionRecord

MAX_CASCADE_CHECKS = 20
_EXPECTS: dict[str, Expects] = {
    "json_schema": "json",
    "numeric": "number",
    "exact": "label",
    "normalised": "label",
}

_APPEND_SQL = """
UPDATE telemetry_decision
SET path = jsonb_set(path, '{cascade}', coalesce(path->'cascade', '[]'::jsonb) || %s::jsonb)
WHERE id = %s AND created_at = %s
  AND jsonb_array_length(coalesce(path->'cascade', '[]'::jsonb)) < %s
"""


def _chain(record: DecisionRecord) -> list[str]:
    fallbacks = record.path.get("fallbacks", []) if isinstance(record.path, dict) else []
    return [record.model, *(f.get("model", "") for f in fallbacks if isinstance(f, dict))]


def cascade_check(*, record: DecisionRecord, attempt: CascadeInput) -> dict[str, Any]:
    """Accept or escalate ``attempt`` on ``record``'s request; recorded on its path."""
    chain = _chain(record)
    model = attempt.model or record.model
    if model not in chain:
        message = f"{model} is not among this decision's models ({', '.join(chain)})"
        raise ApiError(400, "invalid", f"model: {message}", {"model": [message]})
    snapshot = registry_cache.snapshot()
    if model == record.model:
        prior = record.confidence
    else:
        tier = snapshot.models[model].tier if model in snapshot.models else 2
        prior = snapshot.quality.get((model, record.task_class), PRIOR_BY_TIER.get(tier, 0.7))
    route = snapshot.routes.get(record.task_class)
    threshold = DEFAULT_THRESHOLD
    if route is not None and route.escalation.confidence_below is not None:
        threshold = route.escalation.confidence_below
    task_class = TaskClass.objects.filter(slug=record.task_class).first()
    expects: Expects = ""
    schema_valid = attempt.schema_valid
    if task_class is not None:
        spec = grader_spec_for(task_class)
        expects = _EXPECTS.get(spec.kind, "")
        if schema_valid is None and task_class.output_schema:
            grader = grader_build(
                GraderSpec(kind="json_schema", output_schema=task_class.output_schema)
            )
            schema_valid = grader.grade(prompt="", answer=attempt.output, reference=None).passed
            expects = "json"
    verdict = cascade_judge(
        CascadeAttempt(
            output=attempt.output,
            self_confidence=attempt.self_confidence,
            logprobs=attempt.logprobs,
            schema_valid=schema_valid,
            finish_reason=attempt.finish_reason,
        ),
        prior=prior,
        expects=expects,
        threshold=threshold,
        prompt=record.prompt or "",  # the stored request, while it is retained
    )
    position = chain.index(model)
    escalate_to = (
        chain[position + 1] if verdict.action == "escalate" and position + 1 < len(chain) else None
    )
    entry = {
        "at": timezone.now().isoformat(),
        "model": model,
        "action": verdict.action,
        "p_success": verdict.p_success,
        "threshold": verdict.threshold,
        "escalate_to": escalate_to,
        "reasons": list(verdict.reasons),
        "features": verdict.features,
    }
    with connection.cursor() as cursor:
        cursor.execute(
            _APPEND_SQL,
            [orjson.dumps([entry]).decode(), record.id, record.created_at, MAX_CASCADE_CHECKS],
        )
        if cursor.rowcount != 1:
            raise ApiError(
                409, "conflict", f"At most {MAX_CASCADE_CHECKS} cascade checks per decision."
            )
    return {"decision_id": str(record.id), **entry}
