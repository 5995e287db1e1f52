"""Context condensing (token cascading) for the gateway: plain Python, no I/O.

For a task class with ``condense_above_tokens`` > 0, a request the engine sends to a
frontier model (cloud, tier 3) whose *context* — every message before the last one: the
conversation so far, retrieved documents in system or user messages — is estimated above
that many tokens is first given to a local model to condense. The frontier model then gets
one system message with the condensed context plus the last message unchanged.

The gateway (``routing/gateway.py``) makes the local call with its upstream client; a
condensing call that fails leaves the request as it was. What happened is recorded on the
outcome (``validation.condensed``: the local model, input tokens of the context before and
after, what the local call cost and the frontier input spend it saved), for the dashboards.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from routing.engine import ModelInfo
from routing.pricing import DatedPrice, price_cost_usd

__all__ = [
    "FRONTIER_TIER",
    "condense_output_cap",
    "condense_saving_usd",
    "condensed_messages",
    "condenser_for",
    "condenser_pick",
    "condenses",
    "condensing_body",
    "condensing_worst_tokens",
    "context_split",
    "estimate_tokens",
    "prompt_messages",
    "transcript_line",
]

FRONTIER_TIER = 3
_PER_MESSAGE_TOKENS = 4  # what a chat message's framing may add to its text's tokens
_INSTRUCTION = (
    "Condense the conversation and documents below for another assistant who must answer "
    "the user's next message. Keep every fact, number, name, identifier, decision and open "
    "question that could matter; drop repetition, pleasantries and formatting. Answer with "
    "the condensed context only."
)


def condenses(threshold: int, locality: str, tier: int) -> bool:
    """Whether a call to a model (its locality and tier) gets its long context condensed
    in a class with ``condense_above_tokens`` = ``threshold``: a frontier (cloud, tier 3)
    model in a class that enables it."""
    return threshold > 0 and locality == "cloud" and tier >= FRONTIER_TIER


def condense_output_cap(local_max_output_tokens: int, threshold: int) -> int:
    """The condensing call's output cap: half the threshold (at least 64), at most what
    the local model may produce."""
    return max(64, min(local_max_output_tokens, threshold // 2))


def condensing_worst_tokens(
    input_tokens: int, local_max_output_tokens: int, threshold: int
) -> tuple[int, int]:
    """The condensing call's worst case (input, output tokens) for a request of
    ``input_tokens`` (estimated): the whole request as context plus the instruction, and
    the output cap. What a decision holds against budgets on top of the frontier call's."""
    return (
        input_tokens + estimate_tokens(_INSTRUCTION) + _PER_MESSAGE_TOKENS * 2,
        condense_output_cap(local_max_output_tokens, threshold),
    )


def condense_saving_usd(
    frontier: DatedPrice | None,
    local: DatedPrice | None,
    tokens_before: int,
    tokens_after: int,
    condense_input_tokens: int,
    condense_output_tokens: int,
) -> tuple[Decimal, Decimal]:
    """(what the condensing call cost, what condensing saved net of it): the frontier input
    tokens no longer sent, at the frontier's price, less the local call."""
    spent = price_cost_usd(local, condense_input_tokens, condense_output_tokens)
    saved = price_cost_usd(frontier, tokens_before - tokens_after, 0)
    return spent, saved - spent


def condenser_for(
    threshold: int, chosen: ModelInfo, models: Iterable[ModelInfo]
) -> ModelInfo | None:
    """The local model that condenses a call to ``chosen`` in a class whose threshold is
    ``threshold``, or None (the call is not condensed): the gateway calls it, and the
    decision holds its worst case against budgets."""
    if not condenses(threshold, chosen.locality, chosen.tier):
        return None
    return condenser_pick(models)


def condenser_pick(models: Iterable[ModelInfo]) -> ModelInfo | None:
    """The local model that condenses: active, circuit not open, the highest tier, then the
    cheapest."""
    usable = [
        m for m in models if m.locality == "local" and m.status == "active" and not m.circuit_open
    ]
    usable.sort(key=lambda m: (-m.tier, m.input_usd_per_mtok + m.output_usd_per_mtok, m.slug))
    return usable[0] if usable else None


def estimate_tokens(text: str) -> int:
    """The decision API's estimate (4 characters a token)."""
    return math.ceil(len(text) / 4)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def transcript_line(role: str, text: str) -> str:
    """One message as a line of a transcript (the gateway's prompt, the condensing input)."""
    return f"{role}: {text}"


_LINE = re.compile(r"^(system|developer|user|assistant|tool): ", re.MULTILINE)


def prompt_messages(prompt: str) -> list[dict[str, str]]:
    """The messages of a prompt the gateway recorded (its messages as transcript lines, one
    after another): the inverse of :func:`transcript_line` for replaying a conversation
    (the condensing sweep). A line that starts with a role and a colon begins a message; a
    prompt that does not start like that is one user message."""
    starts = list(_LINE.finditer(prompt))
    if not starts or starts[0].start() != 0:
        return [{"role": "user", "content": prompt}]
    messages = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() - 1 if i + 1 < len(starts) else len(prompt)
        messages.append({"role": match.group(1), "content": prompt[match.end() : end]})
    return messages


def context_split(messages: list[Any]) -> tuple[list[Any], list[Any], str]:
    """(context messages, the last message, the context as a transcript). Messages with
    tool calls or non-text parts are not condensed (the context is then empty)."""
    if len(messages) < 2:
        return [], messages, ""
    context, last = messages[:-1], messages[-1:]
    lines = []
    for message in context:
        if (
            not isinstance(message, dict)
            or message.get("tool_calls")
            or message.get("role") == "tool"
        ):
            return [], messages, ""
        content = message.get("content")
        if isinstance(content, list) and any(
            not (isinstance(p, dict) and p.get("type", "text") == "text") for p in content
        ):
            return [], messages, ""
        lines.append(transcript_line(str(message.get("role", "user")), _text(content)))
    return context, last, "\n\n".join(lines)


def condensing_body(provider_model: str, transcript: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": provider_model,
        "messages": [
            {"role": "system", "content": _INSTRUCTION},
            {"role": "user", "content": transcript},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def condensed_messages(summary: str, last: list[Any]) -> list[Any]:
    note = {
        "role": "system",
        "content": "[switchyard] The conversation and documents so far, condensed:\n\n" + summary,
    }
    return [note, *last]
