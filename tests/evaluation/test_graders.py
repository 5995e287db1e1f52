"""Graders: each kind, the registry, and the GSM8K-style final-number extraction."""

from __future__ import annotations

from decimal import Decimal

import pytest

from evaluation.client import ModelTarget
from evaluation.fleet import RunningFleet
from evaluation.graders import (
    GRADERS,
    GraderSpec,
    final_number,
    grader_build,
    judge_verdict,
    normalise_text,
    token_f1,
)
from evaluation.stats import percentile, wilson_interval


def grade(kind: str, answer: str, reference: str | None = None, **params: object) -> object:
    return grader_build(GraderSpec(kind=kind, params=params)).grade(
        prompt="q", answer=answer, reference=reference
    )


def test_registry_has_every_kind() -> None:
    assert set(GRADERS) == {
        "exact",
        "normalised",
        "numeric",
        "json_schema",
        "regex",
        "similarity",
        "llm_judge",
    }
    with pytest.raises(ValueError, match="Unknown grader"):
        grader_build(GraderSpec(kind="nope"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so she has 18 eggs.\n#### 18", Decimal(18)),
        ("The total is $1,240.50 in all.", Decimal("1240.50")),
        ("Step 1: 3 + 4 = 7\nAnswer: 12", Decimal(12)),
        ("first 5 then 7 finally 9.", Decimal(9)),
        ("The final answer is -3", Decimal(-3)),
        ("no digits here", None),
    ],
)
def test_final_number(text: str, expected: Decimal | None) -> None:
    assert final_number(text) == expected


def test_exact_and_normalised() -> None:
    assert grade("exact", "Paris", "Paris").passed is True  # type: ignore[attr-defined]
    assert grade("exact", "paris.", "Paris").passed is False  # type: ignore[attr-defined]
    assert grade("normalised", "  The PARIS. ", "paris").passed is True  # type: ignore[attr-defined]
    assert grade("normalised", "Lyon", "paris").passed is False  # type: ignore[attr-defined]
    assert grade("exact", "x", None).passed is None  # type: ignore[attr-defined]
    assert normalise_text("Café, the  end!") == "cafe end"


def test_numeric() -> None:
    assert grade("numeric", "... #### 1,000", "1000").passed is True  # type: ignore[attr-defined]
    assert grade("numeric", "Answer: 999", "#### 1000").passed is False  # type: ignore[attr-defined]
    assert grade("numeric", "no number", "5").passed is False  # type: ignore[attr-defined]
    assert grade("numeric", "Answer: 5.01", "5", tolerance="0.05").passed is True  # type: ignore[attr-defined]


def test_json_schema() -> None:
    schema = {
        "type": "object",
        "required": ["total", "currency"],
        "properties": {"total": {"type": "number"}, "currency": {"type": "string"}},
    }
    spec = GraderSpec(kind="json_schema", output_schema=schema)
    grader = grader_build(spec)
    ok = grader.grade(prompt="", answer='{"total": 3.5, "currency": "EUR"}', reference=None)
    fenced = grader.grade(
        prompt="", answer='```json\n{"total": 1, "currency": "EUR"}\n```', reference=None
    )
    wrong_type = grader.grade(prompt="", answer='{"total": "x", "currency": "EUR"}', reference=None)
    broken = grader.grade(prompt="", answer='{"total": 3.5,', reference=None)
    assert (ok.passed, fenced.passed, wrong_type.passed, broken.passed) == (
        True,
        True,
        False,
        False,
    )
    assert "not JSON" in broken.detail
    with pytest.raises(ValueError):
        grader_build(GraderSpec(kind="json_schema"))


def test_regex_and_similarity() -> None:
    assert grade(
        "regex", "Queue: billing", pattern=r"queue: (billing|tech)", ignore_case=True
    ).passed  # type: ignore[attr-defined]
    assert not grade("regex", "billing", pattern=r"^tech$").passed  # type: ignore[attr-defined]
    assert token_f1("the cat sat on the mat", "a cat sat on a mat") == pytest.approx(1.0)
    assert grade("similarity", "cat sat mat", "dog ran far").passed is False  # type: ignore[attr-defined]
    assert grade("similarity", "the cat sat", "cat sat", method="ratio", threshold=0.5).passed  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        grader_build(GraderSpec(kind="regex"))


def test_judge_verdict_parsing() -> None:
    assert judge_verdict("Reasoning...\nVERDICT: PASS", 0.5).passed is True
    assert judge_verdict("Looks wrong.\nAnswer: No", 0.5).passed is False
    assert judge_verdict("Score: 0.8", 0.7).passed is True
    assert judge_verdict("no idea", 0.5).passed is None


def test_llm_judge_calls_the_judge_model_through_the_fleet(eval_fleet: RunningFleet) -> None:
    """The fleet's judge models grade the quoted answer (and are right ~88 % of the time)."""
    judge = ModelTarget(slug="gpt-4o", base_url=f"{eval_fleet.url}/v1", provider_model="gpt-4o")
    grader = grader_build(GraderSpec(kind="llm_judge", judge=judge))
    right = [
        grader.grade(prompt=f"What is {i} + {i}?", answer=f"Answer: {2 * i}", reference=str(2 * i))
        for i in range(30)
    ]
    wrong = [
        grader.grade(
            prompt=f"What is {i} + {i}?", answer=f"Answer: {2 * i + 1}", reference=str(2 * i)
        )
        for i in range(30)
    ]
    assert all(v.passed is not None for v in right + wrong)
    assert sum(bool(v.passed) for v in right) >= 24
    assert sum(bool(v.passed) for v in wrong) <= 6


def test_wilson_interval() -> None:
    low, high = wilson_interval(85, 100)
    assert low == pytest.approx(0.7672, abs=1e-3) and high == pytest.approx(0.9069, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and low == pytest.approx(0.9287, abs=1e-3)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([], 0.5) is None
