"""A caller-pinned model (the OpenAI-compatible gateway's ``model`` = a model slug), checked
against the same policy as the engine's own choice. Plain Python, no Django.

The engine decides for the request's task class first (policy gate, budgets, route); the
pinned model then replaces its choice only if it may serve the request:

* personal data, a local-only task class or an exhausted ``local_only`` budget keep the
  request local (``decision.local_only``): a cloud model is refused (403);
* the model must be active, hold the prompt plus the output cap in its context window, and
  stay within ``max_cost_usd`` (422);
* a ``block`` budget refused the request already in the engine; the pinned model's worst
  case is held against the budgets like any decision's (``routing.services``).

A pinned decision has no fallbacks (the caller asked for that model) and says so in its
reason and policy actions; its strategy stays the engine's for the class.
"""

from __future__ import annotations

from dataclasses import replace

from routing.engine import Candidate, Decision, DecisionRequest, Snapshot, estimated_cost_usd


class PinRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def decision_pinned(
    decision: Decision, slug: str, request: DecisionRequest, snapshot: Snapshot
) -> Decision:
    """``decision`` with ``slug`` as its model, or PinRefused saying why it may not be."""
    model = snapshot.models.get(slug)
    if model is None:
        raise PinRefused(404, "model_not_found", f"The model {slug!r} is not in the registry.")
    if decision.local_only and model.locality != "local":
        raise PinRefused(
            403,
            "policy_refused",
            f"This request must stay on a local model ({'; '.join(decision.policy_actions)}); "
            f"{slug!r} is a cloud model.",
        )
    if model.status != "active":
        raise PinRefused(422, "model_unavailable", f"The model {slug!r} is {model.status}.")
    task = snapshot.task_classes.get(request.task_class)
    default_cap = task.default_output_cap if task is not None else model.max_output_tokens
    cap = min(default_cap, model.max_output_tokens)
    prompt = max(request.input_tokens, request.context_tokens)
    if prompt + cap > model.context_window:
        raise PinRefused(
            422,
            "context_too_long",
            f"context {prompt + cap} tokens (prompt {prompt} + output {cap}) exceeds "
            f"{slug!r}'s window of {model.context_window}.",
        )
    if request.max_cost_usd is not None:
        cost = estimated_cost_usd(model, request.input_tokens, cap)
        if cost > request.max_cost_usd:
            raise PinRefused(
                422,
                "too_expensive",
                f"estimated cost ${cost:.6f} on {slug!r} exceeds max ${request.max_cost_usd:.6f}.",
            )
    if model.slug == decision.model.slug and not decision.fallbacks:
        return decision
    return replace(
        decision,
        model=model,
        reason=f"Pinned by the caller to {slug} (the route would choose "
        f"{decision.model.slug}: {decision.reason})",
        fallbacks=(),
        max_output_tokens=cap,
        policy_actions=(*decision.policy_actions, f"pinned: {slug} named by the caller"),
        candidates=(Candidate(model.slug, model.tier, True, "selected (pinned)"),),
    )
