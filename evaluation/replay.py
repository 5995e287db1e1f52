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
from routing.condense import (
    condense_output_cap,
    condensed_messages,
    condensing_body,
    context_split,
    estimate_tokens,
    prompt_messages,
)


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
    # The condensing comparison (replay_condensed): what the local condensing call did.
    condensed: Mapping[str, Any] | None = None


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
    return _compared(
        item,
        candidate=candidate,
        candidate_messages=candidate_shape.messages(item.prompt),
        candidate_shape=candidate_shape,
        primary=primary,
        primary_messages=primary_shape.messages(item.prompt),
        primary_shape=primary_shape,
        grader=grader,
    )


def _compared(
    item: ReplayItem,
    *,
    candidate: ModelTarget,
    candidate_messages: Sequence[Mapping[str, Any]],
    candidate_shape: PromptShape,
    primary: ModelTarget | None,
    primary_messages: Sequence[Mapping[str, Any]],
    primary_shape: PromptShape,
    grader: Grader,
    condensed: Mapping[str, Any] | None = None,
) -> ReplayOutcome:
    cand = chat_complete(
        candidate,
        candidate_messages,
        max_tokens=candidate_shape.max_tokens,
        response_format=candidate_shape.response_format,
    )
    prim = None
    if primary is not None:
        prim = chat_complete(
            primary,
            primary_messages,
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
    return ReplayOutcome(item, cand, cand_grade, prim, prim_grade, reference, source, condensed)


def conversation_of(prompt: str, shape: PromptShape) -> list[dict[str, str]]:
    """The messages a recorded prompt was sent as: a conversation the gateway recorded
    (``routing.condense.prompt_messages``) as it was, else the class's prompt shape."""
    messages = prompt_messages(prompt)
    return messages if len(messages) > 1 else shape.messages(prompt)


def condensable_tokens(prompt: str, shape: PromptShape, threshold: int) -> int:
    """The estimated tokens of the prompt's context if the gateway would condense it (above
    ``threshold``, condensable messages), else 0."""
    context, _, transcript = context_split(conversation_of(prompt, shape))
    before = estimate_tokens(transcript)
    return before if context and before > threshold else 0


def replay_condensed(
    item: ReplayItem,
    *,
    model: ModelTarget,
    local: ModelTarget,
    shape: PromptShape,
    grader: Grader,
    threshold: int,
) -> ReplayOutcome:
    """One request on the same (frontier) ``model`` twice — its context condensed by the
    ``local`` model exactly as the gateway does it (``routing.condense``), and in full — both
    graded with the class's grader (the condensed answer against the reference, else the
    full-context answer). A condensing call that fails or gives nothing shorter leaves the
    request whole, as in the gateway (recorded in ``condensed["error"]``)."""
    messages = conversation_of(item.prompt, shape)
    _, last, transcript = context_split(messages)
    before = estimate_tokens(transcript)
    cap = condense_output_cap(local.max_output_tokens, threshold)
    body = condensing_body(local.provider_model, transcript, cap)
    summary = chat_complete(local, body["messages"], max_tokens=cap, temperature=0.0)
    record: dict[str, Any] = {
        "model": local.slug,
        "input_tokens_before": before,
        "condense_input_tokens": summary.input_tokens,
        "condense_output_tokens": summary.output_tokens,
        "condense_latency_ms": round(summary.latency_ms, 2),
    }
    after = estimate_tokens(summary.content)
    condensed = messages
    if summary.status != "ok":
        record["error"] = f"{summary.status}: {summary.error}"[:200]
    elif not summary.content.strip() or after >= before:
        record["error"] = "no shorter context"
    else:
        record["input_tokens_after"] = after
        condensed = condensed_messages(summary.content, last)
    return _compared(
        item,
        candidate=model,
        candidate_messages=condensed,
        candidate_shape=shape,
        primary=model,
        primary_messages=messages,
        primary_shape=shape,
        grader=grader,
        condensed=record,
    )


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
