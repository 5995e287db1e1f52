"""Cascade: after a cheap model's attempt, accept its answer or escalate (plain Python).

The probability that the attempt is a success starts from the decision's ``confidence``
(the model's calibrated success probability on the request, ``routing.confidence``) and
moves, in log-odds, with what the answer itself shows:

=====================  =====================================================  ===========
evidence               when                                                   log-odds
=====================  =====================================================  ===========
empty                  no text at all                                          −8
schema invalid         ``schema_valid`` false (reported, or checked here)      −5
broken JSON            JSON expected (or begun) and it does not parse           −4
truncated              ``finish_reason`` "length", or unbalanced brackets        −3
no final number        a number expected and none at the end                    −3
arithmetic error       an equation in the answer that does not hold             −2
                       ("12 + 7 = 20"; within rounding to 2 decimals)
unused request number  a number written in the request (given) is nowhere in     −1
                       the answer: a given left out of the working (numbers)
fractional answer      the final number has a fractional part while every       −2.5
                       number of the request is whole (request given, numbers)
self-correction        "however", "can't have half", "rounding" (numbers)       −1
not a label            a short label expected, prose given                      −2.5
refusal / hedge        "I cannot", "I would need more information", …           −3 / −1
chatty preamble        "Sure!", "Here are the fields:" before the answer        −1
self-reported          ``self_confidence`` c: half the way from the prior's      ±
                       log-odds to c's
token logprobs         mean token logprob m: 2·(m + 0.3), within ±3             ±
=====================  =====================================================  ===========

The answer is accepted when the probability is at least the threshold (the route's
``confidence_below`` escalation trigger, else 0.5). These weights are set by hand and
checked on the project's generated workload (tests/evaluation/test_cascade.py); they are
data (:data:`WEIGHTS`), so a fitted set can replace them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

Expects = Literal["", "json", "number", "label"]

WEIGHTS: Final[Mapping[str, float]] = {
    "empty": -8.0,
    "schema_invalid": -5.0,
    "json_broken": -4.0,
    "truncated": -3.0,
    "no_final_number": -3.0,
    "arithmetic_error": -2.0,
    "unused_request_number": -1.0,
    "fractional_answer": -2.5,
    "self_correction": -1.0,
    "not_a_label": -2.5,
    "refusal": -3.0,
    "hedge": -1.0,
    "chatty": -1.0,
    "self_confidence_share": 0.5,
    "logprob_scale": 2.0,
    "logprob_reference": -0.3,
    "logprob_cap": 3.0,
}
DEFAULT_THRESHOLD: Final = 0.5

_REFUSAL = re.compile(
    r"\b(i can(?:no|')t|i am unable|i'm unable|i would need more information|"
    r"as an ai|i don't have enough)\b",
    re.I,
)
_HEDGE = re.compile(r"\b(probably|might be|not sure|i think|possibly|it depends)\b", re.I)
_CHATTY = re.compile(r"^\s*(sure|certainly|of course|here (?:is|are)|this looks like)\b", re.I)
_FINAL_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?\s*[^\w\s]*\s*$")
_LABEL = re.compile(r"^[\w\-]+(?:/[\w\-]+)?$")
_NUM = r"-?\d[\d,]*(?:\.\d+)?"
# "a op b [op c …] = d" (also inside calculator annotations "<<a*b=d>>").
_EQUATION = re.compile(rf"({_NUM}(?:\s*[-+*/×]\s*{_NUM})+)\s*=\s*\$?({_NUM})")
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")
_SELF_CORRECTION = re.compile(
    r"\b(however|but since|can(?:no|')t have|round(?:ed|ing)? (?:up|down)|approximately)\b", re.I
)


@dataclass(frozen=True, slots=True)
class CascadeAttempt:
    output: str
    self_confidence: float | None = None
    logprobs: Sequence[float] = ()
    schema_valid: bool | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class CascadeVerdict:
    p_success: float
    action: Literal["accept", "escalate"]
    threshold: float
    reasons: tuple[str, ...]
    features: dict[str, float] = field(default_factory=dict)


def _logit(p: float) -> float:
    p = min(1 - 1e-6, max(1e-6, p))
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _unbalanced(text: str) -> bool:
    return text.count("{") != text.count("}") or text.count("[") != text.count("]")


def _json_ok(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _arithmetic_error(text: str) -> bool:
    """Does an equation of plain numbers in the text not hold (beyond rounding)?"""
    for match in _EQUATION.finditer(text):
        expression = match.group(1).replace(",", "").replace("×", "*")
        try:
            value = _evaluate(expression)
            stated = float(match.group(2).replace(",", ""))
        except (ValueError, ZeroDivisionError):
            continue
        if (
            abs(value - stated) > 1e-6 * max(1.0, abs(value))
            and abs(round(value, 2) - stated) > 0.011
        ):
            return True
    return False


_TERM = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*([-+*/]?)")


def _evaluate(expression: str) -> float:
    """Value of "n op n op …" with * and / before + and - (no eval)."""
    terms: list[float] = []
    ops: list[str] = []
    position = 0
    while position < len(expression):
        match = _TERM.match(expression, position)
        if match is None or match.end() == position:
            raise ValueError(expression)
        terms.append(float(match.group(1)))
        if match.group(2):
            ops.append(match.group(2))
        position = match.end()
    if len(ops) != len(terms) - 1:
        raise ValueError(expression)
    sums, sum_ops = [terms[0]], []
    for op, term in zip(ops, terms[1:], strict=True):
        if op == "*":
            sums[-1] *= term
        elif op == "/":
            sums[-1] /= term
        else:
            sums.append(term)
            sum_ops.append(op)
    total = sums[0]
    for op, term in zip(sum_ops, sums[1:], strict=True):
        total = total + term if op == "+" else total - term
    return total


def _numbers(text: str) -> list[float]:
    """The numbers written in digits in ``text`` ("1,200" is 1200; "3." is 3)."""
    out = []
    for match in _NUMBER.findall(text):
        try:
            out.append(float(match.replace(",", "")))
        except ValueError:
            continue
    return out


def _request_evidence(text: str, prompt: str) -> dict[str, float]:
    """What a numeric answer shows against its request: a given number it never uses, a
    fractional final number when every given number is whole."""
    out: dict[str, float] = {}
    given = _numbers(prompt)
    if not given:
        return out
    used = set(_numbers(text))
    if any(n not in used for n in given):
        out["unused_request_number"] = 1.0
    final = _FINAL_NUMBER.search(text)
    if final is not None and all(n == int(n) for n in given):
        values = _numbers(final.group(0))
        if values and values[-1] != int(values[-1]):
            out["fractional_answer"] = 1.0
    return out


def attempt_evidence(
    attempt: CascadeAttempt, expects: Expects, prompt: str = ""
) -> dict[str, float]:
    """The evidence present in the attempt: {name: 1.0} flags, plus the numeric signals.
    ``prompt``: the request, when known (numbers: the givens the answer should use)."""
    text = attempt.output.strip()
    out: dict[str, float] = {}
    if not text:
        out["empty"] = 1.0
        return out
    if attempt.schema_valid is False:
        out["schema_invalid"] = 1.0
    looks_json = text.startswith(("{", "["))
    if (expects == "json" or looks_json) and not _json_ok(text):
        out["json_broken"] = 1.0
    if attempt.finish_reason == "length" or (looks_json and _unbalanced(text)):
        out["truncated"] = 1.0
    if expects == "number" and not _FINAL_NUMBER.search(text):
        out["no_final_number"] = 1.0
    if _arithmetic_error(text):
        out["arithmetic_error"] = 1.0
    if expects == "number" and prompt:
        out.update(_request_evidence(text, prompt))
    if expects == "number" and _SELF_CORRECTION.search(text):
        out["self_correction"] = 1.0
    if expects == "label" and not _LABEL.match(text):
        out["not_a_label"] = 1.0
    if _REFUSAL.search(text):
        out["refusal"] = 1.0
    elif _HEDGE.search(text):
        out["hedge"] = 1.0
    if _CHATTY.search(text):
        out["chatty"] = 1.0
    if attempt.self_confidence is not None:
        out["self_confidence"] = float(attempt.self_confidence)
    if attempt.logprobs:
        out["mean_logprob"] = sum(attempt.logprobs) / len(attempt.logprobs)
    return out


def cascade_judge(
    attempt: CascadeAttempt,
    *,
    prior: float,
    expects: Expects = "",
    threshold: float = DEFAULT_THRESHOLD,
    weights: Mapping[str, float] = WEIGHTS,
    prompt: str = "",
) -> CascadeVerdict:
    """Accept or escalate the attempt (see the module docstring); ``prompt``: the request
    the attempt answers, when known."""
    evidence = attempt_evidence(attempt, expects, prompt)
    z = _logit(prior)
    reasons = [f"prior {prior:.2f} (the decision's confidence)"]
    for name in ("empty", "schema_invalid", "json_broken", "truncated", "no_final_number",
                 "arithmetic_error", "unused_request_number", "fractional_answer",
                 "self_correction", "not_a_label", "refusal", "hedge", "chatty"):  # fmt: skip
        if name in evidence:
            z += weights[name]
            reasons.append(f"{name.replace('_', ' ')} ({weights[name]:+g})")
    if "self_confidence" in evidence:
        shift = weights["self_confidence_share"] * (_logit(evidence["self_confidence"]) - z)
        z += shift
        reasons.append(f"self-reported confidence {evidence['self_confidence']:.2f} ({shift:+.2f})")
    if "mean_logprob" in evidence:
        cap = weights["logprob_cap"]
        shift = weights["logprob_scale"] * (evidence["mean_logprob"] - weights["logprob_reference"])
        shift = max(-cap, min(cap, shift))
        z += shift
        reasons.append(f"mean token logprob {evidence['mean_logprob']:.2f} ({shift:+.2f})")
    p = round(_sigmoid(z), 4)
    action: Literal["accept", "escalate"] = "accept" if p >= threshold else "escalate"
    return CascadeVerdict(
        p_success=p,
        action=action,
        threshold=threshold,
        reasons=tuple(reasons),
        features={k: round(v, 4) for k, v in evidence.items()},
    )
