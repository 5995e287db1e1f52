"""LLM-as-router: a small local model picks among a route's eligible candidates (plain
Python, no Django, no I/O — the call itself is made by ``routing.services``).

For classes where a wrong route is expensive and a few hundred milliseconds are acceptable.
After the engine has decided (policy gate, budgets, eligibility), the router model is asked,
with :func:`router_messages`, to pick one of the eligible models (the decision's model and
its fallbacks) from their descriptions and the request. :func:`router_answer_parse` reads
the answer; :func:`decision_llm_routed` turns it into the decision:

- a valid pick: that model is selected (strategy ``llm``), the other eligible models stay as
  fallbacks in their order, the confidence is the chosen model's calibrated estimate;
- no answer in time, an error, or an answer naming no single candidate: the rule's decision
  stands, its reason says what happened.

Either way the call (router model, status, latency, answer, pick) is on the decision path.
The router model must be local (the request text is sent to it; ``routing.models``
enforces it) and the step is skipped when the decision is local-only for other reasons.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from routing.confidence import PRIOR_BY_TIER
from routing.engine import Candidate, Decision, FallbackOption, ModelInfo, Snapshot

MAX_REQUEST_CHARS: Final = 4000
INSTRUCTION: Final = "Route this request to one model."
SYSTEM: Final = (
    "You are a request router. Pick the candidate model that will answer the request "
    "correctly at the lowest cost. Reply with the candidate's name only."
)


@dataclass(frozen=True, slots=True)
class LlmRouterInfo:
    """A class's LLM router as the decision pipeline uses it (from ``routing.LlmRouter``)."""

    task_class: str
    router_model: str  # slug of a local model in the registry
    timeout_ms: int
    descriptions: Mapping[str, str]  # model slug -> what it is good at


def router_messages(candidates: Sequence[tuple[str, str]], prompt: str) -> list[dict[str, str]]:
    """The chat messages asking the router model to pick one of ``candidates`` ((slug,
    description), cheapest first) for ``prompt``."""
    lines = [INSTRUCTION, "Candidates (cheapest first):"]
    lines += [f"- {slug}: {description or 'no description'}" for slug, description in candidates]
    lines += ["Request:", "<<<", prompt[:MAX_REQUEST_CHARS], ">>>"]
    lines.append("Answer with the name of one candidate only.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def router_answer_parse(answer: str, candidates: Sequence[str]) -> str | None:
    """The candidate the answer names: a line that is exactly a candidate's name (after
    trimming quotes, backticks and a final period), else the only candidate named in it;
    None when it names none or several."""
    for line in answer.strip().splitlines():
        name = line.strip().strip("`'\"*").rstrip(".").strip()
        if name in candidates:
            return name
    named = {c for c in candidates if re.search(rf"(?<![\w.-]){re.escape(c)}(?![\w-])", answer)}
    # A name that is part of another named one ("gpt-4o" in "gpt-4o-mini") does not count.
    named = {c for c in named if not any(c != o and c in o for o in named)}
    return next(iter(named)) if len(named) == 1 else None


def _cap(snapshot: Snapshot, task_class: str, model: ModelInfo) -> int:
    task = snapshot.task_classes.get(task_class)
    default = task.default_output_cap if task is not None else model.max_output_tokens
    return min(default, model.max_output_tokens)


def decision_llm_routed(
    decision: Decision,
    snapshot: Snapshot,
    *,
    task_class: str,
    router_model: str,
    status: str,
    latency_ms: float,
    answer: str,
    choice: str | None,
) -> Decision:
    """The decision after the router's answer (see the module docstring), the call in its
    ``router_call`` (it goes on the decision path)."""
    call: dict[str, Any] = {
        "router_model": router_model,
        "status": status,
        "latency_ms": round(latency_ms, 1),
        "answer": answer[:200],
        "choice": choice,
        "candidates": [decision.model.slug, *[f.model.slug for f in decision.fallbacks]],
    }
    eligible = [decision.model, *[f.model for f in decision.fallbacks]]
    chosen = next((m for m in eligible if m.slug == choice), None)
    if chosen is None:
        why = (
            f"answered {answer[:60]!r}, which names no single candidate"
            if status == "ok"
            else f"{status} after {latency_ms:.0f} ms"
        )
        call["applied"] = False
        reason = f"LLM router {router_model} {why}: the rule stands. {decision.reason}"
        return replace(decision, reason=reason, router_call=call)
    call["applied"] = True
    triggers = decision.fallbacks[0].triggers if decision.fallbacks else ()
    fallbacks = tuple(FallbackOption(m, triggers) for m in eligible if m is not chosen)
    path = []
    for c in decision.candidates:
        if c.model == chosen.slug:
            path.append(Candidate(c.model, c.tier, True, f"selected (LLM router {router_model})"))
        elif c.accepted:
            path.append(Candidate(c.model, c.tier, True, "eligible fallback"))
        else:
            path.append(c)
    confidence = snapshot.quality.get((chosen.slug, task_class))
    if confidence is None:
        confidence = PRIOR_BY_TIER.get(chosen.tier, 0.7)
    return replace(
        decision,
        model=chosen,
        strategy="llm",
        reason=(
            f"LLM router {router_model} picked {chosen.slug} among"
            f" {', '.join(m.slug for m in eligible)} in {latency_ms:.0f} ms."
        ),
        confidence=min(1.0, max(0.0, confidence)),
        fallbacks=fallbacks,
        max_output_tokens=_cap(snapshot, task_class, chosen),
        candidates=tuple(path),
        router_call=call,
    )
