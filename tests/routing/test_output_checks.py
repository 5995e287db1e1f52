"""The plain-Python output checks: personal data leaks (disguised too), schema, terms, rules."""

from __future__ import annotations

import pytest

from routing.output_checks import PolicyError, output_check, policy_build

INPUT = "Customer Jane Roe (jane.roe@example.org) asks about order 1142."
DEFAULT = policy_build()


@pytest.mark.parametrize(
    "output",
    [
        "Forward it to billing@acme-corp.com please.",
        "Forward it to ｂｉｌｌｉｎｇ＠ａｃｍｅ－ｃｏｒｐ．ｃｏｍ please.",  # full-width
        "Forward it to billing@acme\u200b-corp.com please.",  # zero-width space inside
        "Forward it to billing [at] acme-corp [dot] com please.",  # spelled out
        "Forward it to billing\u00a0@\u00a0acme-corp.com please.",  # no-break spaces
    ],
    ids=["plain", "full-width", "zero-width", "spelled", "nbsp"],
)
def test_an_email_in_the_output_that_was_not_in_the_input(output: str) -> None:
    result = output_check(output, DEFAULT, input_text=INPUT)
    assert not result.passed
    assert [(f.rule, f.kind) for f in result.findings] == [("personal_data", "email")]
    assert "acme" not in result.findings[0].message  # never the value itself


@pytest.mark.parametrize(
    "output",
    [
        "Refund to DE89 3704 0044 0532 0130 00.",
        "Refund to DE89370400440532013000.",
        "Refund to DE89\u200b3704\u200b0044\u200b0532\u200b0130\u200b00.",
        "Refund to ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００.",
        "Refund to de89 3704 0044 0532 0130 00.",
        "Refund to DE89-3704-0044-0532-0130-00.",
        "Refund to gb82-west-1234-5698-7654-32.",
    ],
    ids=["grouped", "compact", "zero-width", "full-width", "lower-case", "dashes", "lower-dashes"],
)
def test_an_iban_in_the_output(output: str) -> None:
    result = output_check(output, DEFAULT, input_text=INPUT)
    assert ("personal_data", "iban") in [(f.rule, f.kind) for f in result.findings]


def test_personal_data_already_in_the_input_is_no_leak() -> None:
    # The same address, formatted differently, is the customer's own: no finding.
    output = "We will answer JANE.ROE@EXAMPLE.ORG today."
    assert output_check(output, DEFAULT, input_text=INPUT).passed
    iban_in = "Customer IBAN DE89 3704 0044 0532 0130 00"
    assert output_check("Refund to DE89370400440532013000.", DEFAULT, input_text=iban_in).passed
    # Without the input (not kept), every personal value counts: fail closed.
    closed = output_check(output, DEFAULT, input_text=None)
    assert not closed.passed and "not available" in closed.findings[0].message
    assert output_check("No personal data here.", DEFAULT, input_text=None).passed


SCHEMA = {
    "type": "object",
    "required": ["decision", "amount"],
    "properties": {"decision": {"enum": ["refund", "deny"]}, "amount": {"type": "number"}},
    "additionalProperties": False,
}


def test_json_schema_conformance() -> None:
    policy = policy_build(output_schema=SCHEMA)
    assert output_check('{"decision": "refund", "amount": 20}', policy, input_text="").passed
    bad = output_check('{"decision": "maybe"}', policy, input_text="")
    assert {f.rule for f in bad.findings} == {"schema"} and len(bad.findings) == 2
    assert any("amount" in f.message for f in bad.findings)
    assert any("decision" in f.message for f in bad.findings)
    not_json = output_check("Sure! Here is the JSON: {", policy, input_text="")
    assert [f.kind for f in not_json.findings] == ["not_json"]
    with pytest.raises(PolicyError) as caught:
        policy_build(output_schema={"type": "no-such-type"})
    assert caught.value.field == "output_schema"


@pytest.mark.parametrize(
    "output",
    [
        "Your refund is guaranteed.",
        "Your refund is GUARANTEED.",
        "Your refund is guar\u200banteed.",  # zero-width inside
        "Your refund is ｇｕａｒａｎｔｅｅｄ.",  # full-width
        "Your refund is guaranteed\u00ad.",
    ],
)
def test_forbidden_terms_match_disguised_forms(output: str) -> None:
    policy = policy_build(forbidden_terms=["guaranteed", "legal advice"])
    result = output_check(output, policy, input_text="")
    assert [f.rule for f in result.findings] == ["forbidden_term"]
    assert "'guaranteed'" in result.findings[0].message


def test_forbidden_terms_are_whole_words_and_phrases() -> None:
    policy = policy_build(forbidden_terms=["guaranteed", "legal advice"])
    assert output_check("This is unguaranteedly fine.", policy, input_text="").passed
    assert not output_check("Not  legal\nadvice, sorry.", policy, input_text="").passed


def test_regex_rules_and_length_caps() -> None:
    policy = policy_build(
        regex_rules=[
            {"name": "no-refund-promise", "pattern": r"we (will|shall) refund"},
            # Rules see normalised text: the em dash is a plain hyphen there.
            {"name": "signed", "pattern": r"^.*- the support team$", "must_match": True},
        ],
        max_chars=80,
        min_chars=10,
    )
    ok = "Thanks for writing. — the support team"
    assert output_check(ok, policy, input_text="").passed
    promise = output_check("We will refund you. — the support team", policy, input_text="")
    assert promise.rules == ["regex:no-refund-promise"]
    unsigned = output_check("Thanks for writing.", policy, input_text="")
    assert unsigned.rules == ["regex:signed"]
    long = output_check("x" * 81 + " — the support team", policy, input_text="")
    assert [f.kind for f in long.findings] == ["too_long"]
    assert [f.kind for f in output_check("short", policy, input_text="").findings] == [
        "too_short",
        "pattern",
    ]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"regex_rules": [{"name": "x", "pattern": "("}]}, "regex_rules"),
        ({"regex_rules": [{"name": "Bad Name", "pattern": "a"}]}, "regex_rules"),
        ({"regex_rules": [{"pattern": 3}]}, "regex_rules"),
        ({"regex_rules": "nope"}, "regex_rules"),
        ({"forbidden_terms": ["\u200b"]}, "forbidden_terms"),
        ({"min_chars": 10, "max_chars": 5}, "min_chars"),
    ],
)
def test_invalid_policies_name_the_setting(settings: dict[str, object], field: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_build(**settings)  # type: ignore[arg-type]
    assert caught.value.field == field
