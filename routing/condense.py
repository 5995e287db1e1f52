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
from collections.abc import Iterable
from typing import Any

from routing.engine import ModelInfo

__all__ = [
    "FRONTIER_TIER",
    "condensed_messages",
    "condenser_pick",
    "condensing_body",
    "context_split",
    "estimate_tokens",
]

FRONTIER_TIER = 3
_INSTRUCTION = (
    "Condense the conversation and documents below for another assistant who must answer "
    "the user's next message. Keep every fact, number, name, identifier, decision and open "
    "question that could matter; drop repetition, pleasantries and formatting. Answer with "
    "the condensed context only."
)


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
        lines.append(f"{message.get('role', 'user')}: {_text(content)}")
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
