"""routing.cascade on the project's generated workload: each cheap attempt is the answer the
replay fleet's skill profile gives (correct, wrong-but-valid, or malformed/chatty), and the
cascade must tell the failures it can see from the successes, better than the prior alone."""

from __future__ import annotations

import pytest

from evaluation.fleet.skills import SKILLS, verdict
from evaluation.graders import GraderSpec, grader_build
from evaluation.workload import INVOICE_SCHEMA, workload_items
from routing.cascade import CascadeAttempt, Expects, attempt_evidence, cascade_judge
from routing.confidence import brier_score

CLASSES: dict[str, Expects] = {
    "multi-step-reasoning": "number",
    "field-extraction": "json",
    "ticket-triage": "label",
}
CHEAP = "llama-3.1-8b-local"


def _attempts(task_class: str) -> list[tuple[str, str, str]]:
    """(answer text, verdict, request) of the cheap model on every generated item of the
    class."""
    out: list[tuple[str, str, str]] = []
    for item in workload_items(task_class):
        v = verdict(CHEAP, SKILLS[CHEAP], task_class, item.difficulty, item.id)
        pool = {"correct": item.answers, "wrong": item.wrong, "invalid": item.invalid}[v]
        text = pool[int(item.id.rsplit("/", 1)[-1]) % len(pool)] if pool else ""
        out.append((text, v, item.prompt))
    return out


@pytest.mark.parametrize("task_class", sorted(CLASSES))
def test_cascade_beats_the_prior_on_generated_attempts(task_class: str) -> None:
    attempts = _attempts(task_class)
    outcomes = [v == "correct" for _, v, _ in attempts]
    prior = sum(outcomes) / len(outcomes)  # the model's calibrated rate on the class
    # Structured output is checked against the class's schema, as the cascade call does.
    schema = grader_build(GraderSpec(kind="json_schema", output_schema=INVOICE_SCHEMA))

    def valid(text: str) -> bool | None:
        if CLASSES[task_class] != "json":
            return None
        return schema.grade(prompt="", answer=text, reference=None).passed

    # The request goes with the attempt, as the cascade call passes the stored prompt.
    verdicts = [
        cascade_judge(
            CascadeAttempt(output=text, schema_valid=valid(text)),
            prior=prior,
            expects=CLASSES[task_class],
            prompt=prompt,
        )
        for text, _, prompt in attempts
    ]
    p = [v.p_success for v in verdicts]
    brier = brier_score(p, outcomes)
    base = brier_score([prior] * len(outcomes), outcomes)
    invalid = [v for v, (_, kind, _) in zip(verdicts, attempts, strict=True) if kind == "invalid"]
    correct = [v for v, (_, kind, _) in zip(verdicts, attempts, strict=True) if kind == "correct"]
    caught = sum(v.action == "escalate" for v in invalid) / len(invalid)
    kept = sum(v.action == "accept" for v in correct) / len(correct)
    print(
        f"{task_class}: brier {brier:.4f} vs prior {base:.4f}; invalid escalated {caught:.2f},"
        f" correct accepted {kept:.2f}"
    )
    assert brier < base
    assert caught > 0.8  # malformed and chatty answers go up a tier
    assert kept > 0.95  # good answers stay


def test_evidence_and_signals() -> None:
    assert attempt_evidence(CascadeAttempt(output="  "), "") == {"empty": 1.0}
    broken = attempt_evidence(CascadeAttempt(output='{"a": 1'), "json")
    assert broken["json_broken"] == 1.0 and broken["truncated"] == 1.0
    assert "no_final_number" in attempt_evidence(CascadeAttempt(output="about ten"), "number")
    assert attempt_evidence(CascadeAttempt(output="so #### 42"), "number") == {}
    refusal = attempt_evidence(CascadeAttempt(output="I would need more information."), "")
    assert "refusal" in refusal
    base = cascade_judge(CascadeAttempt(output="42"), prior=0.7)
    assert base.p_success == pytest.approx(0.7, abs=1e-3) and base.action == "accept"
    unsure = cascade_judge(CascadeAttempt(output="42", self_confidence=0.1), prior=0.7)
    sure = cascade_judge(CascadeAttempt(output="42", self_confidence=0.99), prior=0.7)
    assert unsure.p_success < 0.5 < 0.7 < sure.p_success
    assert unsure.action == "escalate"
    shaky = cascade_judge(CascadeAttempt(output="42", logprobs=[-2.5, -3.0]), prior=0.7)
    steady = cascade_judge(CascadeAttempt(output="42", logprobs=[-0.01, -0.02]), prior=0.7)
    assert shaky.p_success < 0.7 < steady.p_success
    assert "mean token logprob" in shaky.reasons[-1]
    invalid = cascade_judge(CascadeAttempt(output="42", schema_valid=False), prior=0.99)
    assert invalid.action == "escalate"
    strict = cascade_judge(CascadeAttempt(output="42"), prior=0.7, threshold=0.8)
    assert strict.action == "escalate" and strict.threshold == 0.8


def test_an_answer_whose_own_arithmetic_is_wrong_escalates_sooner() -> None:
    from routing.cascade import CascadeAttempt, attempt_evidence, cascade_judge

    right = "She buys 3 * 4 = 12 apples, then 12 + 5 = 17.\n#### 17"
    wrong = "She buys 3 * 4 = 12 apples, then 12 + 5 = 18.\n#### 18"
    assert "arithmetic_error" not in attempt_evidence(CascadeAttempt(right), "number")
    assert "arithmetic_error" in attempt_evidence(CascadeAttempt(wrong), "number")
    # Rounding to cents, calculator annotations, precedence and thousands separators hold.
    fine = "<<10/3=3.33>> 2 + 3 * 4 = 14, 1,200 - 200 = 1,000\n#### 1000"
    assert "arithmetic_error" not in attempt_evidence(CascadeAttempt(fine), "number")
    corrected = "That is 2.5 bolts. However, you can't have half a bolt.\n#### 3"
    assert "self_correction" in attempt_evidence(CascadeAttempt(corrected), "number")
    assert "self_correction" not in attempt_evidence(CascadeAttempt(corrected), "")
    good = cascade_judge(CascadeAttempt(right), prior=0.7, expects="number")
    bad = cascade_judge(CascadeAttempt(wrong), prior=0.7, expects="number")
    assert good.action == "accept" and bad.action == "escalate"
    assert any("arithmetic error" in r for r in bad.reasons)


def test_an_answer_that_drops_a_given_or_ends_in_a_fraction_escalates_sooner() -> None:
    """Against its request: a number the question gives that the working never uses, or a
    fractional final answer when every given is whole (half a bolt), lowers the odds."""
    prompt = "A robe takes 2 bolts of blue fiber and 3 of white. Each bolt costs $4. Total cost?"
    full = "2 + 3 = 5 bolts, 5 * 4 = 20.\n#### 20"
    dropped = "2 + 3 = 5 bolts.\n#### 5"
    fraction = "2 + 3 = 5 bolts, 5 * 4 = 20, 20 / 8 = 2.5.\n#### 2.5"
    assert attempt_evidence(CascadeAttempt(full), "number", prompt) == {}
    assert attempt_evidence(CascadeAttempt(dropped), "number", prompt) == {
        "unused_request_number": 1.0
    }
    assert "fractional_answer" in attempt_evidence(CascadeAttempt(fraction), "number", prompt)
    # A fractional given makes a fractional answer plausible; no request, no such evidence.
    priced = "A bolt costs $2.5 and a robe takes 3 bolts. Cost?"
    assert attempt_evidence(CascadeAttempt("3 * 2.5 = 7.5\n#### 7.5"), "number", priced) == {}
    assert attempt_evidence(CascadeAttempt(dropped), "number") == {}
    assert attempt_evidence(CascadeAttempt(dropped), "", prompt) == {}
    good = cascade_judge(CascadeAttempt(full), prior=0.7, expects="number", prompt=prompt)
    left_out = cascade_judge(CascadeAttempt(dropped), prior=0.7, expects="number", prompt=prompt)
    half = cascade_judge(CascadeAttempt(fraction), prior=0.7, expects="number", prompt=prompt)
    assert good.p_success == pytest.approx(0.7, abs=1e-3)
    assert half.p_success < left_out.p_success < good.p_success
    assert half.action == "escalate" and any("fractional answer" in r for r in half.reasons)
