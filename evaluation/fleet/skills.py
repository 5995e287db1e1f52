"""Per-model skill profiles: how each fleet model does on the generated workload.

A profile gives, per task class, the share of items a model answers correctly at each
difficulty (1 easy · 2 medium · 3 hard), the share of its failures that are malformed rather
than merely wrong, how reliable it is as an LLM judge, and how often it stalls (a timeout)
or errors (HTTP 500/429, transient: a retry usually succeeds). Every draw is a stable hash of
``(model, item)``, so the same model answers the same item the same way in every process,
and sweeps over the same requests reproduce.

The profiles are set so that the demo's evidence tells a clear story (difficulty mix about
50 / 35 / 15 %; the demo classes' quality targets in brackets):

* multi-step-reasoning [0.85]: gpt-4o-mini ≈ 0.84 (fails), mistral-small-hosted ≈ 0.95
  (passes) — a tier-3 → tier-2 downgrade that holds;
* sql-generation [0.90, read-only-SQL regex]: the local 8B/7B models wrap a fifth of their
  queries in prose or code fences — a tier-2 → tier-1 downgrade that fails;
* long-report-synthesis [0.85] and customer-reply-draft [0.95], judged by gpt-4o: the
  tier-2 models miss key facts too often — no downgrade.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .stable import stable_unit

__all__ = ["SKILLS", "ModelSkill", "Verdict", "skill_for", "verdict"]

Verdict = Literal["correct", "wrong", "invalid"]
ByDifficulty = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class ModelSkill:
    accuracy: Mapping[str, ByDifficulty] = field(default_factory=dict)
    default: ByDifficulty = (0.8, 0.7, 0.6)  # classes without an entry
    invalid_share: float = 0.3  # of the failures: malformed / chatty instead of wrong
    judge: float = 0.9  # share of judge verdicts that are right
    error_rate: float = 0.0  # transient HTTP errors on workload requests (per attempt)
    timeout_rate: float = 0.0  # requests that stall past the client's timeout

    def accuracy_for(self, task_class: str, difficulty: int) -> float:
        by_difficulty = self.accuracy.get(task_class, self.default)
        return by_difficulty[min(max(difficulty, 1), 3) - 1]


# class → (llama-3.1-8b-local, qwen2.5-7b-local, mistral-small-hosted, gpt-4o-mini, gpt-4o,
#          claude-sonnet), each (easy, medium, hard)
_TABLE: dict[str, tuple[ByDifficulty, ...]] = {
    "multi-step-reasoning": (
        (0.85, 0.62, 0.38),
        (0.83, 0.60, 0.35),
        (0.98, 0.95, 0.86),
        (0.93, 0.80, 0.62),
        (0.99, 0.97, 0.93),
        (0.99, 0.98, 0.95),
    ),
    "sql-generation": (
        (0.70, 0.55, 0.40),
        (0.62, 0.50, 0.36),
        (0.93, 0.87, 0.78),
        (0.95, 0.90, 0.82),
        (0.98, 0.96, 0.92),
        (0.98, 0.96, 0.93),
    ),
    "long-report-synthesis": (
        (0.62, 0.45, 0.30),
        (0.60, 0.44, 0.28),
        (0.82, 0.70, 0.55),
        (0.80, 0.65, 0.50),
        (0.96, 0.92, 0.86),
        (0.97, 0.93, 0.88),
    ),
    "customer-reply-draft": (
        (0.85, 0.74, 0.60),
        (0.84, 0.72, 0.58),
        (0.94, 0.88, 0.78),
        (0.93, 0.86, 0.75),
        (0.99, 0.97, 0.93),
        (0.99, 0.97, 0.94),
    ),
    "ticket-triage": (
        (0.97, 0.90, 0.78),
        (0.96, 0.89, 0.75),
        (0.99, 0.95, 0.88),
        (0.99, 0.96, 0.90),
        (0.995, 0.98, 0.95),
        (0.995, 0.98, 0.95),
    ),
    "field-extraction": (
        (0.92, 0.82, 0.65),
        (0.94, 0.85, 0.70),
        (0.97, 0.93, 0.85),
        (0.98, 0.94, 0.87),
        (0.99, 0.97, 0.93),
        (0.99, 0.98, 0.94),
    ),
    "intent-detection": (
        (0.96, 0.90, 0.80),
        (0.95, 0.88, 0.78),
        (0.98, 0.95, 0.90),
        (0.98, 0.96, 0.91),
        (0.99, 0.98, 0.95),
        (0.99, 0.98, 0.95),
    ),
    "short-summary": (
        (0.95, 0.88, 0.78),
        (0.94, 0.86, 0.75),
        (0.97, 0.93, 0.86),
        (0.97, 0.93, 0.87),
        (0.99, 0.96, 0.92),
        (0.99, 0.97, 0.94),
    ),
    "policy-check": (
        (0.92, 0.84, 0.70),
        (0.93, 0.85, 0.72),
        (0.97, 0.92, 0.85),
        (0.97, 0.93, 0.86),
        (0.99, 0.97, 0.93),
        (0.99, 0.98, 0.95),
    ),
    "pii-redaction": (
        (0.97, 0.92, 0.85),
        (0.97, 0.93, 0.86),
        (0.98, 0.95, 0.90),
        (0.98, 0.96, 0.91),
        (0.99, 0.98, 0.96),
        (0.995, 0.99, 0.97),
    ),
}
_MODELS = (
    "llama-3.1-8b-local",
    "qwen2.5-7b-local",
    "mistral-small-hosted",
    "gpt-4o-mini",
    "gpt-4o",
    "claude-sonnet",
)
# slug → (invalid share, judge accuracy, error rate, timeout rate)
_TRAITS: dict[str, tuple[float, float, float, float]] = {
    "llama-3.1-8b-local": (0.5, 0.82, 0.01, 0.004),
    "qwen2.5-7b-local": (0.45, 0.85, 0.01, 0.004),
    "mistral-small-hosted": (0.3, 0.88, 0.02, 0.002),
    "gpt-4o-mini": (0.3, 0.90, 0.02, 0.002),
    "gpt-4o": (0.2, 0.96, 0.01, 0.001),
    "claude-sonnet": (0.2, 0.96, 0.01, 0.001),
}

SKILLS: dict[str, ModelSkill] = {
    slug: ModelSkill(
        accuracy={task_class: rows[position] for task_class, rows in _TABLE.items()},
        invalid_share=_TRAITS[slug][0],
        judge=_TRAITS[slug][1],
        error_rate=_TRAITS[slug][2],
        timeout_rate=_TRAITS[slug][3],
    )
    for position, slug in enumerate(_MODELS)
}


def skill_for(slug: str, quality: float) -> ModelSkill:
    """The model's profile; a model without one answers every class at its ``quality``."""
    skill = SKILLS.get(slug)
    if skill is not None:
        return skill
    return ModelSkill(default=(quality, quality, quality), judge=quality)


def verdict(
    slug: str, skill: ModelSkill, task_class: str, difficulty: int, item_id: str
) -> Verdict:
    """Correct, wrong or invalid: a stable draw per (model, item) against the profile."""
    if stable_unit("skill", slug, item_id) < skill.accuracy_for(task_class, difficulty):
        return "correct"
    if stable_unit("invalid", slug, item_id) < skill.invalid_share:
        return "invalid"
    return "wrong"
