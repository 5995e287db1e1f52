"""Replaying recorded requests on a candidate and the current primary, concurrently.

Plain Python over the model client and graders (no database): the sweep services load the
requests, call :func:`replay_batch`, and store what comes back. Worker threads share the
process's pooled HTTP client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from evaluation.client import ChatResult, ModelTarget, chat_complete
from evaluation.graders import Grade, Grader


@dataclass(frozen=True, slots=True)
class ReplayItem:
    decision_id: UUID
    prompt: str
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class PromptShape:
    """How a request becomes messages: an optional system prompt and a user template."""

    system_prompt: str = ""
    user_template: str = "{input}"
    max_tokens: int | None = None
    response_format: Mapping[str, Any] | None = None

    def messages(self, prompt: str) -> list[dict[str, str]]:
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": self.user_template.replace("{input}", prompt)})
        return messages


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    item: ReplayItem
    candidate: ChatResult
    candidate_grade: Grade
    primary: ChatResult | None
    primary_grade: Grade | None
    reference: str | None
    reference_source: str  # reference | primary | none


def _graded(result: ChatResult, grader: Grader, prompt: str, reference: str | None) -> Grade:
    if result.status != "ok":
        return Grade(False, 0.0, f"{result.status}: {result.error}"[:300])
    return grader.grade(prompt=prompt, answer=result.content, reference=reference)


def replay_one(
    item: ReplayItem,
    *,
    candidate: ModelTarget,
    candidate_shape: PromptShape,
    primary: ModelTarget | None,
    primary_shape: PromptShape,
    grader: Grader,
) -> ReplayOutcome:
    """Run one request on the candidate (and the primary) and grade both.

    The candidate is graded against the request's recorded reference when it has one,
    otherwise against the primary's answer; the primary is graded only against a recorded
    reference (compared with itself it would always pass).
    """
    cand = chat_complete(
        candidate,
        candidate_shape.messages(item.prompt),
        max_tokens=candidate_shape.max_tokens,
        response_format=candidate_shape.response_format,
    )
    prim = None
    if primary is not None:
        prim = chat_complete(
            primary,
            primary_shape.messages(item.prompt),
            max_tokens=primary_shape.max_tokens,
            response_format=primary_shape.response_format,
        )
    reference, source = item.reference, "reference"
    if reference is None:
        if prim is not None and prim.status == "ok" and grader.needs_reference:
            reference, source = prim.content, "primary"
        else:
            source = "none"
    cand_grade = _graded(cand, grader, item.prompt, reference)
    prim_grade = None
    if prim is not None and source != "primary":
        prim_grade = _graded(prim, grader, item.prompt, reference)
    return ReplayOutcome(item, cand, cand_grade, prim, prim_grade, reference, source)


def replay_batch(
    items: Iterable[ReplayItem],
    *,
    candidate: ModelTarget,
    grader: Grader,
    primary: ModelTarget | None = None,
    candidate_shape: PromptShape | None = None,
    primary_shape: PromptShape | None = None,
    concurrency: int = 16,
    pool: ThreadPoolExecutor | None = None,
) -> list[ReplayOutcome]:
    """Replay ``items`` with up to ``concurrency`` calls in flight; results keep input order."""
    cand_shape = candidate_shape or PromptShape()
    prim_shape = primary_shape or cand_shape
    batch: Sequence[ReplayItem] = list(items)

    def run(item: ReplayItem) -> ReplayOutcome:
        return replay_one(
            item,
            candidate=candidate,
            candidate_shape=cand_shape,
            primary=primary,
            primary_shape=prim_shape,
            grader=grader,
        )

    if pool is not None:
        return list(pool.map(run, batch))
    if concurrency <= 1 or len(batch) <= 1:
        return [run(item) for item in batch]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(batch))) as own:
        return list(own.map(run, batch))
