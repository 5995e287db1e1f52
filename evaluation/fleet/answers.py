"""How the replay fleet produces answers.

Everything here is pure and deterministic: the answer (and the simulated latency) for a
``(model, prompt)`` pair depends only on the model's configuration and the prompt text, seeded
through ``blake2b`` (never Python's salted ``hash()``), so runs are reproducible across
processes and machines.

Three answer sources exist, tried in this order:

* **GSM8K replay** (optional: ``--data DIR``, a RouteLLM-format directory) — when the last
  user message equals (after whitespace normalisation) a prompt of its GSM8K response file,
  the recorded Mixtral-8x7B text (``role="weak"``) or GPT-4 text (``role="strong"``) is
  returned verbatim. Models without a role pick one of the two
  recorded texts deterministically so that their expected GSM8K accuracy tracks their
  ``quality`` (see :meth:`AnswerEngine.strong_pick_probability`).
* **The generated workload** (:mod:`evaluation.workload`) — a prompt of the project's own
  workload is answered from the item's correct, wrong or invalid answers as the model's skill
  profile (:mod:`evaluation.fleet.skills`) decides for that ``(model, item)``. A judge prompt
  quoting such a request is judged against what the item knows is right, with the judge
  model's own reliability.
* **Generic prompts** — a synthetic but plausible answer. With probability ``quality`` the
  answer is "correct" (arithmetic evaluated properly, the prompt's reference option chosen,
  valid JSON in JSON mode); otherwise it is wrong or, in JSON mode, malformed JSON.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from evaluation.workload import WorkloadItem, normalise_prompt, workload_index
from routing.llm_router import INSTRUCTION as ROUTER_INSTRUCTION

from .skills import ModelSkill, skill_for, verdict
from .stable import stable_int, stable_unit

__all__ = [
    "DEFAULT_FLEET",
    "FLEET_PROVIDER_ALIASES",
    "GSM8K_STRONG_COLUMN",
    "GSM8K_WEAK_COLUMN",
    "ROUTELLM_GSM8K_FILE",
    "Answer",
    "AnswerEngine",
    "FleetModel",
    "Gsm8kRow",
    "Role",
    "estimate_tokens",
    "fleet_model_from_dict",
    "gsm8k_load",
    "mentions_json",
    "normalise_prompt",
    "routellm_gsm8k_path",
    "sample_latency_ms",
    "stable_int",
    "stable_unit",
]

Role = Literal["weak", "strong"]

GSM8K_WEAK_COLUMN = "mistralai/Mixtral-8x7B-Instruct-v0.1"
GSM8K_STRONG_COLUMN = "gpt-4-1106-preview"
_GSM8K_COLUMNS = (
    "prompt",
    GSM8K_WEAK_COLUMN,
    GSM8K_STRONG_COLUMN,
    f"{GSM8K_WEAK_COLUMN}_response",
    f"{GSM8K_STRONG_COLUMN}_response",
    "reference_answer",
)

# z-score of the 95th percentile of a standard normal distribution.
_Z95 = 1.6448536269514722
_STD_NORMAL = statistics.NormalDist()


# --------------------------------------------------------------------------------------------
# Model configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetModel:
    """One simulated model of the fleet.

    ``quality`` is the probability of a correct answer on generic prompts. The latency of a
    request is drawn from a lognormal distribution whose median is ``latency_ms_p50`` and whose
    95th percentile is ``latency_ms_p95``. ``tokens_per_s`` is descriptive metadata (exposed by
    ``/v1/models``); the latency draw already models the full request. ``tier`` is informational.
    """

    slug: str
    quality: float
    latency_ms_p50: float
    latency_ms_p95: float
    tokens_per_s: float
    role: Role | None = None
    fail_rate: float = 0.0
    tier: str | None = None

    def __post_init__(self) -> None:
        if not self.slug or not isinstance(self.slug, str):
            raise ValueError("FleetModel.slug must be a non-empty string")
        if "/" in self.slug or any(ch.isspace() for ch in self.slug):
            raise ValueError(f"FleetModel.slug {self.slug!r} must not contain '/' or whitespace")
        if not 0.0 <= self.quality <= 1.0:
            raise ValueError(f"{self.slug}: quality must be within [0, 1]")
        if not self.latency_ms_p50 > 0:
            raise ValueError(f"{self.slug}: latency_ms_p50 must be > 0")
        if self.latency_ms_p95 < self.latency_ms_p50:
            raise ValueError(f"{self.slug}: latency_ms_p95 must be >= latency_ms_p50")
        if not self.tokens_per_s > 0:
            raise ValueError(f"{self.slug}: tokens_per_s must be > 0")
        if self.role not in ("weak", "strong", None):
            raise ValueError(f"{self.slug}: role must be 'weak', 'strong' or None")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"{self.slug}: fail_rate must be within [0, 1]")

    def as_dict(self) -> dict[str, object]:
        return {
            "slug": self.slug,
            "quality": self.quality,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p95": self.latency_ms_p95,
            "tokens_per_s": self.tokens_per_s,
            "role": self.role,
            "fail_rate": self.fail_rate,
            "tier": self.tier,
        }


DEFAULT_FLEET: tuple[FleetModel, ...] = (
    FleetModel("llama-3.1-8b-local", 0.70, 180.0, 420.0, 95.0, "weak", tier="tier1"),
    FleetModel("qwen2.5-7b-local", 0.68, 200.0, 460.0, 90.0, "weak", tier="tier1"),
    FleetModel("mistral-small-hosted", 0.80, 450.0, 1000.0, 70.0, None, tier="tier2"),
    FleetModel("gpt-4o", 0.88, 900.0, 2000.0, 60.0, "strong", tier="tier3"),
    FleetModel("claude-sonnet", 0.90, 950.0, 2100.0, 55.0, "strong", tier="tier3"),
    FleetModel("gpt-4o-mini", 0.78, 400.0, 900.0, 110.0, None, tier="tier2"),
)


# Provider model ids (what a registry sends as ``model``) answered by a fleet model slug, so the
# fleet can stand in for the providers of the demo registry.
FLEET_PROVIDER_ALIASES: dict[str, str] = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b-local",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b-local",
    "mistral-small-latest": "mistral-small-hosted",
}


def _as_float(data: Mapping[str, object], key: str, default: float | None = None) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"model field {key!r} must be a number, got {value!r}")
    return float(value)


def fleet_model_from_dict(data: Mapping[str, object]) -> FleetModel:
    """Build a :class:`FleetModel` from a JSON-like mapping (used by ``--config``)."""
    known = {
        "slug",
        "quality",
        "latency_ms_p50",
        "latency_ms_p95",
        "tokens_per_s",
        "role",
        "fail_rate",
        "tier",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown model field(s): {', '.join(unknown)}")
    slug = data.get("slug")
    if not isinstance(slug, str):
        raise ValueError(f"model field 'slug' must be a string, got {slug!r}")
    role = data.get("role")
    if role not in ("weak", "strong", None):
        raise ValueError(f"{slug}: role must be 'weak', 'strong' or null, got {role!r}")
    tier = data.get("tier")
    if tier is not None and not isinstance(tier, str):
        raise ValueError(f"{slug}: tier must be a string or null")
    p50 = _as_float(data, "latency_ms_p50")
    return FleetModel(
        slug=slug,
        quality=_as_float(data, "quality"),
        latency_ms_p50=p50,
        latency_ms_p95=_as_float(data, "latency_ms_p95", p50 * 2.2),
        tokens_per_s=_as_float(data, "tokens_per_s", 60.0),
        role=role,
        fail_rate=_as_float(data, "fail_rate", 0.0),
        tier=tier,
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """Deterministic token estimate: about one token per four characters."""
    if not text:
        return 0
    return max(1, math.ceil(len(text) / 4))


def sample_latency_ms(model: FleetModel, prompt: str) -> float:
    """Deterministic lognormal latency draw (ms) matching the model's p50/p95, unscaled."""
    p50, p95 = model.latency_ms_p50, model.latency_ms_p95
    sigma = math.log(p95 / p50) / _Z95 if p95 > p50 else 0.0
    u = stable_unit("latency", model.slug, normalise_prompt(prompt))
    u = min(max(u, 1e-6), 1.0 - 1e-6)
    return p50 * math.exp(sigma * _STD_NORMAL.inv_cdf(u))


# --------------------------------------------------------------------------------------------
# GSM8K replay data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gsm8kRow:
    prompt: str
    weak_correct: bool
    strong_correct: bool
    weak_response: str
    strong_response: str
    reference_answer: str


def _parse_bool(value: str, *, where: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"{where}: expected True/False, got {value!r}")


ROUTELLM_GSM8K_FILE = "gsm8k_responses.csv"


def routellm_gsm8k_path(directory: str | os.PathLike[str]) -> str:
    """The GSM8K recording of a RouteLLM-layout directory (``<dir>/gsm8k_responses.csv``)."""
    path = os.path.join(os.fspath(directory), ROUTELLM_GSM8K_FILE)
    if not os.path.isdir(directory):
        raise ValueError(f"{os.fspath(directory)}: not a directory")
    if not os.path.isfile(path):
        raise ValueError(
            f"{os.fspath(directory)}: no {ROUTELLM_GSM8K_FILE} (expected the RouteLLM layout)"
        )
    return path


def gsm8k_load(path: str | os.PathLike[str]) -> dict[str, Gsm8kRow]:
    """Load the RouteLLM GSM8K response CSV, keyed by :func:`normalise_prompt` of the prompt.

    The file is read in place with the ``csv`` module (it contains multi-line quoted fields).
    Duplicate prompts keep their first row.
    """
    rows: dict[str, Gsm8kRow] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _GSM8K_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{os.fspath(path)}: missing column(s): {', '.join(missing)}")
        for line_no, record in enumerate(reader, start=2):
            where = f"{os.fspath(path)} record {line_no}"
            prompt = record["prompt"] or ""
            key = normalise_prompt(prompt)
            if not key or key in rows:
                continue
            rows[key] = Gsm8kRow(
                prompt=prompt,
                weak_correct=_parse_bool(record[GSM8K_WEAK_COLUMN] or "", where=where),
                strong_correct=_parse_bool(record[GSM8K_STRONG_COLUMN] or "", where=where),
                weak_response=record[f"{GSM8K_WEAK_COLUMN}_response"] or "",
                strong_response=record[f"{GSM8K_STRONG_COLUMN}_response"] or "",
                reference_answer=record["reference_answer"] or "",
            )
    return rows


# --------------------------------------------------------------------------------------------
# Answer generation
# --------------------------------------------------------------------------------------------

AnswerSource = Literal[
    "gsm8k-weak",
    "gsm8k-strong",
    "generic",
    "json",
    "workload-correct",
    "workload-wrong",
    "workload-invalid",
    "workload-judge",
    "router",
]


@dataclass(frozen=True, slots=True)
class Answer:
    """A produced answer. ``correct`` is ``None`` when correctness is not meaningful."""

    content: str
    source: AnswerSource
    correct: bool | None


_STOPWORD_TEXT = """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its itself just
    me more most my no nor not now of off on once only or other our out over own please same she
    should so some such than that the their them then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you
    your yours explain describe tell give write list briefly short answer question json return
    using use make like want need key keys field fields property properties object with
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{2,}")
_ARITH_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s*([+\-*/\u00d7\u00f7x])\s*(-?\d+(?:\.\d+)?)")
_ARITH_CUE_RE = re.compile(r"\?|\b(?:what is|what's|calculate|compute|evaluate|solve)\b", re.I)
_MC_LINE_RE = re.compile(r"(?m)^\s*\(?([A-E])[).:]\s+\S")
_MC_INLINE_RE = re.compile(r"\(([A-E])\)\s*\S")
_YES_NO_RE = re.compile(
    r"^(?:is|are|does|do|can|should|will|was|were|has|have|did|could|would)\b.*\?$", re.I | re.S
)
_JSON_MENTION_RE = re.compile(r"\bjson\b", re.I)
_QUOTED_KEY_RE = re.compile(r"[\"'`]([A-Za-z_][A-Za-z0-9_]{0,40})[\"'`]")
_KEY_CUE_RE = re.compile(r"\b(?:keys?|fields?|properties)\b", re.I)


# A judge prompt: a yes/no question about an answer quoted in <answer> tags (and optionally a
# <reference>), e.g. the default judge prompt of evaluation.graders.
_JUDGE_RE = re.compile(
    r"^\s*(?:is|does|was) the (?:answer|response)\b.*<answer>(?P<answer>.*?)</answer>"
    r"(?:.*<reference>(?P<reference>.*?)</reference>)?.*\?\s*$",
    re.I | re.S,
)
_REQUEST_RE = re.compile(r"<request>(.*?)</request>", re.S)
# A routing request (routing.llm_router.router_messages): candidates, then the request.
_ROUTER_RE = re.compile(
    r"^"
    + re.escape(ROUTER_INSTRUCTION)
    + r"\s*\nCandidates[^\n]*\n(?P<candidates>(?:- [^\n]*\n)+)Request:\n<<<\n(?P<request>.*)\n>>>",
    re.S,
)
_EVASIVE_PHRASES = (
    "That is a broad question",
    "It depends on many factors",
    "others would disagree",
    "consult additional sources",
)
_LAST_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _final_number(text: str) -> float | None:
    """'#### N', else 'Answer: N', else the last number of ``text``."""
    for marker in ("####", "Answer:"):
        if marker in text:
            tail = text.rsplit(marker, 1)[1]
            found = _LAST_NUMBER_RE.search(tail)
            if found:
                return float(found.group(0).replace(",", ""))
    numbers = _LAST_NUMBER_RE.findall(text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def mentions_json(text: str) -> bool:
    return _JSON_MENTION_RE.search(text) is not None


def _keywords(prompt: str, limit: int = 3) -> list[str]:
    seen: list[str] = []
    for word in _WORD_RE.findall(prompt):
        lowered = word.lower()
        if lowered in _STOPWORDS or lowered in seen:
            continue
        seen.append(lowered)
        if len(seen) >= limit:
            break
    fallbacks = ["the request", "the context", "the constraints"]
    while len(seen) < limit:
        seen.append(fallbacks[len(seen)])
    return seen


def _format_number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True)
class _Generic:
    text: str
    final: str | None  # the value of the "Answer:" line, if any
    correct: bool | None


class AnswerEngine:
    """Produces deterministic answers for ``(model, prompt)`` pairs."""

    def __init__(
        self,
        gsm8k: Mapping[str, Gsm8kRow] | None = None,
        workload: Mapping[str, WorkloadItem] | None = None,
    ) -> None:
        self.gsm8k: Mapping[str, Gsm8kRow] = gsm8k or {}
        self.workload: Mapping[str, WorkloadItem] = (
            workload_index() if workload is None else workload
        )
        n = len(self.gsm8k)
        if n:
            self.weak_rate = sum(r.weak_correct for r in self.gsm8k.values()) / n
            self.strong_rate = sum(r.strong_correct for r in self.gsm8k.values()) / n
        else:
            self.weak_rate, self.strong_rate = 0.65, 0.85

    # -- GSM8K -------------------------------------------------------------------------------

    def strong_pick_probability(self, model: FleetModel) -> float:
        """Probability that a role-less model replays the strong (GPT-4) recorded answer.

        Chosen so that the model's expected GSM8K accuracy equals its ``quality``, clamped to
        the ``[weak accuracy, strong accuracy]`` range observed in the loaded data.
        """
        if model.role == "weak":
            return 0.0
        if model.role == "strong":
            return 1.0
        span = self.strong_rate - self.weak_rate
        if span <= 1e-9:
            return 1.0 if model.quality >= 0.5 else 0.0
        return min(1.0, max(0.0, (model.quality - self.weak_rate) / span))

    def gsm8k_row(self, prompt: str) -> Gsm8kRow | None:
        if not self.gsm8k:
            return None
        return self.gsm8k.get(normalise_prompt(prompt))

    # -- public entry point -----------------------------------------------------------------

    def answer(
        self,
        model: FleetModel,
        prompt: str,
        *,
        json_mode: bool = False,
        json_schema: Mapping[str, object] | None = None,
    ) -> Answer:
        """Answer ``prompt`` (the last user message) as ``model`` would."""
        routed = self._route_pick(model, prompt)
        if routed is not None:
            return routed
        key = normalise_prompt(prompt)
        row = self.gsm8k.get(key) if self.gsm8k else None
        if row is not None and not json_mode:
            use_strong = stable_unit("gsm8k-pick", model.slug, key) < (
                self.strong_pick_probability(model)
            )
            if use_strong:
                return Answer(row.strong_response, "gsm8k-strong", row.strong_correct)
            return Answer(row.weak_response, "gsm8k-weak", row.weak_correct)
        item = self.workload.get(key)
        if item is not None:
            return self.workload_answer(model, item)
        judged = self._workload_judge(model, key)
        if judged is not None:
            return judged

        rng = random.Random(stable_int("generic", model.slug, key))
        correct = stable_unit("correct", model.slug, key) < model.quality
        if json_mode:
            return self._json_answer(model, key, rng, json_schema)
        generic = self._generic(model, key, rng, correct)
        return Answer(generic.text, "generic", generic.correct)

    # -- the generated workload -------------------------------------------------------------

    def workload_item(self, prompt: str) -> WorkloadItem | None:
        return self.workload.get(normalise_prompt(prompt))

    @staticmethod
    def skill(model: FleetModel) -> ModelSkill:
        return skill_for(model.slug, model.quality)

    def workload_answer(self, model: FleetModel, item: WorkloadItem) -> Answer:
        """The item's correct, wrong or invalid answer, as the model's profile decides."""
        outcome = verdict(model.slug, self.skill(model), item.task_class, item.difficulty, item.id)
        pool = {"correct": item.answers, "wrong": item.wrong, "invalid": item.invalid}[outcome]
        text = pool[stable_int("pick", model.slug, item.id) % len(pool)]
        source: AnswerSource = (
            "workload-correct"
            if outcome == "correct"
            else "workload-wrong"
            if outcome == "wrong"
            else "workload-invalid"
        )
        return Answer(text, source, outcome == "correct")

    def _route_pick(self, model: FleetModel, prompt: str) -> Answer | None:
        """A routing request: the candidate suited to a workload item's difficulty (1: the
        cheapest, 3: the dearest), picked with the model's ``quality`` as its accuracy;
        another request gets a stable arbitrary candidate."""
        match = _ROUTER_RE.match(prompt)
        if match is None:
            return None
        names = [
            line[2:].split(":", 1)[0].strip()
            for line in match.group("candidates").splitlines()
            if line.startswith("- ")
        ]
        request = normalise_prompt(match.group("request"))
        item = self.workload.get(request)
        pick = stable_int("route", model.slug, request) % len(names)
        right = stable_unit("route-right", model.slug, request) < model.quality
        if item is not None and right:
            pick = min(len(names) - 1, round((item.difficulty - 1) * (len(names) - 1) / 2))
        return Answer(names[pick], "router", None)

    def _workload_judge(self, model: FleetModel, prompt: str) -> Answer | None:
        """A judge prompt quoting a workload request: the truth is what the item knows."""
        match = _JUDGE_RE.match(prompt)
        request = _REQUEST_RE.search(prompt)
        if match is None or request is None:
            return None
        item = self.workload.get(normalise_prompt(request.group(1)))
        if item is None:
            return None
        answer = match.group("answer").strip()
        truth = item.is_correct(answer)
        right = stable_unit("judge", model.slug, item.id, answer) < self.skill(model).judge
        final = "Yes" if truth == right else "No"
        reason = "Checked the answer against what the request asks for."
        return Answer(f"{reason}\nAnswer: {final}", "workload-judge", right)

    # -- generic text -----------------------------------------------------------------------

    def _generic(
        self, model: FleetModel, prompt: str, rng: random.Random, correct: bool
    ) -> _Generic:
        judged = self._judge(prompt, rng, correct)
        if judged is not None:
            return judged
        arith = self._arithmetic(prompt, rng, correct)
        if arith is not None:
            return arith
        choice = self._multiple_choice(prompt, rng, correct)
        if choice is not None:
            return choice
        if _YES_NO_RE.match(prompt):
            reference = "Yes" if stable_unit("yes-no-ref", prompt) < 0.5 else "No"
            final = reference if correct else ("No" if reference == "Yes" else "Yes")
            k1, k2, _ = _keywords(prompt)
            reason = rng.choice(
                [
                    f"Looking at {k1} together with {k2}, the evidence points one way.",
                    f"The key consideration is how {k1} relates to {k2}.",
                    f"Weighing {k1} against {k2} settles it.",
                ]
            )
            return _Generic(f"{reason}\nAnswer: {final}", final, correct)
        return _Generic(self._prose(model, prompt, rng, correct), None, correct)

    @staticmethod
    def _judge(prompt: str, rng: random.Random, correct: bool) -> _Generic | None:
        """Grade an answer quoted in a judge prompt ("Is the answer … correct …?").

        The truth: with a numeric reference, whether the final numbers agree; otherwise
        whether the answer avoids the fleet's own evasive (wrong) phrasings or is valid JSON
        when it looks like JSON. A judge model is itself right with probability ``quality``.
        """
        match = _JUDGE_RE.match(prompt)
        if match is None:
            return None
        answer = match.group("answer").strip()
        reference = (match.group("reference") or "").strip()
        truth: bool
        ref_number, answer_number = _final_number(reference), _final_number(answer)
        if ref_number is not None:
            truth = answer_number is not None and abs(answer_number - ref_number) < 1e-6
        elif answer.startswith(("{", "[")):
            try:
                json.loads(answer)
                truth = True
            except json.JSONDecodeError:
                truth = False
        else:
            truth = bool(answer) and not any(p in answer for p in _EVASIVE_PHRASES)
        verdict = truth if correct else not truth
        reason = rng.choice(
            ["Checking the answer against the request.", "Comparing with the reference."]
        )
        final = "Yes" if verdict else "No"
        return _Generic(f"{reason}\nAnswer: {final}", final, correct)

    @staticmethod
    def _arithmetic(prompt: str, rng: random.Random, correct: bool) -> _Generic | None:
        match = _ARITH_RE.search(prompt)
        if match is None or _ARITH_CUE_RE.search(prompt) is None:
            return None
        a, op, b = float(match.group(1)), match.group(2), float(match.group(3))
        if op in ("/", "\u00f7"):
            if b == 0:
                return None
            value = a / b
        elif op in ("*", "\u00d7", "x"):
            value = a * b
        elif op == "+":
            value = a + b
        else:
            value = a - b
        shown = value if correct else value + rng.choice([1, -1, 2, -2, 10, -10])
        expr = f"{match.group(1)} {op} {match.group(3)}"
        lead = rng.choice(["Computing", "Working out", "Evaluating"])
        text = f"{lead} {expr} step by step gives {_format_number(shown)}.\nAnswer: " + (
            _format_number(shown)
        )
        return _Generic(text, _format_number(shown), correct)

    @staticmethod
    def _multiple_choice(prompt: str, rng: random.Random, correct: bool) -> _Generic | None:
        letters: list[str] = []
        for found in _MC_LINE_RE.findall(prompt) + _MC_INLINE_RE.findall(prompt):
            if found not in letters:
                letters.append(found)
        letters.sort()
        if len(letters) < 2:
            return None
        reference = letters[stable_int("mc-ref", prompt) % len(letters)]
        others = [letter for letter in letters if letter != reference]
        final = reference if correct else rng.choice(others)
        reason = rng.choice(
            [
                f"Option {final} is the one most consistent with the question.",
                f"Eliminating the alternatives leaves option {final}.",
                f"After comparing the options, {final} fits best.",
            ]
        )
        return _Generic(f"{reason}\nAnswer: {final}", final, correct)

    @staticmethod
    def _prose(model: FleetModel, prompt: str, rng: random.Random, correct: bool) -> str:
        k1, k2, k3 = _keywords(prompt)
        if correct:
            pool = [
                f"The core of this is {k1}, and it shapes how {k2} behaves in practice.",
                f"Start from {k1}: define it precisely before reasoning about {k2}.",
                f"{k2.capitalize()} should be weighed against {k3}; the trade-off matters most "
                "at scale.",
                f"A concrete check is to validate {k1} against {k3} on a small example.",
                f"In short, focus on {k1}, keep {k2} explicit, and revisit {k3} last.",
            ]
            count = 2 + round(model.quality * 2)
        else:
            pool = [
                f"That is a broad question about {k1}.",
                "It depends on many factors, and there is no single right answer.",
                f"Some people would say {k2} matters most, others would disagree.",
                f"You may want to consult additional sources about {k3}.",
            ]
            count = 2
        return " ".join(rng.sample(pool, k=min(count, len(pool))))

    # -- JSON mode --------------------------------------------------------------------------

    def _json_answer(
        self,
        model: FleetModel,
        prompt: str,
        rng: random.Random,
        json_schema: Mapping[str, object] | None,
    ) -> Answer:
        valid = stable_unit("json-valid", model.slug, prompt) < model.quality
        payload = self._json_payload(model, prompt, rng, json_schema)
        text = json.dumps(payload, ensure_ascii=False)
        if valid:
            return Answer(text, "json", True)
        return Answer(_malform(text, rng), "json", False)

    def _json_payload(
        self,
        model: FleetModel,
        prompt: str,
        rng: random.Random,
        json_schema: Mapping[str, object] | None,
    ) -> object:
        k1, k2, k3 = _keywords(prompt)
        if json_schema:
            filled = _fill_schema(json_schema, rng, [k1, k2, k3], depth=0)
            if isinstance(filled, (dict, list)):
                return filled
            return {"value": filled}
        if _KEY_CUE_RE.search(prompt):
            keys: list[str] = []
            for key in _QUOTED_KEY_RE.findall(prompt):
                if key not in keys:
                    keys.append(key)
            if keys:
                return {key: f"example {key}" for key in keys[:16]}
        correct = stable_unit("correct", model.slug, prompt) < model.quality
        row = self.gsm8k.get(prompt) if self.gsm8k else None
        if row is not None:
            answer: str | None = row.reference_answer if correct else f"{row.reference_answer}0"
        else:
            answer = self._generic(model, prompt, rng, correct).final
        return {
            "answer": answer if answer is not None else f"{k1} and {k2}",
            "summary": f"Focus on {k1}, keep {k2} explicit and revisit {k3}.",
            "confidence": round(min(0.99, max(0.05, model.quality + rng.uniform(-0.1, 0.1))), 2),
        }


def _fill_schema(
    schema: Mapping[str, object], rng: random.Random, hints: Sequence[str], *, depth: int
) -> object:
    """Produce a value roughly conforming to a JSON schema (enough for structured-output demos)."""
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return rng.choice(enum)
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options and isinstance(options[0], Mapping):
            return _fill_schema(options[0], rng, hints, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    properties = schema.get("properties")
    if kind is None:
        kind = "object" if isinstance(properties, Mapping) else "string"
    if depth > 6:
        return None
    if kind == "object":
        result: dict[str, object] = {}
        if isinstance(properties, Mapping):
            for name, sub in properties.items():
                sub_schema = sub if isinstance(sub, Mapping) else {}
                result[str(name)] = _fill_schema(sub_schema, rng, hints, depth=depth + 1)
        return result
    if kind == "array":
        items = schema.get("items")
        item_schema = items if isinstance(items, Mapping) else {"type": "string"}
        return [
            _fill_schema(item_schema, rng, hints, depth=depth + 1) for _ in range(rng.randint(1, 3))
        ]
    if kind == "integer":
        return rng.randint(0, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return rng.choice(list(hints)) if hints else "example"


def _malform(text: str, rng: random.Random) -> str:
    """Turn valid JSON text into something ``json.loads`` rejects (deterministically)."""
    variant = rng.randrange(4)
    if not text.startswith(("{", "[")):
        text = "{" + json.dumps("value") + ": " + text + "}"
    if variant == 0:  # truncated output
        return text[: max(1, len(text) - max(1, len(text) // 5))]
    if variant == 1:  # trailing comma
        return text[:-1] + ", " + text[-1]
    if variant == 2 and '"' in text:  # single-quoted keys and strings
        return text.replace('"', "'")
    if variant == 2:  # nothing to re-quote: fall back to a trailing comma
        return text[:-1] + ", " + text[-1]
    # prose preamble followed by a truncated object
    return "Sure! Here is the JSON you asked for:\n" + text[:-1]
