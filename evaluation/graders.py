"""Graders: did a model's answer succeed? One registry of kinds, configured per task class.

A grader is plain Python (no database): ``grader_build(spec)`` returns an object whose
``grade(prompt=…, answer=…, reference=…)`` gives a :class:`Grade`. Graders that compare with
a reference (exact, normalised, numeric, similarity) need one; sweeps pass the request's
recorded reference when there is one and the current primary model's answer otherwise.
"""

from __future__ import annotations

import difflib
import json
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import jsonschema

from evaluation.client import ChatResult, ModelTarget, chat_complete


@dataclass(frozen=True, slots=True)
class Grade:
    passed: bool | None  # None: could not be graded (no reference, judge failed)
    score: float | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class GraderSpec:
    """Everything a grader needs, read from GraderConfig by a selector."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    output_schema: Mapping[str, Any] | None = None
    judge: ModelTarget | None = None
    judge_template: str = ""
    judge_prompt_label: str = ""


class Grader(Protocol):
    @property
    def needs_reference(self) -> bool: ...

    def grade(self, *, prompt: str, answer: str, reference: str | None) -> Grade: ...


GRADERS: dict[str, Callable[[GraderSpec], Grader]] = {}


def grader_kind(name: str) -> Callable[[Callable[[GraderSpec], Grader]], Callable[..., Grader]]:
    """Register a grader factory under ``name`` (the GraderConfig.kind value)."""

    def register(factory: Callable[[GraderSpec], Grader]) -> Callable[..., Grader]:
        GRADERS[name] = factory
        return factory

    return register


def grader_build(spec: GraderSpec) -> Grader:
    try:
        factory = GRADERS[spec.kind]
    except KeyError:
        raise ValueError(f"Unknown grader kind {spec.kind!r}.") from None
    return factory(spec)


# --- text helpers -------------------------------------------------------------------------

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise_text(text: str) -> str:
    """Case-folded, accent-stripped, punctuation- and article-free, single-spaced text."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.casefold().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?"
_HASHES_RE = re.compile(r"####\s*(" + _NUMBER + ")")
_ANSWER_RE = re.compile(
    r"(?:answer\s*(?:is|:)|final answer\s*(?:is|:)?)\s*\**\s*(" + _NUMBER + ")", re.I
)
_ANY_NUMBER_RE = re.compile(_NUMBER)


def final_number(text: str) -> Decimal | None:
    """The final numeric answer, GSM8K style: '#### N', else 'Answer: N', else the last number."""
    if not text:
        return None
    for pattern in (_HASHES_RE, _ANSWER_RE):
        found = pattern.findall(text)
        if found:
            return _to_decimal(found[-1])
    numbers = _ANY_NUMBER_RE.findall(text)
    return _to_decimal(numbers[-1]) if numbers else None


def _to_decimal(raw: str) -> Decimal | None:
    cleaned = raw.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def json_from_answer(text: str) -> Any:
    """Parse a JSON answer, tolerating a Markdown code fence around it."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return json.loads(stripped)


def token_f1(answer: str, reference: str) -> float:
    a = normalise_text(answer).split()
    r = normalise_text(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _no_reference() -> Grade:
    return Grade(None, None, "no reference to compare with")


# --- the kinds ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExactGrader:
    needs_reference: bool = True

    def grade(self, *, prompt: str, answer: str, reference: str | None) -> Grade:
        if reference is None:
            return _no_reference()
        passed = answer.strip() == reference.strip()
        return Grade(passed, float(passed))


@dataclass(frozen=True, slots=True)
class NormalisedGrader:
    needs_reference: bool = True

    def grade(self, *, prompt: str, answer: str, reference: str | None) -> Grade:
        if reference is None:
            return _no_reference()
        passed = normalise_text(answer) == normalise_text(reference)
        return Grade(passed, float(passed))


@dataclass(frozen=True, slots=True)
class NumericGrader:
    tolerance: Decimal = Decimal("0.000001")
    needs_reference: bool = True

    def grade(self, *, prompt: str, answer: str, reference: str | None) -> Grade:
        if reference is None:
            return _no_reference()
        expected = final_number(reference)
        if expected is None:
            return Grade(None, None, "the reference holds no number")
        got = final_number(answer)
        if got is None:
            return Grade(False, 0.0, "no number in the answer")
        passed = abs(got - expected) <= self.tolerance
        return Grade(passed, float(passed), f"{got} vs {expected}")


@dataclass(frozen=True, slots=True)
class JsonSchemaGrader:
    schema: Mapping[str, Any]
    needs_reference: bool = False

    def grade(self, *, prompt: str, answer: str, reference: str | None) -> Grade:
        try:
            data = json_from_answer(answer)
        except (json.JSONDecodeError, ValueError) as exc:
            return Grade(False, 0.0, f"not JSON: {exc.__class__.__name__}")
        errors = sorted(
            jsonschema.Draft202012Validator(self.schema).iter_errors(data), key=lambda e: e.path
        )
        if errors:
            return Grade(False, 0.0, errors[0].message[:200])
        return Grade(True, 1.0)


@dataclass(frozen=True, slots=True)
class RegexGrader:
    pattern: re.Pattern[str]
    full: bool = False
    needs_reference: bool = False

    def grade(self, *, prompt: str, answer: str, reference: str | None) -> Grade:
        text = answer.strip()
        matched = self.pattern.fullmatch(text) if self.full else self.pattern.search(text)
        return Grade(matched is not None, float(matched is not None))


@dataclass(frozen=True, slots=True)
class SimilarityGrader:
    threshold: float = 0.6
    method: str = "token_f1"  # or "ratio" (difflib)
    needs_reference: bool = True

    def grade(self, *, prompt: str, answer: str, reference: str | None) -> Grade:
        if reference is None:
            return _no_reference()
        if self.method == "ratio":
            score = difflib.SequenceMatcher(
                None, normalise_text(answer), normalise_text(reference)
            ).ratio()
        else:
            score = token_f1(answer, reference)
        return Grade(score >= self.threshold, score, f"{self.method} {score:.2f}")


_VERDICT_RE = re.compile(r"verdict\s*:\s*(pass|fail)", re.I)
_YES_NO_RE = re.compile(r"answer\s*:\s*(yes|no)\b", re.I)
_SCORE_RE = re.compile(r"score\s*:\s*([01](?:\.\d+)?)", re.I)

DEFAULT_JUDGE_TEMPLATE = (
    "Is the answer below a correct and complete response to the request?\n\n"
    "<request>\n{prompt}\n</request>\n\n<answer>\n{answer}\n</answer>\n\n"
    "<reference>\n{reference}\n</reference>\n\n"
    "The reference may be empty. Think briefly, then finish with a line 'Answer: Yes' or "
    "'Answer: No'. Is the answer acceptable?"
)


def judge_verdict(text: str, threshold: float) -> Grade:
    """Read a judge's reply: 'VERDICT: PASS|FAIL', 'Answer: Yes|No' or 'Score: 0..1'."""
    for pattern, yes in ((_VERDICT_RE, "pass"), (_YES_NO_RE, "yes")):
        found = pattern.findall(text)
        if found:
            passed = found[-1].lower() == yes
            return Grade(passed, float(passed), f"judge: {found[-1]}")
    scores = _SCORE_RE.findall(text)
    if scores:
        score = float(scores[-1])
        return Grade(score >= threshold, score, f"judge score {score:.2f}")
    return Grade(None, None, "judge gave no verdict")


@dataclass(frozen=True, slots=True)
class JudgeGrader:
    judge: ModelTarget
    template: str
    threshold: float = 0.5
    needs_reference: bool = False

    def grade(self, *, prompt: str, answer: str, reference: str | None) -> Grade:
        text = self.template.format(prompt=prompt, answer=answer, reference=reference or "")
        result: ChatResult = chat_complete(
            self.judge, [{"role": "user", "content": text}], max_tokens=256
        )
        if result.status != "ok":
            return Grade(None, None, f"judge call failed: {result.status} {result.error}")
        return judge_verdict(result.content, self.threshold)


@grader_kind("exact")
def _exact(spec: GraderSpec) -> Grader:
    return ExactGrader()


@grader_kind("normalised")
def _normalised(spec: GraderSpec) -> Grader:
    return NormalisedGrader()


@grader_kind("numeric")
def _numeric(spec: GraderSpec) -> Grader:
    return NumericGrader(tolerance=Decimal(str(spec.params.get("tolerance", "0.000001"))))


@grader_kind("json_schema")
def _json_schema(spec: GraderSpec) -> Grader:
    schema = spec.params.get("schema") or spec.output_schema
    if not isinstance(schema, Mapping):
        raise ValueError("A json_schema grader needs params.schema or a task-class output schema.")
    jsonschema.Draft202012Validator.check_schema(schema)
    return JsonSchemaGrader(schema=schema)


@grader_kind("regex")
def _regex(spec: GraderSpec) -> Grader:
    pattern = spec.params.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("A regex grader needs params.pattern.")
    flags = re.I if spec.params.get("ignore_case") else 0
    return RegexGrader(pattern=re.compile(pattern, flags), full=bool(spec.params.get("full")))


@grader_kind("similarity")
def _similarity(spec: GraderSpec) -> Grader:
    method = str(spec.params.get("method", "token_f1"))
    if method not in {"token_f1", "ratio"}:
        raise ValueError("similarity method must be token_f1 or ratio")
    return SimilarityGrader(threshold=float(spec.params.get("threshold", 0.6)), method=method)


@grader_kind("llm_judge")
def _judge(spec: GraderSpec) -> Grader:
    if spec.judge is None:
        raise ValueError("An llm_judge grader needs a judge model.")
    return JudgeGrader(
        judge=spec.judge,
        template=spec.judge_template or DEFAULT_JUDGE_TEMPLATE,
        threshold=float(spec.params.get("threshold", 0.5)),
    )


def grader_default_spec(*, output_schema: Mapping[str, Any] | None) -> GraderSpec:
    """Without a configured grader: schema validity when the class has one, else similarity."""
    if output_schema:
        return GraderSpec(kind="json_schema", output_schema=output_schema)
    return GraderSpec(kind="similarity", params={"threshold": 0.6})
