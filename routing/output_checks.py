"""Output checks: is a model's output safe to use? Plain Python, no Django, never a cloud call.

Each rule runs locally on the output (and, for personal data, on the input the model saw):

* ``personal_data`` — personal data in the output that is not in the input: the policy gate's
  own detector (:func:`routing.pii.pii_scan`) on its normalised text, so look-alike letters,
  full-width digits and invisible characters do not hide an e-mail address or an IBAN;
* ``schema`` — JSON Schema conformance (Draft 2020-12), when the task class declares one;
* ``forbidden_term`` — case-insensitive whole-word terms, matched on normalised text;
* ``regex:<name>`` — a policy pattern the output must not (or must) match;
* ``length`` — minimum and maximum length in characters.

Findings name the rule and the kind of problem, never the personal data itself. The policy
per task class is built once by :func:`policy_build` (what
``evaluation.models.OutputCheckPolicy`` holds), and what a failure answers (escalate, hand
off) is decided by the caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from routing.pii import UnscannableText, pii_normalize, pii_scan

MAX_RULE_NAME = 48


class PolicyError(ValueError):
    """An invalid policy; ``field`` names the setting."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True, slots=True)
class RegexRule:
    name: str
    pattern: re.Pattern[str]
    must_match: bool = False


@dataclass(frozen=True, slots=True)
class CheckPolicy:
    check_personal_data: bool = True
    forbidden_terms: tuple[tuple[str, re.Pattern[str]], ...] = ()
    regex_rules: tuple[RegexRule, ...] = ()
    max_chars: int | None = None
    min_chars: int | None = None
    output_schema: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    kind: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "kind": self.kind, "message": self.message}


@dataclass(frozen=True, slots=True)
class CheckResult:
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return not self.findings

    @property
    def rules(self) -> list[str]:
        """The distinct rules that failed, in the order first seen."""
        return list(dict.fromkeys(f.rule for f in self.findings))


def _fold(text: str) -> str:
    """Normalised (NFKC, look-alikes mapped, invisible characters removed), case-folded,
    whitespace runs collapsed: the form terms are compared in."""
    return " ".join(pii_normalize(text).casefold().split())


def policy_build(
    *,
    check_personal_data: bool = True,
    forbidden_terms: Iterable[str] = (),
    regex_rules: Sequence[Mapping[str, Any]] = (),
    max_chars: int | None = None,
    min_chars: int | None = None,
    output_schema: Mapping[str, Any] | None = None,
) -> CheckPolicy:
    """A checked policy, or :class:`PolicyError` naming the bad setting."""
    terms: list[tuple[str, re.Pattern[str]]] = []
    for term in forbidden_terms:
        folded = _fold(term)
        if not folded:
            raise PolicyError("forbidden_terms", "A forbidden term is empty.")
        pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in folded.split()) + r"(?!\w)"
        terms.append((term, re.compile(pattern)))
    rules: list[RegexRule] = []
    if not isinstance(regex_rules, list | tuple):
        raise PolicyError("regex_rules", "Regex rules are a list of objects.")
    for index, raw in enumerate(regex_rules):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("pattern"), str):
            raise PolicyError("regex_rules", f"Rule {index} needs a 'pattern' string.")
        name = str(raw.get("name") or f"rule-{index}")
        if len(name) > MAX_RULE_NAME or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise PolicyError("regex_rules", f"Rule {index}: name {name!r} must be a short slug.")
        try:
            compiled = re.compile(raw["pattern"], re.IGNORECASE)
        except re.error as exc:
            raise PolicyError("regex_rules", f"Rule {name}: {exc}") from exc
        rules.append(RegexRule(name, compiled, bool(raw.get("must_match", False))))
    if max_chars is not None and min_chars is not None and min_chars > max_chars:
        raise PolicyError("min_chars", "The minimum length is above the maximum.")
    if output_schema is not None:
        try:
            jsonschema.Draft202012Validator.check_schema(output_schema)
        except jsonschema.SchemaError as exc:
            raise PolicyError("output_schema", f"Not a valid JSON Schema: {exc.message}") from exc
    return CheckPolicy(
        check_personal_data=check_personal_data,
        forbidden_terms=tuple(terms),
        regex_rules=tuple(rules),
        max_chars=max_chars,
        min_chars=min_chars,
        output_schema=output_schema,
    )


def _canonical(value: str) -> str:
    """A personal-data value with its formatting removed (spaces, dots, dashes, case)."""
    return "".join(ch for ch in value.casefold() if ch.isalnum())


def _personal_values(text: str) -> dict[str, set[str]]:
    """Kind → canonical values found in ``text`` (normalised by the detector)."""
    normalised = pii_normalize(text)
    found: dict[str, set[str]] = {}
    for match in pii_scan(text):
        found.setdefault(match.kind, set()).add(_canonical(normalised[match.start : match.end]))
    return found


def personal_data_leaks(output: str, input_text: str | None) -> list[Finding]:
    """Personal data in ``output`` that the input did not hold. Without the input (not kept)
    every personal value in the output counts: the check fails closed."""
    try:
        out = _personal_values(output)
    except UnscannableText:
        return [Finding("personal_data", "unscannable", "The output could not be scanned.")]
    if not out:
        return []
    seen: dict[str, set[str]] = {}
    if input_text:
        try:
            seen = _personal_values(input_text)
        except UnscannableText:
            seen = {}
    known = set().union(*seen.values()) if seen else set()
    findings = []
    for kind in sorted(out):
        new = out[kind] - known
        if new:
            where = "not in the input" if input_text else "and the input is not available"
            findings.append(
                Finding(
                    "personal_data",
                    kind,
                    f"{len(new)} {kind} value{'s' if len(new) > 1 else ''} in the output, {where}.",
                )
            )
    return findings


def schema_findings(output: str, schema: Mapping[str, Any]) -> list[Finding]:
    try:
        data = json.loads(output)
    except ValueError:
        return [Finding("schema", "not_json", "The output is not JSON.")]
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
    return [
        Finding(
            "schema",
            "invalid",
            f"{'/'.join(str(p) for p in e.path) or '(root)'}: {e.message}"[:300],
        )
        for e in errors[:5]
    ]


def output_check(output: str, policy: CheckPolicy, *, input_text: str | None) -> CheckResult:
    """Every rule of ``policy`` on ``output``; the result lists each finding."""
    findings: list[Finding] = []
    length = len(output)
    if policy.max_chars is not None and length > policy.max_chars:
        findings.append(Finding("length", "too_long", f"{length} characters > {policy.max_chars}."))
    if policy.min_chars is not None and length < policy.min_chars:
        findings.append(
            Finding("length", "too_short", f"{length} characters < {policy.min_chars}.")
        )
    if policy.check_personal_data:
        findings.extend(personal_data_leaks(output, input_text))
    if policy.output_schema is not None:
        findings.extend(schema_findings(output, policy.output_schema))
    if policy.forbidden_terms or policy.regex_rules:
        folded = _fold(output)
        for term, pattern in policy.forbidden_terms:
            if pattern.search(folded):
                findings.append(Finding("forbidden_term", "term", f"Forbidden term {term!r}."))
        for rule in policy.regex_rules:
            hit = rule.pattern.search(folded) is not None
            if hit != rule.must_match:
                message = "does not match" if rule.must_match else "matches"
                findings.append(
                    Finding(f"regex:{rule.name}", "pattern", f"The output {message} {rule.name}.")
                )
    return CheckResult(tuple(findings))
